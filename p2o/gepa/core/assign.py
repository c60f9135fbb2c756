"""Template assignment (P2O Algorithm 2): greedy set cover of the dev set, then K templates per hard sample.

1. Coverage: C(c) = dev instances candidate c solves: dev score >= `solved_at` (1.0 by default: every
   sample correct; with `eval_n` samples, 1/eval_n means any sample correct). Greedy set cover repeatedly takes the candidate covering the most not-yet-covered
   instances (lowest index on ties) until nothing new is covered. The covered set may be empty: then the
   assignment is empty (no templates next epoch), never an error (the authors' code raises here).
2. Per hard sample, K templates drawn with replacement, weight = max(mean dev score, `WEIGHT_FLOOR`):
   a dev instance draws from the covered candidates that solved it (all covered ones when none did);
   every other hard sample (the feedback split) draws from all covered candidates.
   Options: `same_template_in_group` (one draw repeated K times), `leave_one_untemplated` (the last of the
   K is the empty template "").
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from p2o.gepa.core.pool import WEIGHT_FLOOR, Pool

SOLVED = 1.0


def greedy_set_cover(scores: Sequence[Sequence[float]], solved_at: float = SOLVED) -> list[int]:
    """Candidate indices in the order greedy set cover picks them (instances with score >= `solved_at` are covered)."""
    covers = [{j for j, s in enumerate(row) if s >= solved_at} for row in scores]
    covered: set[int] = set()
    chosen: list[int] = []
    while True:
        gains = [len(c - covered) if i not in chosen else 0 for i, c in enumerate(covers)]
        if not gains or max(gains) == 0:
            return chosen
        best = gains.index(max(gains))
        chosen.append(best)
        covered |= covers[best]


def draw_weights(pool: Pool, cover: Sequence[int], dev_index: int | None,
                 solved_at: float = SOLVED) -> dict[int, float]:
    """Candidate -> weight for one hard sample (`dev_index` = its position in the dev split, or None)."""
    eligible = list(cover)
    if dev_index is not None:
        solved = [c for c in cover if pool.candidates[c].dev_scores[dev_index] >= solved_at]
        eligible = solved or eligible
    return {c: max(pool.candidates[c].dev_mean, WEIGHT_FLOOR) for c in eligible}


def _draw(weights: dict[int, float], rng: random.Random) -> int:
    keys = sorted(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys], k=1)[0]


def assign_templates(pool: Pool, cover: Sequence[int], dev_ids: Sequence[str], feedback_ids: Sequence[str],
                     k: int, rng: random.Random, same_template_in_group: bool = False,
                     leave_one_untemplated: bool = False, solved_at: float = SOLVED) -> dict[str, list[str]]:
    """problem id -> K templates (dev ids first, then feedback ids); {} when `cover` is empty."""
    if k < 1:
        raise ValueError(f"k: got {k}; expected at least 1 template per hard sample")
    if not cover:
        return {}
    position = {pid: j for j, pid in enumerate(dev_ids)}
    out: dict[str, list[str]] = {}
    for pid in list(dev_ids) + list(feedback_ids):
        weights = draw_weights(pool, cover, position.get(pid), solved_at)
        if same_template_in_group:
            picks = [_draw(weights, rng)] * k
        else:
            picks = [_draw(weights, rng) for _ in range(k)]
        templates = [pool.candidates[c].template for c in picks]
        if leave_one_untemplated:
            templates[-1] = ""
        out[pid] = templates
    return out
