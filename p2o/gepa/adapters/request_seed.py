"""Request seeds for GEPA's sampled calls, so that a round does not depend on the order its requests arrive in.

A request without a `seed` gets one from the serving engine's own generator in arrival order; GEPA sends its
scoring and reflection requests concurrently, so two runs of the same round (same policy, hard set and
`gepa.seed`) drew different samples and kept different templates. Each request now carries

    seed = request_seed(gepa.seed, policy_version, *what the request is about)

(scoring: the problem id, the same for every candidate on that problem, so candidates are compared on common
random numbers; reflection: the meta-prompt). Served by our gateway or vLLM, a seeded request's samples depend
on the seed and the prompt alone, up to batch-dependent floating-point differences in the logits.
"""
from __future__ import annotations

import hashlib


def request_seed(*parts: object) -> int:
    """A seed in [0, 2**31) from `parts` (joined as text), stable across runs, platforms and request order."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
