"""A GEPA job whose requests our own servers refuse fails loudly (state `failed`, the error names the limit and the
config keys); it never scores the refusals as 0 and finishes "done" with an empty assignment (which made a whole
paper run plain GRPO: gepa.eval_max_tokens = 12288 against the gateway's old fixed 4096)."""
from __future__ import annotations

import time

import pytest
import torch

from p2o.gepa.service.jobs import JobManager
from p2o.gepa.service.protocol import GEPAJobSpec
from tests.p2o.gepa.fake_servers import FakePolicyServer, FakeReflectionServer, _Server
from tests.p2o.gepa.oracle import make_problems

pytestmark = [pytest.mark.network]


@pytest.fixture(scope="module")
def old_limit_gateway(tiny_model_dir):
    """The real policy gateway with the limit every gateway used to have: max_tokens <= 4096."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.rollout.gateway import Gateway
    from p2o.rollout.hf_engine import HFEngine
    from p2o.rollout.serving import GatewayLimits

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gw = Gateway(HFEngine(model, tok, max_batch_size=8), tok, model_name="policy",
                 limits=GatewayLimits(max_tokens=4096)).start()
    yield gw
    gw.stop()


def run_job(tmp_path, spec: GEPAJobSpec, timeout_s: float = 120.0) -> dict:
    jobs = JobManager(tmp_path / "run").start()
    try:
        job_id, _ = jobs.submit(spec)
        deadline = time.time() + timeout_s
        while jobs.status(job_id).state not in ("done", "failed", "cancelled"):
            assert time.time() < deadline, jobs.status(job_id)
            time.sleep(0.05)
        return jobs.status(job_id)
    finally:
        jobs.close()


def spec(policy_url: str, reflection_url: str, gepa: dict | None = None, reflection: dict | None = None) -> GEPAJobSpec:
    return GEPAJobSpec(problems=make_problems(8), policy_url=policy_url, policy_model="policy", k=2,
                       gepa=dict(num_parents=1, minibatch_size=2, budget_metric_calls=20, pause_poll_s=0.05,
                                 **(gepa or {})),
                       reflection=dict(base_url=reflection_url, model="reflector", retries=0, context_tokens=8192,
                                       max_tokens=512, **(reflection or {})),
                       reward=dict(workers=1))


def test_policy_gateway_refusing_eval_max_tokens_fails_the_job(tmp_path, old_limit_gateway):
    reflection = FakeReflectionServer().start()
    try:
        status = run_job(tmp_path, spec(old_limit_gateway.url, reflection.url, gepa=dict(eval_max_tokens=12288)))
    finally:
        reflection.stop()
    assert status.state == "failed", status
    err = status.error
    assert err.startswith("RequestRefused") and "HTTP 400" in err
    assert "max_tokens 12288 exceeds the gateway limit 4096" in err and "gepa.eval_max_tokens = 12288" in err
    assert "rollout.gateway_max_tokens" in err
    assert status.best_dev_score is None and status.pool_size == 0  # nothing was scored, not even as 0


def test_reflection_refusing_max_tokens_fails_the_job(tmp_path):
    policy = FakePolicyServer().start()
    reflection = _Server(lambda body: (400, {"error": {"message": f"max_tokens {body['max_tokens']} exceeds the "
                                                                  "gateway limit 256", "param": "max_tokens"}})).start()
    try:
        status = run_job(tmp_path, spec(policy.url, reflection.url))
    finally:
        policy.stop()
        reflection.stop()
    assert status.state == "failed", status
    assert "reflection.max_tokens = 512 exceeds" in status.error and "HTTP 400" in status.error


def test_reflection_context_overflow_fails_the_job(tmp_path):
    policy = FakePolicyServer().start()
    overflow = "This model's maximum context length is 4096 tokens. Please reduce the length of the messages."
    reflection = _Server(lambda body: (400, {"error": {"message": overflow}})).start()
    try:
        status = run_job(tmp_path, spec(policy.url, reflection.url))
    finally:
        policy.stop()
        reflection.stop()
    assert status.state == "failed", status
    assert status.error.startswith("PromptTooLong") and "reflection.context_tokens = 8192" in status.error
    assert len(reflection.requests) == 1  # no count to refit to: the first refusal ends the job


def test_trainer_stops_on_a_job_failed_by_a_refusal(tmp_path, old_limit_gateway):
    """Every later round would be refused alike: the run stops instead of training on without templates."""
    from p2o.config import RunConfig
    from p2o.gepa.service.client import GEPAClient, SubmittedJob
    from p2o.gepa.service.server import GEPAService
    from p2o.train.gepa_round import ServiceGEPARound

    reflection = FakeReflectionServer().start()
    svc = GEPAService(JobManager(tmp_path / "run").start()).start(port=0)
    try:
        client = GEPAClient(svc.url)
        job_id = client.submit(spec(old_limit_gateway.url, reflection.url, gepa=dict(eval_max_tokens=12288)))
        assert client.wait(job_id, timeout_s=120, poll_s=0.05).state == "failed"
        gepa = ServiceGEPARound(RunConfig(), tmp_path, client, policy_url=old_limit_gateway.url)
        with pytest.raises(RuntimeError, match="configuration error .*gepa.eval_max_tokens = 12288"):
            gepa.poll(SubmittedJob(job_id, epoch=0, policy_version=0, hard_ids=[]))
    finally:
        svc.stop()
        reflection.stop()
