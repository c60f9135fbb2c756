"""Scripted stand-ins for the two models GEPA talks to, shared by the GEPA tests.

- `OracleScores`: the task model as a function of the template text. Problem i belongs to topic
  TOPICS[i % len(TOPICS)]; a template solves it when it names that topic and names at most
  `capacity` topics (so no single template can cover everything and set cover has work to do).
- `scripted_reflection(prompt)`: a deterministic reflection answer computed from the real meta-prompt:
  it reads the current template and the failed examples' topics and proposes the template with the
  first missing topic added (the oldest topic dropped beyond capacity), inside a fenced block.
"""
from __future__ import annotations

import re

from p2o.data.problem import Problem
from p2o.gepa.core.evaluate import EvalItem, EvalOutcome

TOPICS = ["kiwi", "mango", "plum", "fig", "lime", "pear"]
CAPACITY = 3


def make_problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"Question {i} about the {TOPICS[i % len(TOPICS)]} topic.",
                    answer=str(7 * i + 1)) for i in range(n)]


def topics_in(template: str) -> list[str]:
    return [t for t in re.findall(r"[a-z]+", template.lower()) if t in TOPICS]


def topic_of(question: str) -> str:
    return re.search(r"the (\w+) topic", question).group(1)


def solves(template: str, question: str) -> bool:
    named = set(topics_in(template))
    return topic_of(question) in named and len(named) <= CAPACITY


def response_for(template: str, problem: Problem) -> str:
    answer = problem.answer if solves(template, problem.question) else "0"
    return f"Some reasoning about {topic_of(problem.question)}. \\boxed{{{answer}}}"


class OracleEvaluator:
    """In-process evaluator with scripted scores; records every wave it receives."""

    def __init__(self):
        self.waves: list[int] = []

    def evaluate(self, items: list[EvalItem]) -> list[EvalOutcome]:
        self.waves.append(len(items))
        out = []
        for it in items:
            ok = solves(it.template, it.problem.question)
            out.append(EvalOutcome(score=1.0 if ok else 0.0, response=response_for(it.template, it.problem),
                                   extracted=it.problem.answer if ok else "0",
                                   reason="equivalent" if ok else "mismatch"))
        return out


def scripted_template(prompt: str) -> str:
    current = re.search(r"```\n(.*?)\n```", prompt, re.DOTALL).group(1)
    have = topics_in(current)
    failing = []
    for block in prompt.split("# Example ")[1:]:
        if "is incorrect" in block or "No final answer" in block:
            failing.append(topic_of(block))
    missing = [t for t in failing if t not in have]
    new = have + missing[:1]
    new = new[-CAPACITY:]
    return "Hints: " + ", ".join(new) if new else "Think carefully."


def scripted_reflection(prompt: str) -> str:
    return f"<think>reading the feedback</think>Here is the new instruction:\n```text\n{scripted_template(prompt)}\n```"
