"""The project's one HTTP server stack: FastAPI apps on uvicorn (h11), with the guards every endpoint needs.

Both network services (the OpenAI-compatible gateway, `p2o.rollout.gateway`, and the GEPA service,
`p2o.gepa.service.server`) are FastAPI apps served by `HTTPServer` and wrapped in `Guard`. Clients are treated as
hostile; what each request gets before any route code runs:

- the request head must arrive within `head_timeout_s` of the connection opening (or of the previous
  response on a kept-alive connection); otherwise the connection is closed (slowloris). h11 bounds the
  head's size (16 KiB);
- `Authorization: Bearer <token>` is checked on the headers, before a byte of the body is read (401);
- a `Content-Length` over `max_body_bytes` is refused before reading (413); a body sent without a length
  is counted while it streams and refused at the limit; the whole body must arrive within
  `body_timeout_s` (408). These answers close the connection, so an unread body is never drained;
- at most `max_connections` connections and requests at once (503 beyond).

Route code then decodes JSON with `decode_json`: strict UTF-8, nesting at most `max_json_depth`, no lone
surrogate (an invalid Unicode scalar that `\\udXXX` escapes can smuggle in) in any string or key; each is
a 400 that names the problem and where it is. Large bodies are decoded off the event loop (`json_body`),
so a hostile request never delays `/health`.

    server = HTTPServer(app, host="127.0.0.1", port=0, limits=HTTPLimits()).start()   # a daemon thread
    server.url; server.stop()
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ErrorBody = Callable[[int, str, str], dict[str, Any]]
"""(status, message, type) -> the JSON error body of a service."""


@dataclass
class HTTPLimits:
    """Bounds on what one client may send (see the module docstring)."""

    max_body_bytes: int = 4 * 1024 * 1024
    head_timeout_s: float = 10.0
    """Seconds from connection (or from the last response) to a complete request head."""
    body_timeout_s: float = 30.0
    """Seconds from the request head to the end of its body."""
    max_json_depth: int = 64
    """Deepest nesting of JSON arrays/objects accepted."""
    max_connections: int = 1024
    """Concurrent connections and requests (uvicorn's limit_concurrency); 503 beyond."""
    off_loop_json_bytes: int = 64 * 1024
    """Bodies at least this large are decoded in a worker thread."""


class RequestRejected(Exception):
    """A request refused before its route ran its logic: HTTP `status`, a message, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.field, self.type = status, message, field, type


def bearer_ok(header: str | bytes | None, token: str) -> bool:
    """Constant-time check of an `Authorization` header against `Bearer <token>`."""
    given = header.encode("latin-1") if isinstance(header, str) else (header or b"")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- JSON
_SURROGATE = re.compile("[\ud800-\udfff]")


def _where(path: list[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(body)"


def check_text(value: Any, max_depth: int = 64, path: list[Any] | None = None) -> None:
    """Raise `RequestRejected(400)` for nesting deeper than `max_depth` or a lone surrogate in any string."""
    stack: list[tuple[Any, list[Any]]] = [(value, list(path or []))]
    while stack:
        node, where = stack.pop()
        if len(where) > max_depth:
            raise RequestRejected(400, f"JSON nested deeper than {max_depth} levels at {_where(where[:8])}...",
                                  _where(where[:8]))
        if isinstance(node, str):
            m = _SURROGATE.search(node)
            if m:
                raise RequestRejected(400, f"invalid Unicode in {_where(where)}: lone surrogate "
                                           f"U+{ord(m.group()):04X} at character {m.start()}", _where(where))
        elif isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and _SURROGATE.search(k):
                    raise RequestRejected(400, f"invalid Unicode in a key of {_where(where)}: lone surrogate",
                                          _where(where))
                if isinstance(v, (str, dict, list)):
                    stack.append((v, [*where, k]))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, (str, dict, list)):
                    stack.append((v, [*where, i]))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def decode_json(raw: bytes, max_depth: int = 64) -> Any:
    """The decoded body; `RequestRejected(400)` for bad UTF-8, bad JSON, deep nesting or lone surrogates."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestRejected(400, f"request body is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise RequestRejected(400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    except RecursionError:
        raise RequestRejected(400, f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as e:  # e.g. an integer literal over Python's 4300-digit conversion limit
        raise RequestRejected(400, f"request body is not acceptable JSON: {e}") from None
    check_text(value, max_depth)
    return value


async def json_body(request: Any, limits: HTTPLimits) -> Any:
    """Decode a (guarded) request's JSON body; large bodies off the event loop."""
    raw = await request.body()
    if len(raw) >= limits.off_loop_json_bytes:
        return await asyncio.to_thread(decode_json, raw, limits.max_json_depth)
    return decode_json(raw, limits.max_json_depth)


# ---------------------------------------------------------------------------------------------- ASGI guard
class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class Guard:
    """ASGI middleware: auth on headers, then a bounded (size, time) body read, before the app runs.

    `open_paths` need no token (e.g. /health). `error_body(status, message, type)` shapes refusals in the
    service's own error format. The app receives the body already read (a replayed `receive`); later
    `receive` calls reach the server, so the app can still notice a client disconnecting.
    """

    def __init__(self, app: Any, limits: HTTPLimits, token: str | None, error_body: ErrorBody,
                 open_paths: Iterable[str] = ("/health",)):
        self.app, self.limits, self.token, self.error_body = app, limits, token or None, error_body
        self.open_paths = frozenset(open_paths)

    async def _refuse(self, send: Callable[..., Awaitable[None]], status: int, message: str, type: str) -> None:
        data = json.dumps(self.error_body(status, message, type)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _read(self, receive: Callable[[], Awaitable[dict]]) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        if self.token is not None and scope["path"] not in self.open_paths \
                and not bearer_ok(headers.get(b"authorization"), self.token):
            return await self._refuse(send, 401, "missing or wrong bearer token", "authentication_error")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await self._refuse(send, 400, "Content-Length is not a number", "invalid_request_error")
            if int(length) > self.limits.max_body_bytes:
                return await self._refuse(send, 413, f"request body of {int(length)} bytes exceeds the limit of "
                                                     f"{self.limits.max_body_bytes}", "invalid_request_error")
        if (length is not None and int(length) > 0) or b"chunked" in headers.get(b"transfer-encoding", b""):
            try:
                body = await asyncio.wait_for(self._read(receive), self.limits.body_timeout_s)
            except TimeoutError:
                return await self._refuse(send, 408, f"request body not received within "
                                                     f"{self.limits.body_timeout_s:g} s", "timeout")
            except _BodyTooLarge:
                return await self._refuse(send, 413, f"request body exceeds the limit of "
                                                     f"{self.limits.max_body_bytes} bytes", "invalid_request_error")
            except _ClientGone:
                return None
            receive = _replay(body, receive)
        return await self.app(scope, receive, send)


def _replay(body: bytes, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def wait_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return once the client has gone (after the body was read, the server's next message is a disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# ---------------------------------------------------------------------------------------------- server
def _protocol_with_head_timeout(head_timeout_s: float, keep_alive_s: float) -> type:
    """uvicorn's h11 protocol, closing connections whose request head does not arrive in time.

    The first head must arrive within `head_timeout_s` of the connection; on a kept-alive connection the
    next one within `keep_alive_s + head_timeout_s` of the last response (uvicorn closes idle ones at
    `keep_alive_s`; a head trickling in after that cancels uvicorn's timer, not this one)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self, delay_s: float) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(delay_s, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(head_timeout_s)

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a complete request head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm(keep_alive_s + head_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadTimeoutH11


class HTTPServer:
    """An ASGI app on uvicorn, bound once (port 0: a free port), served from a daemon thread or the main thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, limits: HTTPLimits | None = None,
                 name: str = "p2o-http"):
        self.app, self.host, self.port = app, host, port
        self.limits = limits or HTTPLimits()
        self.name = name
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError(f"{self.name}: url before bind()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def bind(self) -> HTTPServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self._socket = sock
        return self

    def _uvicorn(self) -> Any:
        import uvicorn

        keep_alive_s = 30
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_keep_alive=keep_alive_s, backlog=2048,
                                http=_protocol_with_head_timeout(self.limits.head_timeout_s, keep_alive_s),
                                limit_concurrency=self.limits.max_connections)
        return uvicorn.Server(config)

    def start(self, timeout_s: float = 30.0) -> HTTPServer:
        """Serve from a daemon thread; returns once the server accepts connections."""
        if self._socket is None:
            self.bind()
        sock = self._socket
        self._server = self._uvicorn()
        started = threading.Event()

        async def serve() -> None:
            task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
            while not self._server.started and not task.done():
                await asyncio.sleep(0.01)
            started.set()
            await task

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s) or not self._server.started:
            raise RuntimeError(f"{self.name} did not start within {timeout_s} s on {self.host}:{self.port}")
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until SIGINT/SIGTERM (uvicorn's handlers, in the main thread)."""
        if self._socket is None:
            self.bind()
        self._server = self._uvicorn()
        self._server.run(sockets=[self._socket])

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()
