"""The problem record shared by datasets, rollouts, GEPA and evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One math problem: `question` is shown to the policy, `answer` is the gold answer given to the verifier."""

    id: str
    question: str
    answer: str
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "answer": self.answer, "source": self.source,
                "meta": dict(self.meta)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Problem:
        return Problem(id=str(d["id"]), question=str(d["question"]), answer=str(d["answer"]),
                       source=str(d.get("source", "")), meta=dict(d.get("meta") or {}))
