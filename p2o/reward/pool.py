"""Worker processes that compare answers under a hard per-item timeout.

Each worker is a fresh interpreter (`python -m p2o.reward.worker`, see its docstring for the JSON-lines
protocol): it is never forked from the caller, which may hold torch, CUDA or threads, and it does not
re-import the caller's `__main__`. The parent sends a chunk of `(pred, gold)` pairs and waits at most
`timeout_s` for each result line. A worker that misses the deadline (or dies) is killed and replaced; the
pair gets a `timeout` (or `internal_error`) result and the rest of the chunk goes to the replacement.
A new worker's start-up (interpreter + sympy import) does not count against any pair's deadline.

Idle workers sit in a thread-safe queue, so `ComparePool.run` may be called from several threads at once;
a call uses up to `workers` workers at a time.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2o.reward.verdict import INTERNAL_ERROR, TIMEOUT

logger = logging.getLogger(__name__)

Result = tuple[bool, str]
START_TIMEOUT_S = 120.0  # a worker must be ready within this (interpreter start + sympy import)
_PKG_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerDied(RuntimeError):
    pass


class _Worker:
    """One worker process and a line reader over its stdout with a deadline."""

    def __init__(self, rel_tol: float, memory_mb: int):
        env = dict(os.environ)
        env["PYTHONPATH"] = _PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen([sys.executable, "-m", "p2o.reward.worker", repr(rel_tol), str(memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self._buf = b""
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            line = self.read_line(START_TIMEOUT_S)
            if line is None or json.loads(line) != "ready":
                raise WorkerDied("verifier worker failed to start")
            self.ready = True

    def send(self, pairs: list[tuple[str, str]]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(pairs).encode("utf-8") + b"\n")
        self.proc.stdin.flush()

    def read_line(self, timeout_s: float) -> bytes | None:
        """The next output line, or None when `timeout_s` passes first; raises WorkerDied on EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            data = os.read(fd, 1 << 16)
            if not data:
                raise WorkerDied("verifier worker exited")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    def stop(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class ComparePool:
    """`workers` processes comparing (pred, gold) pairs with a hard per-pair `timeout_s`."""

    def __init__(self, workers: int, timeout_s: float, rel_tol: float = 1e-6, memory_mb: int = 0,
                 chunk_size: int = 32):
        if workers < 1:
            raise ValueError(f"reward.workers: got {workers}; expected >= 1")
        if timeout_s <= 0:
            raise ValueError(f"reward.timeout_s: got {timeout_s}; expected > 0")
        self.workers, self.timeout_s, self.chunk_size = workers, float(timeout_s), chunk_size
        self._rel_tol, self._memory_mb = rel_tol, memory_mb
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._closed = False
        self._count_lock = threading.Lock()
        self.timeouts = 0
        self.restarts = 0
        for _ in range(workers):  # start all now; they import sympy in parallel with the caller
            self._idle.put(_Worker(rel_tol, memory_mb))

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        with self._count_lock:
            self.restarts += 1
        return _Worker(self._rel_tol, self._memory_mb)

    def _acquire(self) -> _Worker:
        while True:
            if self._closed:
                raise RuntimeError("the verifier is closed")
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                continue

    def _release(self, w: _Worker) -> None:
        if self._closed:
            w.stop()
        else:
            self._idle.put(w)

    def _run_chunk(self, pairs: list[tuple[str, str]]) -> list[Result]:
        out: list[Result] = []
        w = self._acquire()
        failed_starts = 0
        try:
            while len(out) < len(pairs):
                rest = pairs[len(out):]
                try:
                    w.wait_ready()
                    w.send(rest)
                except (WorkerDied, OSError, ValueError):
                    failed_starts += 1
                    logger.error("verifier worker unusable (attempt %d); replaced", failed_starts)
                    w = self._replace(w)
                    if failed_starts >= 3:  # a broken installation: answer, don't spin
                        out.extend([(False, INTERNAL_ERROR)] * len(rest))
                    continue
                failed_starts = 0
                for _ in rest:
                    broken = False
                    try:
                        line = w.read_line(self.timeout_s)
                        if line is None:  # missed the deadline
                            res: Result = (False, TIMEOUT)
                            broken = True
                            with self._count_lock:
                                self.timeouts += 1
                            logger.warning("verifier worker exceeded %.2fs; replaced", self.timeout_s)
                        else:
                            correct, reason = json.loads(line)
                            res = (bool(correct), str(reason))
                    except (WorkerDied, OSError, ValueError):  # died (e.g. killed by the OS) or garbled output
                        res, broken = (False, INTERNAL_ERROR), True
                        logger.error("verifier worker died; replaced")
                    out.append(res)
                    if broken:
                        w = self._replace(w)
                        break  # resend the remainder to the new worker
        finally:
            self._release(w)
        return out

    def run(self, pairs: list[tuple[str, str]]) -> list[Result]:
        """One (correct, reason) per (pred, gold) pair, in order."""
        if not pairs:
            return []
        if len(pairs) == 1:
            return self._run_chunk(pairs)
        size = max(1, min(self.chunk_size, -(-len(pairs) // (self.workers * 4))))
        chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(chunks)), thread_name_prefix="p2o-verify") as ex:
            results = list(ex.map(self._run_chunk, chunks))
        return [r for chunk in results for r in chunk]

    def close(self) -> None:
        """Stop all workers (idempotent). Workers busy in another thread stop when released."""
        self._closed = True
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                break
            w.stop()

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
