"""`p2o gepa-serve`: run the GEPA service on a (CPU) node until SIGINT/SIGTERM.

    p2o gepa-serve --run-dir runs/gepa --port 0 --endpoint-file runs/gepa/endpoint \
        --endpoint policy=http://node3:8001/v1 --endpoint-key-env policy=P2O_GATEWAY_TOKEN

Unfinished jobs found in the run directory are resumed at start. The bound `host:port` is written
atomically to `--endpoint-file` (for Slurm discovery). The shared token is read from the environment
variable named by `--token-env` (default: `gepa.token_env`, P2O_GEPA_TOKEN); when it is set every request
but /health must carry `Authorization: Bearer <token>`. Binding to a non-loopback address without a token
is refused unless `--allow-no-token` is given.

Outgoing credentials are the service's own (`p2o.gepa.adapters.endpoints`): `--endpoint NAME=URL` registers an
endpoint, `--endpoint-key-env NAME=VAR` the variable holding the key sent to it (checked at start). A job's
URL that is not a registered endpoint is called without credentials, or refused with `--endpoints-only`.
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
    parser.add_argument("--allow-no-token", action="store_true",
                        help="serve on a non-loopback address without a token (anyone who can reach it may submit)")
    parser.add_argument("--workers", type=int, default=1, help="jobs run at the same time")
    parser.add_argument("--endpoint", action="append", default=[], metavar="NAME=URL",
                        help="a named endpoint the service may send credentials to (repeatable)")
    parser.add_argument("--endpoint-key-env", action="append", default=[], metavar="NAME=VAR",
                        help="environment variable holding the key sent to endpoint NAME (repeatable)")
    parser.add_argument("--endpoints-only", action="store_true",
                        help="refuse jobs whose URLs are not registered endpoints")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest job body accepted (MiB)")


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from p2o.gepa.adapters.endpoints import Endpoints
    from p2o.gepa.service.jobs import JobManager
    from p2o.gepa.service.server import HTTP_LIMITS, GEPAService

    if args.workers < 1:
        raise SystemExit(f"--workers: got {args.workers}; expected >= 1")
    if not 0 < args.max_body_mb <= 4096:
        raise SystemExit(f"--max-body-mb: got {args.max_body_mb}; expected a number in (0, 4096]")
    try:
        endpoints = Endpoints.from_args(args.endpoint, args.endpoint_key_env, args.endpoints_only)
    except ValueError as e:
        raise SystemExit(f"p2o gepa-serve: {e}") from None
    token = os.environ.get(args.token_env) or None
    for noisy in ("httpx", "httpx2"):  # one INFO line per scoring request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    limits = dataclasses.replace(HTTP_LIMITS, max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    jobs = JobManager(Path(args.run_dir), workers=args.workers, endpoints=endpoints)
    try:
        service = GEPAService(jobs, token=token, host=args.host, limits=limits,
                              allow_no_token=args.allow_no_token).bind(args.port)
    except ValueError as e:
        raise SystemExit(f"p2o gepa-serve: {e} (--token-env {args.token_env})") from None
    if args.endpoint_file:
        path = Path(args.endpoint_file)
        from p2o.atomic import atomic_write_text

        atomic_write_text(path, f"{args.host}:{service.port}\n")
    jobs.start()
    log.info("GEPA service on %s (run dir %s, token %s, endpoints: %s%s)", service.url, args.run_dir,
             "set" if token else "not set", endpoints.describe(), ", only these" if endpoints.only else "")

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
