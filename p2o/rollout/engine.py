"""What a rollout engine is: records for requests and generations, and the `RolloutEngine` protocol.

An engine turns token-id prompts into sampled responses and knows nothing about HTTP, chat templates or
priorities (those live in the gateway and its scheduler). Two implementations share this contract:
`HFEngine` (transformers, CPU or GPU) and `VLLMEngine` (vLLM colocated with the trainer, GPU only).

Conventions every engine follows:
- `generate(requests)` returns, for each request in order, `params.n` generations.
- `Generation.logprobs[t]` is the behaviour log-probability (fp32) of `response_ids[t]` under the
  distribution the token was actually drawn from: softmax(logits / temperature), restricted to the top-k /
  top-p set and renormalised when those are active. With top_k = 0 and top_p = 1 this equals what the
  trainer recomputes by teacher forcing at the same temperature. At temperature 0 (greedy) it is the
  log-probability under softmax(logits), i.e. at temperature 1.
- `response_ids` include the token that ended the response (EOS, or the last token of a stop string);
  `text` excludes EOS/special tokens and everything from the matched stop string on.
- `policy_version` is the version of the weights that produced the generation (set by `load_weights`).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

WeightBucket = list[tuple[str, torch.Tensor]]
FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass
class SamplingParams:
    """How to sample one request's responses."""

    n: int = 1
    """Responses per prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus threshold in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Keep the k most likely tokens (0 disables it)."""
    max_new_tokens: int = 64
    """Maximum response length in tokens."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: the response ends when its decoded text contains one (the string itself is cut from `text`)."""
    seed: int | None = None
    """Sampling seed; response j of the request draws from a generator seeded from (seed, j). None: the engine picks."""

    def __post_init__(self) -> None:
        checks = [
            ("n", self.n >= 1, "an integer >= 1"),
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "a number >= 0"),
            ("top_p", 0 < self.top_p <= 1, "a number in (0, 1]"),
            ("top_k", self.top_k >= 0, "an integer >= 0"),
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "a list of non-empty strings"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"SamplingParams.{name}: got {getattr(self, name)!r}; expected {expected}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GenerationRequest:
    """One prompt (token ids, chat template already applied) and how to sample it."""

    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    priority: int = 0
    """Smaller is served first (see `p2o.rollout.scheduler.PRIORITIES`)."""
    cancel: threading.Event | None = field(default=None, repr=False, compare=False)
    """Set when nobody wants the result any more (the client went away); engines that check it stop
    decoding the request's sequences at the next step (their generations end with finish_reason 'cancelled')."""

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError(f"GenerationRequest {self.request_id!r}: prompt_ids is empty")

    def __getstate__(self) -> dict:
        """Pickled without `cancel`: the event belongs to this process (generation phases send requests to the
        other ranks' engines, which are driven, and cancelled, from here)."""
        return {**self.__dict__, "cancel": None}


@dataclass
class Generation:
    """One sampled response."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    """Behaviour log-probs of `response_ids` (fp32 values, same length); see the module docstring."""
    text: str
    finish_reason: str
    """'stop' (EOS or a stop string), 'length' (max_new_tokens reached) or 'cancelled' (`request.cancel` set:
    the result is discarded)."""
    policy_version: int


class EngineAsleep(RuntimeError):
    """`generate` was called while the engine sleeps (call `wake_up` first)."""


class RolloutEngine(Protocol):
    """A generation engine the training loop and the gateway drive."""

    policy_version: int
    """Version of the weights currently loaded (0: the initial model)."""

    def generate(self, requests: list[GenerationRequest]) -> list[list[Generation]]:
        """`params.n` generations per request, in request order. Raises `EngineAsleep` while asleep."""
        ...

    def load_weights(self, bucket_stream: Iterator[WeightBucket], version: int) -> None:
        """Copy HF-named full tensors from the stream into the engine, then set `policy_version = version`."""
        ...

    def sleep(self) -> None:
        """Release accelerator memory for the trainer (weights and/or KV cache, engine-specific)."""
        ...

    def wake_up(self) -> None:
        """Undo `sleep`; generation is possible again."""
        ...

    @property
    def is_sleeping(self) -> bool:
        ...
