"""OpenAI-compatible HTTP gateway in front of any `RolloutEngine` (FastAPI + uvicorn).

Routes (thin: parse -> `OpenAIServing` -> JSON; the logic lives in `serving.py` and `scheduler.py`):

    POST /v1/completions        OpenAI completions (prompt: text, token ids, or a list of either)
    POST /v1/chat/completions   OpenAI chat completions; the chat template is applied here
    GET  /v1/models             the served model and its policy version
    GET  /health                {"status": "ok" | "paused", "policy_version": v}; 503 while shutting down
    GET  /metrics               Prometheus text: queue depth per class, requests, batches, tokens, version

Every completion response carries the policy version that produced it: body field `policy_version`
(also per choice) and header `X-Policy-Version`. Priority: body `priority` or header `X-Priority`.
Errors are OpenAI-style `{"error": {"message", "type", "param", "code"}}`: 400 malformed JSON, invalid
Unicode, too-deep nesting, invalid fields, limits, a client chat template; 401 bad token; 404 unknown
model (`code: model_not_found`); 408 body too slow; 413 body too large; 429 queue full; 503 shutting down
or too many connections; 504 timeout (including a `min_policy_version` never reached). When the
environment variable named by `token_env` is set, every route but /health needs `Authorization: Bearer
<token>`, checked before the body is read.

Hostile clients: the server stack (`p2o.server`: head/body time bounds, size bound, strict JSON) runs
before any route; template rendering and tokenisation run off the event loop (`serving.py`), so /health
answers while any single request is in flight. A client that disconnects cancels its request: dropped
from the queue, or stopped at the next decode step by engines that support it (`HFEngine`).

In-process use (tests, the training loop, the frozen reflection model):

    gw = Gateway(engine, tokenizer, model_name="policy").start()     # port 0: a free port
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none")
    gw.scheduler.pause(); ...train...; gw.scheduler.update_weights(stream, v); gw.scheduler.resume()
    gw.stop()
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from p2o.rollout.engine import RolloutEngine
from p2o.rollout.protocol import ChatCompletionRequest, CompletionRequest, GatewayError, parse
from p2o.rollout.scheduler import PRIORITIES, Scheduler
from p2o.rollout.serving import GatewayLimits, OpenAIServing, ServedResult
from p2o.server import Guard, HTTPServer, RequestRejected, json_body, wait_disconnect

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499
"""Status recorded for a request whose client went away (nothing is sent)."""


def build_app(serving: OpenAIServing, token: str | None = None) -> Any:
    """The ASGI application over `serving`: FastAPI routes inside `p2o.server.Guard` (bearer `token` when given)."""
    app = FastAPI(title="p2o gateway", docs_url=None, redoc_url=None, openapi_url=None)
    scheduler = serving.scheduler
    limits = serving.limits.http_limits()

    def error(e: GatewayError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    async def handle(request: Request, model: type, method: Callable[..., Awaitable[ServedResult]]) -> Response:
        try:
            body = await json_body(request, limits)
            req = parse(model, body)
        except RequestRejected as e:
            return error(GatewayError(e.status, e.message, param=e.field))
        except GatewayError as e:
            return error(e)
        work = asyncio.ensure_future(method(req, request.headers.get("x-priority")))
        gone = asyncio.ensure_future(wait_disconnect(request.receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not work.done():  # the client went away: cancel its generation, answer nobody
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            return Response(status_code=CLIENT_CLOSED)
        try:
            result = work.result()
        except GatewayError as e:
            return error(e)
        except Exception as e:  # never a bare 500 page
            log.exception("unhandled error on %s", request.url.path)
            return error(GatewayError(500, f"internal error: {type(e).__name__}: {e}", type="internal_error"))
        return JSONResponse(result.body, headers={"X-Policy-Version": str(result.policy_version)})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, CompletionRequest, serving.create_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, ChatCompletionRequest, serving.create_chat_completion)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(serving.models())

    @app.get("/health")
    async def health() -> JSONResponse:
        version = scheduler.policy_version
        if scheduler.closed:
            return JSONResponse({"status": "shutting_down", "policy_version": version}, status_code=503)
        return JSONResponse({"status": "paused" if scheduler.paused else "ok", "policy_version": version})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus_text(scheduler))

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(GatewayError(404, f"no route {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return error(GatewayError(405, f"method {request.method} not allowed on {request.url.path}"))

    return Guard(app, limits, token, lambda status, message, type: GatewayError(status, message, type).body())


def prometheus_text(scheduler: Scheduler) -> str:
    """The scheduler's counters in Prometheus text exposition format."""
    lines = ["# TYPE p2o_gateway_queue_depth gauge"]
    lines += [f'p2o_gateway_queue_depth{{priority="{k}"}} {v}' for k, v in scheduler.queue_depth().items()]
    lines.append("# TYPE p2o_gateway_requests_total counter")
    lines += [f'p2o_gateway_requests_total{{priority="{k}"}} {scheduler.counters[f"requests_{k}"]}'
              for k in PRIORITIES]
    for key in ("batches", "generated_tokens", "rejected_queue_full", "timeouts", "weight_updates", "cancelled"):
        lines += [f"# TYPE p2o_gateway_{key}_total counter", f"p2o_gateway_{key}_total {scheduler.counters[key]}"]
    lines += ["# TYPE p2o_gateway_policy_version gauge", f"p2o_gateway_policy_version {scheduler.policy_version}",
              "# TYPE p2o_gateway_paused gauge", f"p2o_gateway_paused {int(scheduler.paused)}"]
    return "\n".join(lines) + "\n"


class Gateway:
    """Scheduler + HTTP server for one engine; `start()` serves from a background thread, `.url` is its address."""

    def __init__(self, engine: RolloutEngine, tokenizer: Any, model_name: str = "p2o-policy",
                 host: str = "127.0.0.1", port: int = 0, max_batch_sequences: int = 64, max_queue: int = 1024,
                 limits: GatewayLimits | None = None, token_env: str = "P2O_GATEWAY_TOKEN"):
        self.engine = engine
        self.scheduler = Scheduler(engine, max_batch_sequences=max_batch_sequences, max_queue=max_queue)
        self.serving = OpenAIServing(self.scheduler, tokenizer, model_name, limits or GatewayLimits())
        self.app = build_app(self.serving, os.environ.get(token_env) or None)
        self.server = HTTPServer(self.app, host, port, self.serving.limits.http_limits(), name="p2o-gateway")

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def start(self, timeout_s: float = 30.0) -> Gateway:
        """Serve from a daemon thread; returns once the server accepts connections."""
        self.server.bind()
        self.scheduler.start()
        try:
            self.server.start(timeout_s)
        except RuntimeError:
            self.scheduler.close()
            raise
        log.info("gateway serving on %s", self.url)
        return self

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM, then shut down; `ready(url)` once bound."""
        self.server.bind()
        self.scheduler.start()
        log.info("gateway serving on %s", self.url)
        if ready is not None:
            ready(self.url)
        try:
            self.server.serve_forever()
        finally:
            self.scheduler.close()
            self.serving.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests (503), fail queued ones, finish the running batch, stop the server."""
        self.scheduler.close(timeout_s)
        self.server.stop(timeout_s)
        self.serving.close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
