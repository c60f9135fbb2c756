"""`GEPAResult`: what a finished search hands back to the trainer (JSON round-trip safe).

- `assignment`: problem id -> K templates (every hard sample, dev and feedback split); {} when no template,
  not even the empty seed, solves a dev instance.
- `pool`: every candidate with its parent, the iteration that produced it and its per-dev-instance scores.
- `cover`: the candidates greedy set cover picked, in pick order.
- `log`: one record per parent slot and iteration (accepted / rejected / duplicate / unusable /
  reflection_failed / parent_perfect, with the reason and the minibatch scores).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from p2o.gepa.core.assign import assign_templates, greedy_set_cover
from p2o.gepa.core.pool import instance_fronts
from p2o.gepa.core.search import IterationStats, ProposalRecord, SearchState


@dataclass
class PoolEntry:
    idx: int
    template: str
    parent: int | None
    iteration: int
    dev_mean: float
    dev_scores: dict[str, float]
    metric_calls_at_discovery: int = 0


@dataclass
class GEPAResult:
    assignment: dict[str, list[str]]
    pool: list[PoolEntry]
    cover: list[int]
    fronts: dict[str, list[int]]
    """dev problem id -> candidates on its front (best score, ties included)."""
    dev_ids: list[str]
    feedback_ids: list[str]
    log: list[ProposalRecord]
    iterations: int
    metric_calls: int
    budget_used: int
    budget_total: int
    accounting: str
    stop_reason: str
    counters: dict[str, int] = field(default_factory=dict)
    policy_version: int = 0
    wall_s: float = 0.0
    iteration_stats: list[IterationStats] = field(default_factory=list)

    @property
    def best(self) -> PoolEntry:
        return max(self.pool, key=lambda c: (c.dev_mean, -c.idx))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> GEPAResult:
        d = dict(d)
        d["pool"] = [PoolEntry(**e) for e in d["pool"]]
        d["log"] = [ProposalRecord(**r) for r in d["log"]]
        d["iteration_stats"] = [IterationStats(**s) for s in d.get("iteration_stats", [])]
        return GEPAResult(**d)


def build_result(state: SearchState, k: int, seed: int, budget_total: int, accounting: str,
                 same_template_in_group: bool = False, leave_one_untemplated: bool = False,
                 policy_version: int = 0, solved_at: float = 1.0) -> GEPAResult:
    """Set cover + assignment (drawn with `random.Random(f"assign:{seed}")`) over a finished search state."""
    pool = state.pool
    cover = greedy_set_cover(pool.matrix(), solved_at)
    assignment = assign_templates(pool, cover, state.dev_ids, state.feedback_ids, k, random.Random(f"assign:{seed}"),
                                  same_template_in_group, leave_one_untemplated, solved_at)
    entries = [PoolEntry(c.idx, c.template, c.parent, c.iteration, c.dev_mean,
                         dict(zip(state.dev_ids, c.dev_scores, strict=True)), c.metric_calls_at_discovery) for c in pool.candidates]
    fronts = {pid: sorted(f) for pid, f in zip(state.dev_ids, instance_fronts(pool.matrix()), strict=True)}
    return GEPAResult(assignment=assignment, pool=entries, cover=cover, fronts=fronts, dev_ids=list(state.dev_ids),
                      feedback_ids=list(state.feedback_ids), log=[ProposalRecord(**asdict(r)) for r in state.log],
                      iterations=state.iteration, metric_calls=state.metric_calls, budget_used=state.charged,
                      budget_total=budget_total, accounting=accounting, stop_reason=state.stop_reason,
                      counters=dict(state.counters), policy_version=policy_version, wall_s=state.wall_s,
                      iteration_stats=[IterationStats(**asdict(s)) for s in state.iteration_stats])
