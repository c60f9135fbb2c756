"""Thin OpenAI-compatible HTTP servers for the GEPA service tests (stdlib, 127.0.0.1, port 0).

- `FakePolicyServer`: a scripted task model. It answers `/v1/chat/completions` with the oracle of
  `oracle.py` applied to the template it finds in the user turn (the text before the blank line that
  `p2o.prompts.insert_template` puts between template and question), in chat-completion JSON with a
  `policy_version`. Used where the search's outcome must be known in advance (fault and kill tests);
  the end-to-end test uses the real gateway and model instead.
- `FakeReflectionServer`: a scripted reflection model (`oracle.scripted_reflection` on the meta-prompt),
  optionally failing calls by a repeating pattern of outcomes: "ok", "500" (HTTP 500), "stall" (no answer
  before the client's timeout), "garbage" (a 200 answer without any template).
Both record the request bodies they received.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.p2o.gepa.oracle import TOPICS, scripted_reflection, solves


def chat_response(content: str, model: str, version: int = 0) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
            "policy_version": version,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class _Server:
    def __init__(self, respond: Callable[[dict], tuple[int, Any]], port: int = 0):
        self.respond = respond
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> _Server:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with outer._lock:
                    outer.requests.append(body)
                status, payload = outer.respond(body)
                if status == 0:  # stall: never answer in time
                    time.sleep(payload)
                    status, payload = 500, {"error": {"message": "stalled"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class FakePolicyServer(_Server):
    def __init__(self, port: int = 0, delay_s: float = 0.0, version: int = 3):
        self.delay_s, self.version = delay_s, version
        super().__init__(self._answer, port)

    def _answer(self, body: dict) -> tuple[int, Any]:
        time.sleep(self.delay_s)
        user = body["messages"][-1]["content"]
        template, _, question = user.rpartition("\n\n")
        i = int(re.search(r"Question (\d+)", question).group(1))
        topic = TOPICS[i % len(TOPICS)]
        answer = str(7 * i + 1) if solves(template, question) else "0"
        return 200, chat_response(f"Thinking about the {topic}. \\boxed{{{answer}}}", body["model"], self.version)


class FakeReflectionServer(_Server):
    def __init__(self, pattern: tuple[str, ...] = ("ok",), stall_s: float = 2.0):
        self.pattern, self.stall_s = pattern, stall_s
        self.outcomes: list[str] = []
        super().__init__(self._answer)

    def _answer(self, body: dict) -> tuple[int, Any]:
        with self._lock:
            kind = self.pattern[len(self.outcomes) % len(self.pattern)]
            self.outcomes.append(kind)
        if kind == "500":
            return 500, {"error": {"message": "internal error"}}
        if kind == "stall":
            return 0, self.stall_s
        if kind == "garbage":
            return 200, chat_response("I am not sure what you mean.", body["model"])
        return 200, chat_response(scripted_reflection(body["messages"][-1]["content"]), body["model"])


class CyclingReflectionServer(_Server):
    """A scripted reflection model that proposes the given templates in turn, in a fenced block."""

    def __init__(self, templates: list[str]):
        self.templates = templates
        super().__init__(self._answer)

    def _answer(self, body: dict) -> tuple[int, Any]:
        with self._lock:
            template = self.templates[(len(self.requests) - 1) % len(self.templates)]
        return 200, chat_response(f"New instruction:\n```\n{template}\n```", body["model"])
