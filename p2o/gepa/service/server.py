"""HTTP shell of the GEPA service: FastAPI on the project's guarded server stack (`p2o.server`); every route
parses, calls a `JobManager` operation (off the event loop) and returns JSON.

Routes (JSON bodies; `Authorization: Bearer <token>` on all but /health when a token is set, checked on the
headers before the body is read):

    GET  /health                      {"status": "ok", "jobs": n}
    POST /v1/jobs                     body: GEPAJobSpec.to_dict() -> 201 {"job_id", "created": true}
                                      (200 with created=false for a known idempotency_key)
    GET  /v1/jobs                     [JobStatus, ...]
    GET  /v1/jobs/{id}                JobStatus (state queued|running|paused|done|failed|cancelled, ...)
    GET  /v1/jobs/{id}/result         GEPAResult (409 while the job is not done)
    POST /v1/jobs/{id}/cancel         JobStatus
    POST /v1/jobs/{id}/retry          body (optional): {"restart": false} -> JobStatus (409 unless failed/cancelled)

Errors are `{"error": {"message", "field"?}}` with 400 (bad spec, bad JSON or Unicode, a limit of
`JobLimits`: the field is named), 401 (token), 404 (unknown job or route), 408 (body too slow), 409
(idempotency conflict / result not ready / retry not allowed), 413 (body over `max_body_bytes`), 503
(too many connections).

Security (docs/security.md): a token is required when binding to a non-loopback address (unless
`allow_no_token`); credentials for outgoing calls come from the service's `Endpoints`, never from a job.

    svc = GEPAService(JobManager(run_dir).start(), token=os.environ.get("P2O_GEPA_TOKEN")).start(port=0)
    svc.url  # http://127.0.0.1:<port>
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from p2o.gepa.service.jobs import IdempotencyConflict, JobManager, JobNotFinished, JobNotFound, JobStateError
from p2o.gepa.service.protocol import GEPAJobSpec, SpecError
from p2o.server import Guard, HTTPLimits, HTTPServer, RequestRejected, is_loopback, json_body

log = logging.getLogger(__name__)

HTTP_LIMITS = HTTPLimits(max_body_bytes=64 * 1024 * 1024, body_timeout_s=120.0)
"""Jobs carry whole hard sets: a larger body and more time to send it than the gateway's requests."""


def error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message}
    if field:
        err["field"] = field
    return {"error": err}


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type="application/json")


def build_app(jobs: JobManager, token: str | None, limits: HTTPLimits) -> Any:
    """The ASGI application: routes over `jobs`, inside `p2o.server.Guard`."""
    app = FastAPI(title="p2o gepa", docs_url=None, redoc_url=None, openapi_url=None)

    async def call(fn: Callable[[], tuple[int, Any]]) -> Response:
        """`fn() -> (status, payload)` in a worker thread, the payload encoded there too; errors mapped."""
        def run() -> tuple[int, bytes]:
            code, payload = fn()
            return code, json.dumps(payload).encode()

        try:
            code, data = await asyncio.to_thread(run)
        except RequestRejected as e:
            return _json(e.status, error_body(e.status, e.message, e.field))
        except SpecError as e:
            return _json(400, error_body(400, str(e), e.field))
        except JobNotFound as e:
            return _json(404, error_body(404, f"unknown job {e.args[0]}"))
        except (IdempotencyConflict, JobNotFinished, JobStateError) as e:
            return _json(409, error_body(409, str(e)))
        except Exception as e:  # noqa: BLE001 - never a bare 500 page, never a dead server
            log.exception("GEPA service error")
            return _json(500, error_body(500, f"internal error: {type(e).__name__}: {e}"))
        return Response(data, status_code=code, media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return _json(200, {"status": "ok", "jobs": len(jobs.list())})

    @app.post("/v1/jobs")
    async def submit(request: Request) -> Response:
        try:
            data = await json_body(request, limits)
        except RequestRejected as e:
            return _json(e.status, error_body(e.status, e.message, e.field))

        def create() -> tuple[int, Any]:
            job_id, created = jobs.submit(GEPAJobSpec.from_dict(data, jobs.limits))
            return (201 if created else 200), {"job_id": job_id, "created": created}

        return await call(create)

    @app.get("/v1/jobs")
    async def list_jobs() -> Response:
        return await call(lambda: (200, [st.to_dict() for st in jobs.list()]))

    @app.get("/v1/jobs/{job_id}")
    async def status(job_id: str) -> Response:
        return await call(lambda: (200, jobs.status(job_id).to_dict()))

    @app.get("/v1/jobs/{job_id}/result")
    async def result(job_id: str) -> Response:
        return await call(lambda: (200, jobs.result(job_id).to_dict()))

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> Response:
        return await call(lambda: (200, jobs.cancel(job_id).to_dict()))

    @app.post("/v1/jobs/{job_id}/retry")
    async def retry(job_id: str, request: Request) -> Response:
        try:
            data = await json_body(request, limits) if await request.body() else {}
        except RequestRejected as e:
            return _json(e.status, error_body(e.status, e.message, e.field))
        if not isinstance(data, dict) or set(data) - {"restart"} or not isinstance(data.get("restart", False), bool):
            return _json(400, error_body(400, 'expected an empty body or {"restart": true|false}', "restart"))
        return await call(lambda: (200, jobs.retry(job_id, bool(data.get("restart", False))).to_dict()))

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(404, error_body(404, f"no route {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _json(405, error_body(405, f"method {request.method} not allowed on {request.url.path}"))

    return Guard(app, limits, token, lambda status, message, _type: error_body(status, message))


class GEPAService:
    def __init__(self, jobs: JobManager, token: str | None = None, host: str = "127.0.0.1",
                 limits: HTTPLimits = HTTP_LIMITS, allow_no_token: bool = False):
        if not token and not is_loopback(host) and not allow_no_token:
            raise ValueError(f"refusing to serve the GEPA service on {host} without a token: set the token "
                             f"variable (gepa.token_env), bind to 127.0.0.1, or pass --allow-no-token")
        self.jobs, self.token, self.host = jobs, token or None, host
        self.app = build_app(jobs, self.token, limits)
        self.server = HTTPServer(self.app, host, 0, limits, name="p2o-gepa")

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def bind(self, port: int = 0) -> GEPAService:
        self.server.port = port
        self.server.bind()
        return self

    def start(self, port: int = 0) -> GEPAService:
        """Serve from a daemon thread (port 0: a free port)."""
        if self.server._socket is None:
            self.bind(port)
        self.server.start()
        log.info("GEPA service on %s", self.url)
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.stop()
        self.jobs.close()
