"""Fault-injection helpers: raw sockets for protocol abuse, a recording OpenAI stand-in, process control.

Every test in tests/faults asserts one of two outcomes for a hostile input or an injected fault: the
process survives (and keeps serving), or it fails with a message naming the fault; and in both cases
nothing already written is lost.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


@dataclass
class RawReply:
    data: bytes
    elapsed_s: float
    closed: bool
    """The server closed the connection (EOF) rather than the read timing out."""

    @property
    def status(self) -> int | None:
        line = self.data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None

    def json(self) -> Any:
        return json.loads(self.data.split(b"\r\n\r\n", 1)[1])


def raw_request(host: str, port: int, data: bytes, wait_s: float = 10.0, keep_sending: bytes = b"",
                every_s: float = 0.5) -> RawReply:
    """Send `data` on a fresh connection, then (optionally) trickle `keep_sending` one byte every `every_s`,
    reading until the server answers and closes, or `wait_s` passes."""
    t0 = time.monotonic()
    s = socket.create_connection((host, port))
    s.sendall(data)
    s.settimeout(0.05)
    got, closed, trickle = b"", False, iter(keep_sending)
    next_byte = t0
    try:
        while time.monotonic() - t0 < wait_s:
            if keep_sending and time.monotonic() >= next_byte:
                b = next(trickle, None)
                if b is not None:
                    try:
                        s.sendall(bytes([b]))
                    except OSError:
                        closed = True
                        break
                next_byte += every_s
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
    finally:
        s.close()
    return RawReply(got, time.monotonic() - t0, closed)


def health_latency(url: str) -> float:
    t0 = time.monotonic()
    r = httpx.get(url + "/health", timeout=10)
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


class RecordingServer:
    """An OpenAI-compatible stand-in on 127.0.0.1 that records every request's path, headers and body."""

    def __init__(self, respond: Callable[[dict], tuple[int, Any]]):
        self.respond = respond
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> RecordingServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                with outer._lock:
                    outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status, payload = outer.respond(body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def authorizations(self) -> set[str]:
        with self._lock:
            return {h.get("authorization", "") for _, h, _ in self.requests}

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def wait_for(cond: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < end, f"{what} not reached within {timeout_s} s"
        time.sleep(0.02)


def start_gepa_process(run_dir, token: str, *extra: str):
    """`p2o gepa-serve` as a child process on 127.0.0.1:0; returns (process, base URL)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    endpoint = Path(run_dir) / "endpoint"
    endpoint.unlink(missing_ok=True)
    env = dict(os.environ, P2O_GEPA_TOKEN=token)
    proc = subprocess.Popen([sys.executable, "-m", "p2o.cli", "gepa-serve", "--run-dir", str(run_dir), "--port", "0",
                             "--endpoint-file", str(endpoint), *extra], env=env,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        wait_for(lambda: endpoint.exists() or proc.poll() is not None, 120, "gepa-serve endpoint file")
    except AssertionError:
        proc.kill()
        raise
    assert proc.poll() is None, f"gepa-serve exited with {proc.returncode}"
    return proc, "http://" + endpoint.read_text().strip()
