"""The trainer's side of a GEPA round (p2o.train.gepa_round): the job it submits and the endpoints it registers.

The service side (job validation, search, result records) is tested in tests/p2o/gepa; here the client is a
`RecordingClient` that keeps the submitted spec, and the spec is checked the way the service reads it.
"""
from __future__ import annotations

from pathlib import Path

from p2o.algo.hard_samples import HardStore
from p2o.config import load_config
from p2o.data.problem import Problem
from p2o.gepa.service.protocol import GEPAJobSpec, job_section
from p2o.train.gepa_round import ServiceGEPARound, endpoint_args


class RecordingClient:
    def __init__(self):
        self.specs: list[GEPAJobSpec] = []

    def submit(self, spec: GEPAJobSpec) -> str:
        self.specs.append(spec)
        return f"job-{len(self.specs)}"


def _hard() -> HardStore:
    hard = HardStore()
    hard.add(Problem("p1", "What is 3 + 4?", "7"), 0, [0.0, 0.0], ["\\boxed{3}", "\\boxed{5}"])
    hard.add(Problem("p2", "What is 1 + 1?", "2"), 0, [1.0, 0.0], ["\\boxed{2}", "no idea"])
    return hard


def test_self_ref_job_points_at_the_reflection_gateway(tmp_path: Path):
    cfg = load_config(None, ["reflection.mode=self", "p2o.gepa_mode=sync"])
    client = RecordingClient()
    gepa = ServiceGEPARound(cfg, tmp_path, client, "http://node7:8001", "http://node7:8002")
    job = gepa.submit(_hard(), epoch=3, policy_version=12)
    (spec,) = client.specs
    assert job.job_id == "job-1" and job.epoch == 3 and job.policy_version == 12
    assert job.hard_ids == ["p1", "p2"] and isinstance(job.submitted_at, float)
    assert spec.policy_url == "http://node7:8001/v1" and spec.policy_model == "policy" and spec.policy_version == 12
    assert spec.reflection["base_url"] == "http://node7:8002/v1" and spec.reflection["model"] == "reflection"
    assert {k: v for k, v in spec.reflection.items() if k not in ("base_url", "model")} == \
        {k: v for k, v in job_section("reflection", cfg.reflection).items() if k not in ("base_url", "model")}
    assert spec.failed_responses == {"p1": ["\\boxed{3}", "\\boxed{5}"], "p2": ["no idea"]}
    assert spec.k == cfg.rollout.n and spec.idempotency_key == f"{tmp_path.resolve()}::epoch3"
    assert [p.id for p in spec.problems] == ["p1", "p2"]


def test_teacher_ref_job_keeps_the_configured_endpoint(tmp_path: Path):
    cfg = load_config(None, ["reflection.mode=teacher", "reflection.base_url=https://api.example/v1",
                             "reflection.model=teacher-1"])
    client = RecordingClient()
    ServiceGEPARound(cfg, tmp_path, client, "http://node7:8001").submit(_hard(), 0, 0)
    assert client.specs[0].reflection == job_section("reflection", cfg.reflection)


def test_endpoint_flags_name_key_variables_only_when_set(monkeypatch):
    cfg = load_config(None, ["reflection.mode=teacher", "reflection.base_url=https://api.example/v1",
                             "reflection.model=teacher-1"])
    monkeypatch.delenv(cfg.rollout.gateway_token_env, raising=False)
    monkeypatch.delenv(cfg.reflection.api_key_env, raising=False)
    assert endpoint_args(cfg, "http://h:1", None) == ["--endpoint", "policy=http://h:1/v1", "--endpoint",
                                                      "reflection=https://api.example/v1"]
    monkeypatch.setenv(cfg.rollout.gateway_token_env, "secret-a")
    monkeypatch.setenv(cfg.reflection.api_key_env, "secret-b")
    args = endpoint_args(cfg, "http://h:1", None)
    assert args == ["--endpoint", "policy=http://h:1/v1", "--endpoint-key-env",
                    f"policy={cfg.rollout.gateway_token_env}", "--endpoint", "reflection=https://api.example/v1",
                    "--endpoint-key-env", f"reflection={cfg.reflection.api_key_env}"]
    assert "secret-a" not in " ".join(args) and "secret-b" not in " ".join(args)  # names of variables, not keys
    self_ref = endpoint_args(cfg, "http://h:1", "http://h:2")  # the Self-Ref gateway wins over the base URL
    assert self_ref[4:] == ["--endpoint", "reflection=http://h:2/v1", "--endpoint-key-env",
                            f"reflection={cfg.rollout.gateway_token_env}"]
