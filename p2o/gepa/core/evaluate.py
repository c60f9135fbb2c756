"""The `Evaluator` protocol: score (template, problem) pairs with the current policy.

One evaluated pair is one metric call. An evaluator receives a whole wave of pairs at once and should
issue them concurrently (bounded). For every pair it returns an `EvalOutcome`:

- a scored outcome (`error == ""`): `score` in [0, 1] (fraction of correct samples), the first response
  text, the verifier's extracted answer and reason;
- an unavailable outcome (`error != ""`): the task-model endpoint could not be reached or failed with a
  server error. The search pauses, reports `error` as the pause reason, and retries only those pairs.

A request the endpoint refuses for good (a 4xx other than auth and rate limits: max_tokens or the prompt
over the gateway's limit, an unknown model) is a configuration error, never a score: the evaluator raises
`RequestRefused`, the search does not catch it, and the GEPA job fails with the message (scoring refusals
as 0 once turned a whole run into plain GRPO without a word). Implementations:
`p2o.gepa.adapters.policy_evaluator.PolicyEvaluator` (OpenAI-compatible gateway + `p2o.reward.Verifier`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from p2o.data.problem import Problem


class RequestRefused(RuntimeError):
    """An endpoint refused a request for good (a limit or setting that does not fit): a configuration error.
    The message names the limit and the config keys that size the request; the job fails with it."""


def is_refusal(job_error: str) -> bool:
    """Whether a failed job's error ("<exception type>: <message>", as the job status reports it) is a
    `RequestRefused` (or its `PromptTooLong`): a configuration error that every later round would repeat."""
    return job_error.startswith(("RequestRefused:", "PromptTooLong:"))


@dataclass
class EvalItem:
    template: str
    problem: Problem


@dataclass
class EvalOutcome:
    score: float = 0.0
    response: str = ""
    extracted: str | None = None
    reason: str = ""
    policy_version: int | None = None
    error: str = ""
    """Non-empty: the pair was not evaluated (endpoint unavailable); the search retries it."""

    @property
    def ok(self) -> bool:
        return not self.error


class Evaluator(Protocol):
    def evaluate(self, items: Sequence[EvalItem]) -> list[EvalOutcome]:
        """One outcome per item, in order."""
        ...
