"""Hard-sample mining (P2O Eq. 3) and the persisted store of hard samples.

A problem is hard when its K rollouts solve it fewer than tau times (tau counts correct rollouts of K, as
the paper's appendix and the released code read it: tau=2, K=6 means at most one correct). With
`hard_on="untemplated"` (the paper: rollouts from pi(.|x)) only untemplated rollouts are judged and the
threshold scales with their number, i.e. mean reward < tau / K; when a problem had no untemplated rollout
the judgement falls back to all rollouts. `hard_on="all"` judges every rollout (the released code).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from p2o.atomic import atomic_write_json
from p2o.data.problem import Problem


def is_hard(rewards: list[float], templated: list[bool], k: int, tau: int, hard_on: str) -> bool:
    """Hardness of one problem from its rollouts' binary rewards (reward > 0 counts as correct)."""
    if len(rewards) != len(templated) or not rewards:
        raise ValueError(f"is_hard: {len(rewards)} rewards vs {len(templated)} template flags")
    if hard_on == "untemplated" and not all(templated):
        judged = [r for r, t in zip(rewards, templated, strict=True) if not t]
    elif hard_on in ("untemplated", "all"):
        judged = rewards
    else:
        raise ValueError(f"p2o.hard_on: got {hard_on!r}; expected untemplated or all")
    correct = sum(1 for r in judged if r > 0)
    return correct * k < tau * len(judged)


@dataclass
class HardSample:
    """A hard problem of an epoch with evidence for GEPA's reflection (failed responses, truncated)."""

    problem: Problem
    epoch: int
    num_correct: int
    num_rollouts: int
    failed_responses: list[str] = field(default_factory=list)


class HardStore:
    """Hard samples mined in the current epoch, keyed by problem id; persisted as JSON with atomic writes."""

    def __init__(self, keep_responses: int = 2, max_response_chars: int = 4000):
        self.samples: dict[str, HardSample] = {}
        self.keep_responses = keep_responses
        self.max_response_chars = max_response_chars

    def __len__(self) -> int:
        return len(self.samples)

    def __contains__(self, problem_id: str) -> bool:
        return problem_id in self.samples

    def add(self, problem: Problem, epoch: int, rewards: list[float], responses: list[str]) -> None:
        failed = [r[: self.max_response_chars] for r, x in zip(responses, rewards, strict=True) if x <= 0][: self.keep_responses]
        self.samples[problem.id] = HardSample(problem, epoch, sum(1 for x in rewards if x > 0), len(rewards), failed)

    def discard(self, problem_id: str) -> None:
        self.samples.pop(problem_id, None)

    def clear(self) -> None:
        self.samples.clear()

    def to_dict(self) -> dict:
        return {pid: {**asdict(s), "problem": s.problem.to_dict()} for pid, s in self.samples.items()}

    def load_dict(self, d: dict) -> None:
        self.samples = {pid: HardSample(**{**s, "problem": Problem.from_dict(s["problem"])}) for pid, s in d.items()}

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())
