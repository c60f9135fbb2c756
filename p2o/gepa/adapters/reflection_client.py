"""The reflection model client: any OpenAI-compatible chat endpoint, as a `complete(prompt) -> Completion`.

    complete = ReflectionClient(cfg.reflection)        # base_url, model, API key from cfg.api_key_env
    reflector = Reflector(complete, cfg.reflection.context_tokens, cfg.reflection.max_tokens)

One user message with the meta-prompt; `temperature`, `max_tokens`, and body extras
`chat_template_kwargs={"enable_thinking": cfg.enable_thinking}` (the switch Qwen3 on vLLM honours; the
authors sent a top-level flag that vLLM ignores) and `priority` (our gateway's scheduling class; set
`priority: ''` for external APIs), and with `seed` set `seed = derive_seed(seed, prompt, k)` for the k-th
sending of that prompt (the GEPA service
sets it for the Self-Ref model, whose server honours it, so a round's reflections do not depend on the order
of concurrent calls; a prompt sent again, e.g. the same parent with the same minibatch, gets the next seed of its
own sequence, so it is not answered with the same text). A null `content` falls back to `reasoning_content` (handled by
`reflect.completion_text`).

Failures: 429, 5xx, connection errors and timeouts are retried up to `retries` times with jittered
exponential backoff (`backoff_base_s * 2**attempt`, capped at `backoff_max_s`, x uniform(0.5, 1.5)); other
4xx fail at once. After `breaker_failures` consecutive failed calls the circuit breaker opens: calls fail
fast with `CompletionUnavailable` for `breaker_cooldown_s`, then probes are let through again and one
success closes it. The client is thread-safe.

Refusals that no retry can fix are configuration errors, raised as `RequestRefused` (never a silent
`reflection_failed`): the meta-prompt over the endpoint's context (`PromptTooLong`, with the token counts our
gateway or vLLM report), max_tokens over its limit (413 body size, 404 unknown model likewise). Each message
names the config keys behind the request (reflection.context_tokens, reflection.max_tokens, reflection.model).
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable

import openai

from p2o.config import ReflectionConfig
from p2o.gepa.adapters.policy_evaluator import error_detail, v1_url
from p2o.gepa.core.evaluate import RequestRefused
from p2o.gepa.core.reflect import Completion, CompletionFailed, CompletionUnavailable, PromptTooLong
from p2o.seeds import derive_seed

log = logging.getLogger(__name__)


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open for `cooldown_s` -> half-open (calls allowed) -> closed on success."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.threshold, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self.opened_at is not None and self.clock() - self.opened_at < self.cooldown_s

    def allow(self) -> bool:
        return not self.is_open

    def success(self) -> None:
        with self._lock:
            self.consecutive, self.opened_at = 0, None

    def failure(self) -> None:
        with self._lock:
            self.consecutive += 1
            if self.consecutive >= self.threshold:
                if self.opened_at is None or self.clock() - self.opened_at >= self.cooldown_s:
                    log.warning("reflection endpoint: circuit breaker open after %d consecutive failures",
                                self.consecutive)
                self.opened_at = self.clock()


def retryable(e: Exception) -> bool:
    if isinstance(e, openai.APIStatusError):
        return e.status_code == 429 or e.status_code >= 500
    return isinstance(e, (openai.APIConnectionError, openai.APITimeoutError))


_OURS = re.compile(r"has (\d+) tokens; the gateway limit is (\d+)")
_VLLM_SPLIT = re.compile(r"maximum context length is (\d+) tokens.*?(\d+) in the messages, (\d+) in the completion",
                         re.S)
_VLLM_INPUT = re.compile(r"maximum context length is (\d+) tokens.*?request has (\d+) input tokens", re.S)
_CONTEXT_WORDS = ("context length", "context window", "too long", "prompt is too long", "maximum context")


def prompt_counts(message: str, max_tokens: int) -> tuple[int | None, int | None]:
    """(prompt tokens, prompt limit) from a context-overflow message of our gateway or vLLM; (None, None)."""
    if m := _OURS.search(message):
        return int(m.group(1)), int(m.group(2))
    if m := _VLLM_SPLIT.search(message):
        return int(m.group(2)), int(m.group(1)) - int(m.group(3))
    if m := _VLLM_INPUT.search(message):
        return int(m.group(2)), int(m.group(1)) - max_tokens
    return None, None


def refusal(e: Exception, cfg: ReflectionConfig) -> RequestRefused | None:
    """The configuration error a 4xx response stands for, or None when it is an ordinary failed call."""
    if not isinstance(e, openai.APIStatusError) or not 400 <= e.status_code < 500 or retryable(e):
        return None
    status = e.status_code
    message, param = error_detail(e)
    low = message.lower()
    head = (f"the reflection endpoint {cfg.base_url} refused a call with HTTP {status}: {message} -- "
            "a configuration error: ")
    if param in ("prompt", "messages") and "token" in low or any(w in low for w in _CONTEXT_WORDS):
        tokens, limit = prompt_counts(message, cfg.max_tokens)
        return PromptTooLong(head + f"the meta-prompt is fitted into reflection.context_tokens = {cfg.context_tokens} "
                             f"- reflection.max_tokens = {cfg.max_tokens} - margin, which must fit what the endpoint "
                             "accepts (Self-Ref: its gateway is sized from the same keys)", tokens, limit)
    if param in ("max_tokens", "max_completion_tokens") or "max_tokens" in low:
        return RequestRefused(head + f"reflection.max_tokens = {cfg.max_tokens} exceeds the endpoint's limit")
    if status == 413:
        return RequestRefused(head + f"the meta-prompt (reflection.context_tokens = {cfg.context_tokens}) exceeds "
                              "the endpoint's body limit")
    if status == 404:
        return RequestRefused(head + f"reflection.model = {cfg.model!r} is not served at reflection.base_url")
    return None


class ReflectionClient:
    def __init__(self, cfg: ReflectionConfig, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, jitter: random.Random | None = None,
                 seed: int | None = None):
        if not cfg.base_url:
            raise ValueError("reflection.base_url: empty; expected the reflection endpoint's base URL")
        self.cfg = cfg
        self.seed = seed
        self._sent: dict[bytes, int] = {}  # prompt digest -> times sent (the seed sequence of a repeated prompt)
        self._sent_lock = threading.Lock()
        self.client = openai.OpenAI(base_url=v1_url(cfg.base_url), api_key=os.environ.get(cfg.api_key_env) or "none",
                                    max_retries=0, timeout=cfg.timeout_s)
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s, clock)
        self.sleep = sleep
        self.jitter = jitter or random.Random()
        self._jitter_lock = threading.Lock()
        self.calls = 0
        self.failures = 0

    def _extra_body(self) -> dict:
        body: dict = {"chat_template_kwargs": {"enable_thinking": self.cfg.enable_thinking}}
        if self.cfg.priority:
            body["priority"] = self.cfg.priority
        return body

    def _delay(self, attempt: int) -> float:
        with self._jitter_lock:
            u = self.jitter.uniform(0.5, 1.5)
        return min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** attempt) * u

    def _seed(self, prompt: str) -> int | openai.NotGiven:
        if self.seed is None:
            return openai.NOT_GIVEN
        digest = hashlib.sha256(prompt.encode()).digest()
        with self._sent_lock:
            k = self._sent.get(digest, 0)
            self._sent[digest] = k + 1
        return derive_seed(self.seed, digest.hex(), k)

    def __call__(self, prompt: str) -> Completion:
        seed = self._seed(prompt)  # retries of this call resend the same seed
        if not self.breaker.allow():
            raise CompletionUnavailable(f"reflection endpoint {self.cfg.base_url} is down (circuit breaker open "
                                        f"after {self.breaker.consecutive} consecutive failed calls)")
        last: Exception | None = None
        for attempt in range(self.cfg.retries + 1):
            self.calls += 1
            try:
                resp = self.client.chat.completions.create(
                    model=self.cfg.model, messages=[{"role": "user", "content": prompt}],
                    temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens, extra_body=self._extra_body(),
                    seed=seed)
            except Exception as e:  # noqa: BLE001 - classified: a configuration error, retry, or fail this call
                refused = refusal(e, self.cfg)
                if refused is not None:
                    raise refused from e
                last = e
                if not retryable(e):
                    break
                if attempt < self.cfg.retries:
                    self.sleep(self._delay(attempt))
                continue
            if not resp.choices:
                last = CompletionFailed("the response has no choices")
                break
            self.breaker.success()
            choice = resp.choices[0]
            extra = choice.message.model_extra or {}
            reasoning = extra.get("reasoning_content") or extra.get("reasoning")
            return Completion(choice.message.content, reasoning, choice.finish_reason or "stop")
        self.failures += 1
        self.breaker.failure()
        raise CompletionFailed(f"reflection call failed: {type(last).__name__}: {str(last)[:300]}")

    def close(self) -> None:
        self.client.close()
