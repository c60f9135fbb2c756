"""OpenAI completions / chat completions on top of the scheduler: tokenise, schedule, shape the response.

Knows nothing of HTTP frameworks: methods take parsed requests and return JSON-ready dicts, or raise
`GatewayError` (mapped to a status code by the routes in `gateway.py`).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

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
    request_timeout_s: float = 600.0
    default_priority: str = "evaluation"
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Defaults merged under each request's `chat_template_kwargs` (e.g. the run's thinking convention)."""


@dataclass
class ServedResult:
    """A response body and the policy version to report in `X-Policy-Version`."""

    body: dict[str, Any]
    policy_version: int


class OpenAIServing:
    """The completion endpoints' logic for one model name."""

    def __init__(self, scheduler: Scheduler, tokenizer: Any, model_name: str, limits: GatewayLimits):
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.limits = limits

    # ------------------------------------------------------------------------------------------ endpoints
    async def create_completion(self, req: CompletionRequest, header_priority: str | None) -> ServedResult:
        if req.echo:
            raise GatewayError(400, "echo is not supported", param="echo")
        prompts = [self._encode_text(p) if isinstance(p, str) else list(p) for p in req.prompts()]
        if not prompts:
            raise GatewayError(400, "prompt is empty", param="prompt")
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        gens = await self._run(req, prompts, rid, header_priority)
        choices = []
        for i, per_prompt in enumerate(gens):
            for j, g in enumerate(per_prompt):
                choice = {"index": i * req.n + j, "text": g.text, "finish_reason": g.finish_reason,
                          "logprobs": self._completion_logprobs(g) if req.logprobs is not None else None,
                          "policy_version": g.policy_version}
                self._token_ids(req, choice, g)
                choices.append(choice)
        return self._result(rid, "text_completion", req, prompts, gens, choices)

    async def create_chat_completion(self, req: ChatCompletionRequest, header_priority: str | None) -> ServedResult:
        msgs = [m.as_template_message() for m in req.messages]
        kwargs = {**self.limits.chat_template_kwargs, **(req.chat_template_kwargs or {})}
        try:
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
        except Exception as e:  # jinja errors (e.g. roles the template refuses)
            raise GatewayError(400, f"chat template failed: {e}", param="messages") from e
        prompt = self._encode_text(text)
        if req.max_completion_tokens is not None and req.max_tokens is None:
            req.max_tokens = req.max_completion_tokens
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        gens = await self._run(req, [prompt], rid, header_priority)
        choices = []
        for j, g in enumerate(gens[0]):
            choice = {"index": j, "message": {"role": "assistant", "content": g.text},
                      "finish_reason": g.finish_reason,
                      "logprobs": {"content": self._chat_logprobs(g)} if req.logprobs else None,
                      "policy_version": g.policy_version}
            self._token_ids(req, choice, g)
            choices.append(choice)
        return self._result(rid, "chat.completion", req, [prompt], gens, choices)

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

    async def _run(self, req: Any, prompts: list[list[int]], rid: str, header_priority: str | None) -> list[list[Generation]]:
        params = self._sampling(req)
        priority = self._priority(req, header_priority)
        for k, p in enumerate(prompts):
            if len(p) > self.limits.max_prompt_tokens:
                raise GatewayError(400, f"prompt {k} has {len(p)} tokens; the gateway limit is "
                                        f"{self.limits.max_prompt_tokens}", param="prompt")
            if not p:
                raise GatewayError(400, f"prompt {k} is empty", param="prompt")
            if any(not 0 <= t < len(self.tokenizer) for t in p):
                raise GatewayError(400, f"prompt {k} has token ids outside [0, {len(self.tokenizer)})", param="prompt")
        timeout = min(req.timeout_s or self.limits.request_timeout_s, self.limits.request_timeout_s)
        requests = [GenerationRequest(p, params, f"{rid}-{k}") for k, p in enumerate(prompts)]
        try:
            futures = self.scheduler.submit(requests, priority, req.min_policy_version, timeout, bounded=True)
        except QueueFull as e:
            raise GatewayError(429, str(e), type="rate_limit_error") from e
        except SchedulerClosed as e:
            raise GatewayError(503, str(e), type="service_unavailable") from e
        try:
            # the scheduler expires queued requests at the deadline; the grace covers a batch still running
            return await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                          timeout + self.limits.request_timeout_s)
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
