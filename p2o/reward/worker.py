"""The verifier worker process: `python -m p2o.reward.worker REL_TOL MEMORY_MB`.

Protocol (JSON lines, UTF-8): after start-up the worker writes `"ready"`. Then it reads one line per
chunk, a JSON list of `[pred, gold]` pairs, and writes one line per pair, `[correct, reason]`, as soon as
that pair is decided. EOF on stdin ends it. The worker applies its own address-space limit (MEMORY_MB,
0 = none) before importing sympy. Model text is only ever data here: it is parsed by the restricted
parser, never evaluated.
"""
from __future__ import annotations

import json
import sys


def _limit_memory(memory_mb: int) -> None:
    if memory_mb <= 0:
        return
    try:
        import resource
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not available on this platform
        pass


def main(argv: list[str]) -> int:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; the worker ends on EOF or kill
    rel_tol = float(argv[0]) if argv else 1e-6
    _limit_memory(int(argv[1]) if len(argv) > 1 else 0)
    sys.setrecursionlimit(4000)
    from p2o.reward.grade import compare_answers
    from p2o.reward.verdict import INTERNAL_ERROR, TOO_COMPLEX

    out = sys.stdout
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        try:
            chunk = json.loads(line)
        except ValueError:
            return 2
        for pred, gold in chunk:
            try:
                res = compare_answers(pred, gold, rel_tol)
            except RecursionError:
                res = (False, TOO_COMPLEX)
            except BaseException:  # noqa: BLE001 - MemoryError and friends: report, keep serving
                res = (False, INTERNAL_ERROR)
            out.write(json.dumps(res) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
