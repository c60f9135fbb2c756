"""OpenAI completions / chat completions on top of the scheduler: tokenise, schedule, shape the response.

Knows nothing of HTTP frameworks: methods take parsed requests and return JSON-ready dicts, or raise
`GatewayError` (mapped to a status code by the routes in `gateway.py`).

The CPU work of a request (chat-template rendering, tokenisation, detokenising the response) runs in a
small pool of `cpu_workers` threads, never on the event loop, each piece within `render_timeout_s`
(400 beyond), so one hostile request cannot stall `/health` or the other requests. Cancelling a
coroutine (the client went away) cancels the request in the scheduler: dropped while queued, stopped
at the next decode step while generating.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from p2o.rollout.engine import Generation, GenerationRequest, SamplingParams
from p2o.rollout.protocol import ChatCompletionRequest, CompletionRequest, GatewayError
from p2o.rollout.scheduler import PRIORITIES, QueueFull, RequestTimeout, Scheduler, SchedulerClosed


@dataclass
class GatewayLimits:
    """Request limits; violations are 400 (or 413 for the body size)."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_prompt_tokens: int = 8192
    max_tokens: int = 4096
    """Largest `max_tokens` a request may ask for."""
    default_max_tokens: int = 256
    """`max_tokens` when a request gives none."""
    max_n: int = 64
    max_prompts: int = 256
    """Prompts in one completions request."""
    max_stop: int = 16
    """Stop strings in one request, each at most `max_stop_chars` characters."""
    max_stop_chars: int = 1024
    request_timeout_s: float = 600.0
    default_priority: str = "evaluation"
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Defaults merged under each request's `chat_template_kwargs` (e.g. the run's thinking convention)."""
    render_timeout_s: float = 30.0
    """Bound on one request's template rendering / tokenisation / detokenisation (400 beyond)."""
    cpu_workers: int = 4
    """Threads doing that CPU work (requests beyond wait for one)."""
    head_timeout_s: float = 10.0
    """A request head must arrive within this (see `p2o.server`)."""
    body_timeout_s: float = 30.0
    """A request body must arrive within this after its head (408)."""
    max_json_depth: int = 64
    """Deepest JSON nesting accepted (400 beyond)."""

    def http_limits(self) -> Any:
        from p2o.server import HTTPLimits

        return HTTPLimits(max_body_bytes=self.max_body_bytes, head_timeout_s=self.head_timeout_s,
                          body_timeout_s=self.body_timeout_s, max_json_depth=self.max_json_depth)


@dataclass
class ServedResult:
    """A response body and the policy version to report in `X-Policy-Version`."""

    body: dict[str, Any]
    policy_version: int


T = TypeVar("T")


