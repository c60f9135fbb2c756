"""Requests -> sequences -> decode batches, shared by the engines.

A request with `params.n = k` becomes k sequences; sequence j gets the seed `sequence_seed(seed, j)`, so
its random stream does not depend on how the sequences are later batched. Requests without a seed get one
from the engine's own `random.Random` (seeded at construction): reproducible for the same engine and
the same order of calls, not across engines.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from p2o.rollout.engine import GenerationRequest, SamplingParams
from p2o.rollout.sampling import sequence_seed


@dataclass
class Sequence:
    """One response to produce: request `request_index`, sample `sample_index`."""

    request_index: int
    sample_index: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    request: GenerationRequest | None = None
    """The request it belongs to (engines check `request.cancelled` between decode steps)."""

    @property
    def cancelled(self) -> bool:
        return self.request is not None and self.request.cancelled


def expand(requests: list[GenerationRequest], rng: random.Random) -> list[Sequence]:
    """All sequences of `requests`, in request order then sample order."""
    out: list[Sequence] = []
    for i, req in enumerate(requests):
        base = req.params.seed if req.params.seed is not None else rng.getrandbits(63)
        for j in range(req.params.n):
            out.append(Sequence(i, j, list(req.prompt_ids), req.params, sequence_seed(base, j), req))
    return out


def check_prompt(req: GenerationRequest, max_prompt_tokens: int | None, vocab_size: int) -> None:
    """Raise ValueError naming the request if its prompt is longer than `max_prompt_tokens` or has a token id
    outside [0, vocab_size)."""
    n = len(req.prompt_ids)
    if max_prompt_tokens is not None and n > max_prompt_tokens:
        raise ValueError(f"request {req.request_id!r}: prompt has {n} tokens; max_prompt_tokens is {max_prompt_tokens}")
    bad = [t for t in req.prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"request {req.request_id!r}: token id {bad[0]} outside the vocabulary [0, {vocab_size})")


def decode_batches(seqs: list[Sequence], max_batch_size: int) -> Iterator[list[Sequence]]:
    """Chunks of at most `max_batch_size` sequences, prompts of similar length together (less padding)."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size: got {max_batch_size}; expected >= 1")
    ordered = sorted(seqs, key=lambda s: len(s.prompt_ids))
    for start in range(0, len(ordered), max_batch_size):
        yield ordered[start:start + max_batch_size]


def regroup(requests: list[GenerationRequest], results: dict[tuple[int, int], object]) -> list[list]:
    """Results keyed by (request_index, sample_index) back into one list of `n` per request."""
    return [[results[(i, j)] for j in range(req.params.n)] for i, req in enumerate(requests)]
