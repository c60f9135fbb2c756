"""HTTP shell of the GEPA service (stdlib `ThreadingHTTPServer`; every route: parse -> `JobManager` -> JSON).

Routes (JSON bodies; `Authorization: Bearer <token>` required on all but /health when a token is set):

    GET  /health                      {"status": "ok", "jobs": n}
    POST /v1/jobs                     body: GEPAJobSpec.to_dict() -> 201 {"job_id", "created": true}
                                      (200 with created=false for a known idempotency_key)
    GET  /v1/jobs                     [JobStatus, ...]
    GET  /v1/jobs/{id}                JobStatus (state queued|running|paused|done|failed|cancelled, ...)
    GET  /v1/jobs/{id}/result         GEPAResult (409 while the job is not done)
    POST /v1/jobs/{id}/cancel         JobStatus

Errors are `{"error": {"message", "field"?}}` with 400 (bad spec: the field is named), 401 (token),
404 (unknown job or route), 409 (idempotency conflict / result not ready), 413 (body over `max_body_bytes`).

    svc = GEPAService(JobManager(run_dir).start(), token=os.environ.get("P2O_GEPA_TOKEN")).start(port=0)
    svc.url  # http://127.0.0.1:<port>
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from p2o.gepa.jobs import IdempotencyConflict, JobManager, JobNotFinished, JobNotFound
from p2o.gepa.protocol import GEPAJobSpec, SpecError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024 * 1024


class HTTPError(Exception):
    def __init__(self, status: int, message: str, field: str = ""):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message}
        if self.field:
            err["field"] = self.field
        return {"error": err}


def route(jobs: JobManager, method: str, path: str, body: bytes | None) -> tuple[int, Any]:
    """(status, JSON payload) for one request; raises `HTTPError`."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    try:
        if method == "GET" and parts == ["health"]:
            return 200, {"status": "ok", "jobs": len(jobs.list())}
        if parts[:2] != ["v1", "jobs"]:
            raise HTTPError(404, f"no route {method} {path}")
        rest = parts[2:]
        if method == "POST" and not rest:
            try:
                data = json.loads(body or b"")
            except json.JSONDecodeError as e:
                raise HTTPError(400, f"body is not valid JSON ({e})") from e
            job_id, created = jobs.submit(GEPAJobSpec.from_dict(data))
            return (201 if created else 200), {"job_id": job_id, "created": created}
        if method == "GET" and not rest:
            return 200, jobs.list()
        if method == "GET" and len(rest) == 1:
            return 200, jobs.status(rest[0])
        if method == "GET" and len(rest) == 2 and rest[1] == "result":
            return 200, jobs.result(rest[0]).to_dict()
        if method == "POST" and len(rest) == 2 and rest[1] == "cancel":
            return 200, jobs.cancel(rest[0])
        raise HTTPError(404, f"no route {method} {path}")
    except SpecError as e:
        raise HTTPError(400, str(e), e.field) from e
    except JobNotFound as e:
        raise HTTPError(404, f"unknown job {e.args[0]}") from e
    except (IdempotencyConflict, JobNotFinished) as e:
        raise HTTPError(409, str(e)) from e


def make_handler(jobs: JobManager, token: str | None) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise HTTPError(413, f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
                body = self.rfile.read(length) if length else None
                if token and self.path.split("?")[0].rstrip("/") != "/health":
                    given = self.headers.get("Authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                        raise HTTPError(401, "missing or wrong bearer token")
                status, payload = route(jobs, method, self.path, body)
                self._send(status, payload)
            except HTTPError as e:
                self._send(e.status, e.body())
            except Exception as e:  # noqa: BLE001 - a handler bug must not kill the server thread silently
                log.exception("GEPA service error on %s %s", method, self.path)
                self._send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

    return Handler


class GEPAService:
    def __init__(self, jobs: JobManager, token: str | None = None, host: str = "127.0.0.1"):
        self.jobs, self.token, self.host = jobs, token or None, host
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("GEPAService.port before start()")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def bind(self, port: int = 0) -> GEPAService:
        self._server = ThreadingHTTPServer((self.host, port), make_handler(self.jobs, self.token))
        self._server.daemon_threads = True
        return self

    def start(self, port: int = 0) -> GEPAService:
        """Serve from a daemon thread (port 0: a free port)."""
        self.bind(port)
        assert self._server is not None
        self._thread = threading.Thread(target=self._server.serve_forever, name="p2o-gepa-http", daemon=True)
        self._thread.start()
        log.info("GEPA service on %s", self.url)
        return self

    def serve_forever(self) -> None:
        assert self._server is not None, "bind() first"
        self._server.serve_forever()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.jobs.close()