class OpenAIServing:
    """The completion endpoints' logic for one model name."""

    def __init__(self, scheduler: Scheduler, tokenizer: Any, model_name: str, limits: GatewayLimits):
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.limits = limits
        self.vocab_size = len(tokenizer)
        self._cpu = ThreadPoolExecutor(max_workers=max(1, limits.cpu_workers), thread_name_prefix="p2o-gateway-cpu")

    def close(self) -> None:
        self._cpu.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the CPU pool within `render_timeout_s`; GatewayError(400) naming `what` beyond."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._cpu, fn, *args), self.limits.render_timeout_s)
        except TimeoutError:
            raise GatewayError(400, f"{what} took longer than {self.limits.render_timeout_s:g} s; send a smaller "
                                    f"request") from None

    def _check_model(self, req: Any) -> None:
        if req.model is not None and req.model != self.model_name:
            raise GatewayError(404, f"The model '{req.model}' does not exist; this gateway serves "
                                    f"'{self.model_name}'", param="model", code="model_not_found")

    # ------------------------------------------------------------------------------------------ endpoints
    async def create_completion(self, req: CompletionRequest, header_priority: str | None) -> ServedResult:
        self._check_model(req)
        if req.echo:
            raise GatewayError(400, "echo is not supported", param="echo")
        texts = req.prompts()
        if not texts:
            raise GatewayError(400, "prompt is empty", param="prompt")
        if len(texts) > self.limits.max_prompts:
            raise GatewayError(400, f"{len(texts)} prompts in one request; the gateway limit is "
                                    f"{self.limits.max_prompts}", param="prompt")
        params, priority = self._sampling(req), self._priority(req, header_priority)
        prompts = await self._off_loop("tokenising the prompt", lambda: [
            self._encode_text(p) if isinstance(p, str) else list(p) for p in texts])
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        gens = await self._run(req, prompts, rid, params, priority)

        def shape() -> ServedResult:
            choices = []
            for i, per_prompt in enumerate(gens):
                for j, g in enumerate(per_prompt):
                    choice = {"index": i * req.n + j, "text": g.text, "finish_reason": g.finish_reason,
                              "logprobs": self._completion_logprobs(g) if req.logprobs is not None else None,
                              "policy_version": g.policy_version}
                    self._token_ids(req, choice, g)
                    choices.append(choice)
            return self._result(rid, "text_completion", req, prompts, gens, choices)

        return await self._off_loop("shaping the response", shape)

    def _render(self, msgs: list[dict[str, str]], kwargs: dict[str, Any]) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
        except Exception as e:  # jinja errors (e.g. roles the template refuses)
            raise GatewayError(400, f"chat template failed: {e}", param="messages") from e
        bound = self.limits.max_body_bytes + 65536
        if len(text) > bound:  # the model's own template: output ~ input; anything else is refused
            raise GatewayError(400, f"the rendered chat prompt has {len(text)} characters (limit {bound})",
                               param="messages")
        return self._encode_text(text)

    async def create_chat_completion(self, req: ChatCompletionRequest, header_priority: str | None) -> ServedResult:
        self._check_model(req)
        kwargs = {**self.limits.chat_template_kwargs, **req.template_kwargs()}
        msgs = [m.as_template_message() for m in req.messages]
        if req.max_completion_tokens is not None and req.max_tokens is None:
            req.max_tokens = req.max_completion_tokens
        params, priority = self._sampling(req), self._priority(req, header_priority)
        prompt = await self._off_loop("rendering the chat template", self._render, msgs, kwargs)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        gens = await self._run(req, [prompt], rid, params, priority)

        def shape() -> ServedResult:
            choices = []
            for j, g in enumerate(gens[0]):
                choice = {"index": j, "message": {"role": "assistant", "content": g.text},
                          "finish_reason": g.finish_reason,
                          "logprobs": {"content": self._chat_logprobs(g)} if req.logprobs else None,
                          "policy_version": g.policy_version}
                self._token_ids(req, choice, g)
                choices.append(choice)
            return self._result(rid, "chat.completion", req, [prompt], gens, choices)

        return await self._off_loop("shaping the response", shape)

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "p2o", "policy_version": self.scheduler.policy_version}]}

    # ------------------------------------------------------------------------------------------ helpers
    def _encode_text(self, text: str) -> list[int]:
        # chat-rendered text already holds its special tokens; plain prompts are tokenised as they are
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sampling(self, req: Any) -> SamplingParams:
        lim = self.limits
        max_tokens = req.max_tokens if req.max_tokens is not None else lim.default_max_tokens
        if max_tokens > lim.max_tokens:
            raise GatewayError(400, f"max_tokens {max_tokens} exceeds the gateway limit {lim.max_tokens}",
                               param="max_tokens")
        if req.n > lim.max_n:
            raise GatewayError(400, f"n {req.n} exceeds the gateway limit {lim.max_n}", param="n")
        if req.stream:
            raise GatewayError(400, "stream=true is not supported", param="stream")
        stops = req.stop_list()
        if len(stops) > lim.max_stop or any(len(x) > lim.max_stop_chars for x in stops):
            raise GatewayError(400, f"stop: at most {lim.max_stop} strings of at most {lim.max_stop_chars} "
                                    f"characters", param="stop")
        try:
            return SamplingParams(n=req.n, temperature=1.0 if req.temperature is None else req.temperature,
                                  top_p=1.0 if req.top_p is None else req.top_p, top_k=max(req.top_k, 0),
                                  max_new_tokens=max_tokens, stop=req.stop_list(), seed=req.seed)
        except ValueError as e:
            raise GatewayError(400, str(e)) from e

    def _priority(self, req: Any, header: str | None) -> str:
        priority = req.priority or header or self.limits.default_priority
        if priority not in PRIORITIES:
            raise GatewayError(400, f"priority {priority!r}: expected one of {', '.join(PRIORITIES)}",
                               param="priority")
        return priority

    async def _run(self, req: Any, prompts: list[list[int]], rid: str, params: SamplingParams,
                   priority: str) -> list[list[Generation]]:
        for k, p in enumerate(prompts):
            if len(p) > self.limits.max_prompt_tokens:
                raise GatewayError(400, f"prompt {k} has {len(p)} tokens; the gateway limit is "
                                        f"{self.limits.max_prompt_tokens}", param="prompt")
            if not p:
                raise GatewayError(400, f"prompt {k} is empty", param="prompt")
            if min(p) < 0 or max(p) >= self.vocab_size:
                raise GatewayError(400, f"prompt {k} has token ids outside [0, {self.vocab_size})", param="prompt")
        timeout = min(req.timeout_s or self.limits.request_timeout_s, self.limits.request_timeout_s)
        requests = [GenerationRequest(p, params, f"{rid}-{k}") for k, p in enumerate(prompts)]
        try:
            futures = self.scheduler.submit(requests, priority, req.min_policy_version, timeout, bounded=True)
        except QueueFull as e:
            raise GatewayError(429, str(e), type="rate_limit_error") from e
        except SchedulerClosed as e:
            raise GatewayError(503, str(e), type="service_unavailable") from e
        gathered = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        gathered.add_done_callback(lambda g: g.cancelled() or g.exception())  # retrieved, whatever happens
        try:
            # the scheduler expires queued requests at the deadline; the grace covers a batch still running
            return await asyncio.wait_for(gathered, timeout + self.limits.request_timeout_s)
        except asyncio.CancelledError:  # the client went away: stop generating for it
            self.scheduler.cancel(futures)
            raise
        except (TimeoutError, RequestTimeout) as e:
            self.scheduler.cancel(futures)
            raise GatewayError(504, str(e) or f"request not served within {timeout} s", type="timeout") from e
        except SchedulerClosed as e:
            raise GatewayError(503, str(e), type="service_unavailable") from e
        except ValueError as e:  # the engine refused the input (e.g. a token id outside the vocabulary)
            raise GatewayError(400, str(e)) from e

    def _result(self, rid: str, obj: str, req: Any, prompts: list[list[int]], gens: list[list[Generation]],
                choices: list[dict[str, Any]]) -> ServedResult:
        version = min(g.policy_version for per in gens for g in per)
        completion_tokens = sum(len(g.response_ids) for per in gens for g in per)
        prompt_tokens = sum(len(p) for p in prompts)
        body = {"id": rid, "object": obj, "created": int(time.time()), "model": req.model or self.model_name,
                "choices": choices, "policy_version": version,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
        return ServedResult(body, version)

    def _token_ids(self, req: Any, choice: dict[str, Any], g: Generation) -> None:
        if req.return_token_ids:
            choice["prompt_token_ids"] = g.prompt_ids
            choice["token_ids"] = g.response_ids

    def _pieces(self, g: Generation) -> list[str]:
        return [self.tokenizer.decode([t]) for t in g.response_ids]

    def _completion_logprobs(self, g: Generation) -> dict[str, Any]:
        pieces = self._pieces(g)
        offsets, pos = [], 0
        for piece in pieces:
            offsets.append(pos)
            pos += len(piece)
        return {"tokens": pieces, "token_logprobs": g.logprobs, "top_logprobs": None, "text_offset": offsets}

    def _chat_logprobs(self, g: Generation) -> list[dict[str, Any]]:
        return [{"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": []}
                for piece, lp in zip(self._pieces(g), g.logprobs, strict=True)]
