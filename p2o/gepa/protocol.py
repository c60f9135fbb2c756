"""Request and response records of the GEPA service (plain dataclasses, JSON round-trip safe).

The training loop submits one `GEPAJobSpec` per epoch end:

    GEPAJobSpec(problems=hard_set, failed_responses={pid: [...]}, policy_version=v,
                policy_url=gateway.url, policy_model="p2o-policy",
                reflection=asdict(cfg.reflection), gepa=asdict(cfg.gepa), k=cfg.rollout.n,
                user_template=cfg.prompt.user_template, system=cfg.prompt.system, thinking=cfg.model.thinking,
                idempotency_key=f"{run_id}:epoch{e}")

- `policy_url`: OpenAI-compatible base URL of the current policy (our gateway; "/v1" is appended when
  missing); `policy_api_key_env`: variable, on the service's side, holding its token ('' = none).
- `reflection` / `gepa` / `reward`: field dicts of `ReflectionConfig` / `GEPAConfig` / `RewardConfig`
  (omitted fields keep their defaults; unknown fields and bad values are a `SpecError` naming the field).
- `failed_responses`: the training rollouts that made each problem hard; kept with the job for the record
  (the search scores candidates with fresh greedy evaluations of the current policy, as the authors do).
- `idempotency_key`: submitting the same key again returns the same job; with a different spec it is a
  conflict. Empty: a new job every time.

`JobStatus` is what `GET /v1/jobs/{id}` returns; `state` is one of `STATES`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from p2o.config import ConfigError, GEPAConfig, ReflectionConfig, RewardConfig, RunConfig, validate
from p2o.data.problem import Problem
from p2o.prompts import DEFAULT_USER_TEMPLATE

STATES = ("queued", "running", "paused", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")


class SpecError(ValueError):
    """A job spec problem; `field` is the dotted name of the offending field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"job spec field '{field_name}': {message}")


@dataclass
class GEPAJobSpec:
    problems: list[Problem]
    policy_url: str
    policy_model: str
    policy_version: int = 0
    failed_responses: dict[str, list[str]] = field(default_factory=dict)
    reflection: dict[str, Any] = field(default_factory=dict)
    gepa: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    k: int = 6
    user_template: str = DEFAULT_USER_TEMPLATE
    system: str = ""
    thinking: str = "off"
    idempotency_key: str = ""
    policy_api_key_env: str = ""
    same_template_in_group: bool = False
    leave_one_untemplated: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [p.to_dict() for p in self.problems]
        return d

    @staticmethod
    def from_dict(d: Any) -> GEPAJobSpec:
        if not isinstance(d, dict):
            raise SpecError("(body)", "expected a JSON object")
        known = {f.name for f in dataclasses.fields(GEPAJobSpec)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(unknown[0], f"unknown field; expected one of {', '.join(sorted(known))}")
        for name in ("problems", "policy_url", "policy_model"):
            if name not in d:
                raise SpecError(name, "missing (required)")
        if not isinstance(d["problems"], list) or not d["problems"]:
            raise SpecError("problems", "expected a non-empty list of {id, question, answer} objects")
        problems = []
        for i, p in enumerate(d["problems"]):
            try:
                problems.append(p if isinstance(p, Problem) else Problem.from_dict(p))
            except (KeyError, TypeError, AttributeError) as e:
                raise SpecError(f"problems[{i}]", f"expected an object with id, question and answer ({e!r})") from e
        spec = GEPAJobSpec(**{**d, "problems": problems})
        spec.check()
        return spec

    def check(self) -> None:
        """Field-level checks (types and ranges); raises `SpecError`."""
        if not isinstance(self.policy_url, str) or not self.policy_url.startswith(("http://", "https://")):
            raise SpecError("policy_url", f"got {self.policy_url!r}; expected an http(s) base URL")
        if not isinstance(self.k, int) or self.k < 1:
            raise SpecError("k", f"got {self.k!r}; expected an integer >= 1")
        if not isinstance(self.policy_version, int) or self.policy_version < 0:
            raise SpecError("policy_version", f"got {self.policy_version!r}; expected an integer >= 0")
        if self.thinking not in ("off", "on"):
            raise SpecError("thinking", f"got {self.thinking!r}; expected 'off' or 'on'")
        if "{question}" not in self.user_template:
            raise SpecError("user_template", "expected text containing '{question}'")
        ids = [p.id for p in self.problems]
        if len(set(ids)) != len(ids):
            raise SpecError("problems", "problem ids must be unique")
        if len(ids) < 2:
            raise SpecError("problems", "GEPA needs at least 2 hard problems (a dev and a feedback one)")
        self.configs()

    def configs(self) -> tuple[GEPAConfig, ReflectionConfig, RewardConfig]:
        """The typed, validated section configs; raises `SpecError` naming e.g. 'gepa.num_parents'."""
        run = RunConfig()
        for name, cls in (("gepa", GEPAConfig), ("reflection", ReflectionConfig), ("reward", RewardConfig)):
            given = getattr(self, name)
            if not isinstance(given, dict):
                raise SpecError(name, f"expected an object of {cls.__name__} fields")
            unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise SpecError(f"{name}.{unknown[0]}", f"unknown {cls.__name__} field")
            try:
                setattr(run, name, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), given)))
            except OmegaConfBaseException as e:
                key = getattr(e, "full_key", "") or "?"
                raise SpecError(f"{name}.{key}", str(e).splitlines()[0]) from e
            except ConfigError as e:  # a section's own checks (its __post_init__) name the full key
                raise SpecError(e.key, f"got {e.value!r}; expected {e.expected}") from e
        if not run.reflection.base_url:
            raise SpecError("reflection.base_url", "empty; expected the reflection endpoint's base URL")
        if not run.reflection.model:
            raise SpecError("reflection.model", "empty; expected the model name the endpoint serves")
        run.reflection.mode = "teacher"  # both modes look the same from here: an endpoint and a model
        try:
            validate(run)
        except ConfigError as e:
            raise SpecError(e.key, f"got {e.value!r}; expected {e.expected}") from e
        return run.gepa, run.reflection, run.reward

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON (for idempotency conflicts)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclass
class JobStatus:
    job_id: str
    state: str = "queued"
    iteration: int = 0
    budget_used: int = 0
    budget_total: int = 0
    metric_calls: int = 0
    pool_size: int = 0
    best_dev_score: float | None = None
    accepted: int = 0
    error: str = ""
    pause_reason: str = ""
    stop_reason: str = ""
    policy_version: int = 0
    idempotency_key: str = ""
    fingerprint: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> JobStatus:
        known = {f.name for f in dataclasses.fields(JobStatus)}
        return JobStatus(**{k: v for k, v in d.items() if k in known})
