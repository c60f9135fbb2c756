"""`p2o gepa-serve`: run the GEPA service on a (CPU) node until SIGINT/SIGTERM.

    p2o gepa-serve --run-dir runs/gepa --port 0 --endpoint-file runs/gepa/endpoint

Unfinished jobs found in the run directory are resumed at start. The bound `host:port` is written
atomically to `--endpoint-file` (for Slurm discovery). The shared token is read from the environment
variable named by `--token-env` (default: `gepa.token_env`, P2O_GEPA_TOKEN); when it is set every request
but /health must carry `Authorization: Bearer <token>`.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from p2o.config import GEPAConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="directory holding the jobs' state (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: a free port)")
    parser.add_argument("--endpoint-file", default="", help="write the bound host:port here")
    parser.add_argument("--token-env", default=GEPAConfig.token_env, help="environment variable with the token")
    parser.add_argument("--workers", type=int, default=1, help="jobs run at the same time")


def main(args: argparse.Namespace) -> int:
    from p2o.gepa.jobs import JobManager
    from p2o.gepa.service import GEPAService

    if args.workers < 1:
        raise SystemExit(f"--workers: got {args.workers}; expected >= 1")
    token = os.environ.get(args.token_env) or None
    for noisy in ("httpx", "httpx2"):  # one INFO line per scoring request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    jobs = JobManager(Path(args.run_dir), workers=args.workers)
    service = GEPAService(jobs, token=token, host=args.host).bind(args.port)
    if args.endpoint_file:
        path = Path(args.endpoint_file)
        tmp = path.with_name(path.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{args.host}:{service.port}\n")
        os.replace(tmp, path)
    jobs.start()
    log.info("GEPA service on %s (run dir %s, token %s)", service.url, args.run_dir, "set" if token else "not set")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0
