"""Seeds derived from named parts, so that a sampled request's randomness depends on what the request is about
and never on the order requests reach an engine.

    derive_seed(rollout.seed, step, group)        # a training group's n responses (p2o.train.rows)
    derive_seed(round_seed, problem_id)           # every GEPA candidate scored on a problem (common random numbers)

Served by our gateway or vLLM, a seeded request's samples depend on the seed and the prompt alone, up to
batch-dependent floating-point differences in the logits.
"""
from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A seed in [0, 2**31) from `parts` (hashed through their repr), stable across runs, platforms,
    PYTHONHASHSEED and request order."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF
