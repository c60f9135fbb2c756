"""From problems to generation requests, and from generations to training rows.

A hard sample of the previous epoch with a template assignment gets K requests (one rollout each, template
z_k in the user turn: the generation context x+z_k); every other problem gets one request with n=K on the
plain prompt x. Every row keeps both contexts: `train_prompt_ids` (x: context distillation; x+z with
`p2o.distill=none`, the paper's "w/o context distillation" ablation) and `gen_prompt_ids` (what the rollout was
sampled from).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2o import prompts
from p2o.config import RunConfig
from p2o.data.problem import Problem
from p2o.rollout.engine import Generation, GenerationRequest, SamplingParams
from p2o.seeds import derive_seed


@dataclass
class TrainRow:
    """One rollout and everything the update needs about it."""

    problem_id: str
    group: int
    train_prompt_ids: list[int]
    gen_prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finish_reason: str
    template: str
    policy_version: int
    reward: float = 0.0
    verdict_reason: str = ""
    advantage: float = 0.0

    @property
    def templated(self) -> bool:
        return bool(self.template)

    @property
    def distilled(self) -> bool:
        """Trained on another context than the one it was sampled from (a templated row trained on x)."""
        return self.train_prompt_ids != self.gen_prompt_ids


@dataclass
class PlannedRequest:
    """A request plus what it is for: the problem's group and the template used (or '')."""

    group: int
    problem: Problem
    template: str
    request: GenerationRequest
    train_prompt_ids: list[int] = field(default_factory=list)


def plan_requests(cfg: RunConfig, tokenizer: Any, problems: list[Problem], assignment: dict[str, list[str]],
                  step: int, priority: int = 0) -> list[PlannedRequest]:
    """Generation requests for one step's problems (templated for assigned hard samples when P2O is on).

    A group is one request for its `rollout.n` responses, seeded by (rollout.seed, step, group); a problem
    assigned at least one non-empty template is K requests of one response each, seeded by (..., k). An
    assignment of empty templates only is no assignment: that group is sampled exactly as plain GRPO samples it,
    so a P2O run whose GEPA rounds keep no template reproduces the GRPO run of the same seeds."""
    r = cfg.rollout
    train_on_generation_prompt = cfg.p2o.distill == "none"  # the "w/o context distillation" ablation
    planned: list[PlannedRequest] = []

    def encode(problem: Problem, template: str = "") -> list[int]:
        msgs = prompts.messages(problem.question, template or None, cfg.prompt.user_template, cfg.prompt.system)
        ids = prompts.encode(tokenizer, msgs, cfg.model.thinking)
        if len(ids) > r.max_prompt_tokens:
            raise ValueError(f"problem {problem.id!r} (source {problem.source or '?'}): its prompt"
                             f"{' with a template' if template else ''} has {len(ids)} tokens > "
                             f"rollout.max_prompt_tokens = {r.max_prompt_tokens}")
        return ids

    for group, problem in enumerate(problems):
        x_ids = encode(problem)
        templates = assignment.get(problem.id) if cfg.p2o.enabled else None
        if templates and any(z.strip() for z in templates):
            if len(templates) != r.n:
                raise ValueError(f"assignment for problem {problem.id} has {len(templates)} templates; "
                                 f"expected rollout.n = {r.n}")
            for k, z in enumerate(templates):
                params = SamplingParams(n=1, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                        max_new_tokens=r.max_new_tokens, seed=derive_seed(r.seed, step, group, k))
                gen_ids = encode(problem, z) if z.strip() else x_ids
                planned.append(PlannedRequest(group, problem, z.strip(), GenerationRequest(
                    gen_ids, params, f"s{step}-g{group}-k{k}", priority),
                    gen_ids if train_on_generation_prompt else x_ids))
        else:
            params = SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                    max_new_tokens=r.max_new_tokens, seed=derive_seed(r.seed, step, group))
            planned.append(PlannedRequest(group, problem, "", GenerationRequest(x_ids, params, f"s{step}-g{group}",
                                                                                priority), x_ids))
    return planned


def to_rows(planned: list[PlannedRequest], generations: list[list[Generation]]) -> list[TrainRow]:
    """Training rows in (group, rollout) order from the requests and their generations."""
    if len(planned) != len(generations):
        raise ValueError(f"{len(planned)} requests but {len(generations)} generation lists")
    rows = []
    for p, gens in zip(planned, generations, strict=True):
        for g in gens:
            rows.append(TrainRow(problem_id=p.problem.id, group=p.group, train_prompt_ids=p.train_prompt_ids,
                                 gen_prompt_ids=list(g.prompt_ids), response_ids=list(g.response_ids), text=g.text,
                                 finish_reason=g.finish_reason, template=p.template,
                                 policy_version=g.policy_version))
    return rows
