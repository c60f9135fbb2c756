"""Request and response records of the GEPA service (plain dataclasses, JSON round-trip safe).

The training loop submits one `GEPAJobSpec` per epoch end:

    GEPAJobSpec(problems=hard_set, failed_responses={pid: [...]}, policy_version=v,
                policy_url=gateway.url, policy_model="p2o-policy",
                reflection=asdict(cfg.reflection), gepa=asdict(cfg.gepa), k=cfg.rollout.n,
                user_template=cfg.prompt.user_template, system=cfg.prompt.system, thinking=cfg.model.thinking,
                idempotency_key=f"{run_id}:epoch{e}")

- `policy_url`: OpenAI-compatible base URL of the current policy (our gateway; "/v1" is appended when
  missing). Credentials are never part of a job: the service sends a key only to the URLs of its own
  endpoint table (`p2o.gepa.adapters.endpoints`), so `reflection.api_key_env` and `gepa.token_env` are refused.
- `reflection` / `gepa` / `reward`: field dicts of `ReflectionConfig` / `GEPAConfig` / `RewardConfig`
  (omitted fields keep their defaults; unknown fields and bad values are a `SpecError` naming the field).
  The trainer-side fields `gepa.service_url` and `gepa.poll_interval_s` are accepted and unused.
- `failed_responses`: the training rollouts that made each problem hard (the trainer sends their tails,
  `FAILED_RESPONSE_TAIL_CHARS`); kept with the job for the record (the search scores candidates with
  fresh greedy evaluations of the current policy, as the authors do).
- `idempotency_key`: submitting the same key again returns the same job; with a different spec it is a
  conflict. Empty: a new job every time.

Every size and budget is bounded by the service's `JobLimits` (a `SpecError` naming the field and the
limit), every text must be valid Unicode (no lone surrogates), and every field has its JSON type (no
coercion: a number where a string is expected is refused).

`JobStatus` is what `GET /v1/jobs/{id}` returns; `state` is one of `STATES`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from p2o.config import ConfigError, GEPAConfig, ReflectionConfig, RewardConfig, RunConfig, validate
from p2o.data.problem import Problem
from p2o.prompts import DEFAULT_USER_TEMPLATE

STATES = ("queued", "running", "paused", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
FAILED_RESPONSE_TAIL_CHARS = 2000
"""The trainer sends the last this-many characters of each failed response (the part with the answer)."""
CREDENTIAL_FIELDS = {"reflection.api_key_env", "gepa.token_env"}
"""Config fields naming credentials: refused in a job (the service's endpoint table chooses keys)."""


def job_section(name: str, section: Any) -> dict[str, Any]:
    """A config section (`reflection`, `gepa`, `reward`) as a job spec field: its field dict without the fields
    that name credentials (`CREDENTIAL_FIELDS`), which a job may not carry."""
    return {k: v for k, v in dataclasses.asdict(section).items() if f"{name}.{k}" not in CREDENTIAL_FIELDS}


@dataclass(frozen=True)
class JobLimits:
    """What one job may ask of the service; larger values are a `SpecError` (HTTP 400) naming the field."""

    max_problems: int = 20_000
    max_k: int = 64
    max_assignment_slots: int = 400_000
    """problems x k: the size of the result's assignment."""
    max_id_chars: int = 256
    max_question_chars: int = 65_536
    max_answer_chars: int = 4096
    max_responses_per_problem: int = 64
    max_response_chars: int = 65_536
    max_template_chars: int = 16_384
    """user_template, system, each seed template, gepa.max_template_chars."""
    max_seed_templates: int = 64
    max_budget_metric_calls: int = 2_000_000
    max_eval_n: int = 64
    max_eval_max_tokens: int = 65_536
    max_concurrency: int = 512
    """gepa.eval_concurrency and reflection.concurrency."""
    max_parents: int = 1024
    """gepa.num_parents and gepa.minibatch_size."""
    max_reflection_tokens: int = 1_048_576
    """reflection.context_tokens and reflection.max_tokens."""
    max_retries: int = 20
    max_seconds: float = 7 * 24 * 3600.0
    """Any duration field (timeouts, backoff, cool-down, wall-time limit)."""
    max_name_chars: int = 2048
    """URLs, model names, the idempotency key, short strings."""


DEFAULT_LIMITS = JobLimits()


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
    same_template_in_group: bool = False
    leave_one_untemplated: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [p.to_dict() for p in self.problems]
        return d

    @staticmethod
    def from_dict(d: Any, limits: JobLimits = DEFAULT_LIMITS) -> GEPAJobSpec:
        """A checked spec from decoded JSON; `SpecError` naming the first bad field (no type coercion)."""
        if not isinstance(d, dict):
            raise SpecError("(body)", "expected a JSON object")
        known = {f.name for f in dataclasses.fields(GEPAJobSpec)}
        unknown = sorted(set(d) - known)
        if unknown:
            hint = " (credentials are the service's: see gepa-serve --endpoint-key-env)" \
                if "key" in unknown[0] else ""
            raise SpecError(unknown[0], f"unknown field{hint}; expected one of {', '.join(sorted(known))}")
        for name in ("problems", "policy_url", "policy_model"):
            if name not in d:
                raise SpecError(name, "missing (required)")
        types = {f.name: f.type for f in dataclasses.fields(GEPAJobSpec)}
        expect = {"str": str, "int": int, "bool": bool}
        for name, value in d.items():
            want = expect.get(str(types[name]))
            if want is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
                raise SpecError(name, f"expected {want.__name__}, got {_kind(value)}")
        if not isinstance(d["problems"], list) or not d["problems"]:
            raise SpecError("problems", "expected a non-empty list of {id, question, answer} objects")
        if len(d["problems"]) > limits.max_problems:
            raise SpecError("problems", f"{len(d['problems'])} problems; the service accepts at most "
                                        f"{limits.max_problems} per job")
        problems = [p if isinstance(p, Problem) else _problem(i, p) for i, p in enumerate(d["problems"])]
        spec = GEPAJobSpec(**{**d, "problems": problems})
        spec.check(limits)
        return spec

    def check(self, limits: JobLimits = DEFAULT_LIMITS) -> None:
        """Field-level checks (types, ranges, sizes, valid text); raises `SpecError`."""
        lim = limits
        if not isinstance(self.policy_url, str) or not self.policy_url.startswith(("http://", "https://")):
            raise SpecError("policy_url", f"got {self.policy_url!r}; expected an http(s) base URL")
        for name in ("policy_url", "policy_model", "idempotency_key", "thinking"):
            _bounded_text(name, getattr(self, name), lim.max_name_chars)
        if not isinstance(self.k, int) or isinstance(self.k, bool) or not 1 <= self.k <= lim.max_k:
            raise SpecError("k", f"got {self.k!r}; expected an integer in [1, {lim.max_k}]")
        if not isinstance(self.policy_version, int) or self.policy_version < 0:
            raise SpecError("policy_version", f"got {self.policy_version!r}; expected an integer >= 0")
        if self.thinking not in ("off", "on"):
            raise SpecError("thinking", f"got {self.thinking!r}; expected 'off' or 'on'")
        _bounded_text("user_template", self.user_template, lim.max_template_chars)
        _bounded_text("system", self.system, lim.max_template_chars)
        if "{question}" not in self.user_template:
            raise SpecError("user_template", "expected text containing '{question}'")
        if len(self.problems) > lim.max_problems:
            raise SpecError("problems", f"{len(self.problems)} problems; at most {lim.max_problems} per job")
        if len(self.problems) * self.k > lim.max_assignment_slots:
            raise SpecError("k", f"{len(self.problems)} problems x k={self.k} template slots exceed the "
                                 f"service's limit of {lim.max_assignment_slots}")
        for i, p in enumerate(self.problems):
            _bounded_text(f"problems[{i}].id", p.id, lim.max_id_chars)
            _bounded_text(f"problems[{i}].question", p.question, lim.max_question_chars)
            _bounded_text(f"problems[{i}].answer", p.answer, lim.max_answer_chars)
        ids = [p.id for p in self.problems]
        if len(set(ids)) != len(ids):
            raise SpecError("problems", "problem ids must be unique")
        if len(ids) < 2:
            raise SpecError("problems", "GEPA needs at least 2 hard problems (a dev and a feedback one)")
        self._check_responses(set(ids), lim)
        for name in ("same_template_in_group", "leave_one_untemplated"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(name, f"expected true or false, got {_kind(getattr(self, name))}")
        gepa, reflection, _ = self.configs()
        self._check_budgets(gepa, reflection, lim)

    def _check_responses(self, ids: set[str], lim: JobLimits) -> None:
        if not isinstance(self.failed_responses, dict):
            raise SpecError("failed_responses", "expected an object {problem id: [response, ...]}")
        for pid, responses in self.failed_responses.items():
            where = f"failed_responses.{pid}"
            if pid not in ids:
                raise SpecError(where, "not the id of a problem of this job")
            if not isinstance(responses, list) or len(responses) > lim.max_responses_per_problem:
                raise SpecError(where, f"expected a list of at most {lim.max_responses_per_problem} strings")
            for j, r in enumerate(responses):
                _bounded_text(f"{where}[{j}]", r, lim.max_response_chars)

    def _check_budgets(self, gepa: GEPAConfig, reflection: ReflectionConfig, lim: JobLimits) -> None:
        bounds: list[tuple[str, Any, float, float]] = [
            ("gepa.budget_metric_calls", gepa.budget_metric_calls, 1, lim.max_budget_metric_calls),
            ("gepa.dev_size", gepa.dev_size, 1, lim.max_problems),
            ("gepa.num_parents", gepa.num_parents, 1, lim.max_parents),
            ("gepa.minibatch_size", gepa.minibatch_size, 1, lim.max_parents),
            ("gepa.eval_n", gepa.eval_n, 1, lim.max_eval_n),
            ("gepa.eval_max_tokens", gepa.eval_max_tokens, 1, lim.max_eval_max_tokens),
            ("gepa.eval_concurrency", gepa.eval_concurrency, 1, lim.max_concurrency),
            ("gepa.max_template_chars", gepa.max_template_chars, 1, lim.max_template_chars),
            ("gepa.no_improvement_iters", gepa.no_improvement_iters, 0, lim.max_budget_metric_calls),
            ("gepa.max_wall_s", gepa.max_wall_s, 0, lim.max_seconds),
            ("gepa.eval_timeout_s", gepa.eval_timeout_s, 0, lim.max_seconds),
            ("gepa.pause_poll_s", gepa.pause_poll_s, 0, lim.max_seconds),
            ("reflection.concurrency", reflection.concurrency, 1, lim.max_concurrency),
            ("reflection.max_tokens", reflection.max_tokens, 1, lim.max_reflection_tokens),
            # 0: not derived by the submitter; the service uses its default (`jobs.default_reflector`)
            ("reflection.context_tokens", reflection.context_tokens, 0, lim.max_reflection_tokens),
            ("reflection.retries", reflection.retries, 0, lim.max_retries),
            ("reflection.timeout_s", reflection.timeout_s, 0, lim.max_seconds),
            ("reflection.backoff_base_s", reflection.backoff_base_s, 0, lim.max_seconds),
            ("reflection.backoff_max_s", reflection.backoff_max_s, 0, lim.max_seconds),
            ("reflection.breaker_cooldown_s", reflection.breaker_cooldown_s, 0, lim.max_seconds),
        ]
        for name, value, lo, hi in bounds:
            if not lo <= value <= hi:  # false for NaN too
                raise SpecError(name, f"got {value!r}; the service accepts values in [{lo:g}, {hi:g}]")
        if len(gepa.seed_templates) > lim.max_seed_templates:
            raise SpecError("gepa.seed_templates", f"{len(gepa.seed_templates)} templates; at most "
                                                   f"{lim.max_seed_templates}")
        for i, t in enumerate(gepa.seed_templates):
            _bounded_text(f"gepa.seed_templates[{i}]", t, lim.max_template_chars)
        for name, value in (("reflection.base_url", reflection.base_url), ("reflection.model", reflection.model),
                            ("reflection.priority", reflection.priority)):
            _bounded_text(name, value, lim.max_name_chars)

    def configs(self) -> tuple[GEPAConfig, ReflectionConfig, RewardConfig]:
        """The typed, validated section configs; raises `SpecError` naming e.g. 'gepa.num_parents'."""
        run = RunConfig()
        for name, cls in (("gepa", GEPAConfig), ("reflection", ReflectionConfig), ("reward", RewardConfig)):
            given = getattr(self, name)
            if not isinstance(given, dict):
                raise SpecError(name, f"expected an object of {cls.__name__} fields")
            for key in given:
                if f"{name}.{key}" in CREDENTIAL_FIELDS:
                    raise SpecError(f"{name}.{key}", "credentials are not chosen by a job: the service sends "
                                                     "keys only to its own endpoints (gepa-serve --endpoint, "
                                                     "--endpoint-key-env)")
            unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise SpecError(f"{name}.{unknown[0]}", f"unknown {cls.__name__} field")
            declared = {f.name: str(f.type) for f in dataclasses.fields(cls)}
            for key, value in given.items():
                _check_type(f"{name}.{key}", value, declared[key])
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
    checkpoints: int = 0
    """Search states written so far (a job that wrote one never silently starts over)."""
    notice: str = ""
    """The last recovery or retry that happened to this job (e.g. resumed from the previous copy of a file)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> JobStatus:
        if not isinstance(d, dict) or not isinstance(d.get("job_id"), str) or d.get("state") not in STATES:
            raise ValueError("not a job status (job_id and state missing or invalid)")
        known = {f.name for f in dataclasses.fields(JobStatus)}
        return JobStatus(**{k: v for k, v in d.items() if k in known})


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null", str: "a string"}.get(
        type(value), f"a number ({value!r})" if isinstance(value, (int, float)) else type(value).__name__)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _bounded_text(name: str, value: Any, max_chars: int) -> None:
    """`value` is a string of at most `max_chars` characters of valid Unicode; SpecError naming `name` otherwise."""
    if not isinstance(value, str):
        raise SpecError(name, f"expected a string, got {_kind(value)}")
    if len(value) > max_chars:
        raise SpecError(name, f"{len(value)} characters; the service accepts at most {max_chars}")
    m = _LONE_SURROGATE.search(value)
    if m:
        raise SpecError(name, f"invalid Unicode: lone surrogate U+{ord(m.group()):04X} at character {m.start()}")


_JSON_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_type(name: str, value: Any, declared: str) -> None:
    """`value` has the JSON type of the config field type `declared` (no coercion); SpecError otherwise."""
    if declared.startswith("list["):
        if not isinstance(value, list):
            raise SpecError(name, f"expected a list, got {_kind(value)}")
        for i, item in enumerate(value):
            _check_type(f"{name}[{i}]", item, declared[5:-1])
        return
    want = _JSON_TYPES.get(declared)
    if want is None:
        return
    if not isinstance(value, want) or (isinstance(value, bool) and declared != "bool"):
        raise SpecError(name, f"expected {declared}, got {_kind(value)}")


def _problem(i: int, p: Any) -> Problem:
    """A Problem from its JSON object, strictly typed; SpecError naming `problems[i].<field>` otherwise."""
    if not isinstance(p, dict):
        raise SpecError(f"problems[{i}]", f"expected an object with id, question and answer, got {_kind(p)}")
    for key in ("id", "question", "answer"):
        if key not in p:
            raise SpecError(f"problems[{i}].{key}", "missing (required)")
        if not isinstance(p[key], str):
            raise SpecError(f"problems[{i}].{key}", f"expected a string, got {_kind(p[key])}")
    unknown = sorted(set(p) - {"id", "question", "answer", "source", "meta"})
    if unknown:
        raise SpecError(f"problems[{i}].{unknown[0]}", "unknown field; expected id, question, answer, source, meta")
    if not isinstance(p.get("source", ""), str):
        raise SpecError(f"problems[{i}].source", f"expected a string, got {_kind(p['source'])}")
    if not isinstance(p.get("meta") or {}, dict):
        raise SpecError(f"problems[{i}].meta", f"expected an object, got {_kind(p['meta'])}")
    return Problem.from_dict(p)
