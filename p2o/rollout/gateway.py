"""OpenAI-compatible HTTP gateway in front of any `RolloutEngine` (FastAPI + uvicorn).

Routes (thin: parse -> `OpenAIServing` -> JSON; the logic lives in `serving.py` and `scheduler.py`):

    POST /v1/completions        OpenAI completions (prompt: text, token ids, or a list of either)
    POST /v1/chat/completions   OpenAI chat completions; the chat template is applied here
    GET  /v1/models             the served model and its policy version
    GET  /health                {"status": "ok" | "paused", "policy_version": v}; 503 while shutting down
    GET  /metrics               Prometheus text: queue depth per class, requests, batches, tokens, version

Every completion response carries the policy version that produced it: body field `policy_version`
(also per choice) and header `X-Policy-Version`. Priority: body `priority` or header `X-Priority`.
Errors are OpenAI-style `{"error": {"message", "type", "param", "code"}}`: 400 malformed JSON / invalid
fields / limits, 401 bad token, 413 body too large, 429 queue full, 503 shutting down, 504 timeout
(including a `min_policy_version` never reached). When the environment variable named by `token_env`
is set, every route but /health needs `Authorization: Bearer <token>`.

In-process use (tests, the training loop, the frozen reflection model):

    gw = Gateway(engine, tokenizer, model_name="policy").start()     # port 0: a free port
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none")
    gw.scheduler.pause(); ...train...; gw.scheduler.update_weights(stream, v); gw.scheduler.resume()
    gw.stop()
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from p2o.rollout.engine import RolloutEngine
from p2o.rollout.protocol import ChatCompletionRequest, CompletionRequest, GatewayError, parse
from p2o.rollout.scheduler import PRIORITIES, Scheduler
from p2o.rollout.serving import GatewayLimits, OpenAIServing, ServedResult

log = logging.getLogger(__name__)


def build_app(serving: OpenAIServing, token: str | None = None) -> Any:
    """The FastAPI application over `serving` (bearer `token` required when given)."""
    app = FastAPI(title="p2o gateway", docs_url=None, redoc_url=None, openapi_url=None)
    scheduler = serving.scheduler

    def error(e: GatewayError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        if token is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(GatewayError(401, "missing or wrong bearer token", type="authentication_error"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > serving.limits.max_body_bytes:
            return error(GatewayError(413, f"request body of {length} bytes exceeds the limit of "
                                           f"{serving.limits.max_body_bytes}"))
        try:
            return await call_next(request)
        except Exception as e:  # never a bare 500 page
            log.exception("unhandled error on %s", request.url.path)
            return error(GatewayError(500, f"internal error: {type(e).__name__}: {e}", type="internal_error"))

    async def handle(request: Request, model: type, method: Callable[..., Awaitable[ServedResult]]) -> JSONResponse:
        try:
            raw = await request.body()
            if len(raw) > serving.limits.max_body_bytes:
                raise GatewayError(413, f"request body exceeds the limit of {serving.limits.max_body_bytes} bytes")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise GatewayError(400, f"request body is not valid JSON: {e}") from e
            result = await method(parse(model, body), request.headers.get("x-priority"))
        except GatewayError as e:
            return error(e)
        return JSONResponse(result.body, headers={"X-Policy-Version": str(result.policy_version)})

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        return await handle(request, CompletionRequest, serving.create_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
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

    return app


def prometheus_text(scheduler: Scheduler) -> str:
    """The scheduler's counters in Prometheus text exposition format."""
    lines = ["# TYPE p2o_gateway_queue_depth gauge"]
    lines += [f'p2o_gateway_queue_depth{{priority="{k}"}} {v}' for k, v in scheduler.queue_depth().items()]
    lines.append("# TYPE p2o_gateway_requests_total counter")
    lines += [f'p2o_gateway_requests_total{{priority="{k}"}} {scheduler.counters[f"requests_{k}"]}'
              for k in PRIORITIES]
    for key in ("batches", "generated_tokens", "rejected_queue_full", "timeouts", "weight_updates"):
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
        self.host, self.port = host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("Gateway.url before start()")
        return f"http://{self.host}:{self.port}"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self._socket = sock
        return sock

    def _server_for(self) -> Any:
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_keep_alive=30, backlog=2048)
        return uvicorn.Server(config)

    def start(self, timeout_s: float = 30.0) -> Gateway:
        """Serve from a daemon thread; returns once the server accepts connections."""
        sock = self._bind()
        self.scheduler.start()
        self._server = self._server_for()
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve_until_started(sock, started))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"p2o-gateway-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s) or not self._server.started:
            self.scheduler.close()
            raise RuntimeError(f"gateway did not start within {timeout_s} s on {self.host}:{self.port}")
        log.info("gateway serving on %s", self.url)
        return self

    async def _serve_until_started(self, sock: socket.socket, started: threading.Event) -> None:
        task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started and not task.done():
            await asyncio.sleep(0.01)
        started.set()
        await task

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM, then shut down; `ready(url)` once bound."""
        sock = self._bind()
        self.scheduler.start()
        self._server = self._server_for()
        log.info("gateway serving on %s", self.url)
        if ready is not None:
            ready(self.url)
        try:
            self._server.run(sockets=[sock])
        finally:
            self.scheduler.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests (503), fail queued ones, finish the running batch, stop the server."""
        self.scheduler.close(timeout_s)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
