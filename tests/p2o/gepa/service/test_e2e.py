"""A full GEPA job over real HTTP: the real gateway serving a real tiny policy, a scripted reflection endpoint.

The policy is the tiny Qwen3 fine-tuned to answer \\boxed{7} when the prompt contains "carefully" and
\\boxed{3} otherwise (`tiny_policy.py`), so every score the search sees comes from real greedy decoding
through the gateway and the real verifier, and its expected value is still known: problems with gold
answer 7 are solved exactly by templates containing "carefully".
"""
from __future__ import annotations

import logging

import pytest
import torch

from p2o.data.problem import Problem
from p2o.gepa.service.client import GEPAClient
from p2o.gepa.service.jobs import JobManager
from p2o.gepa.service.protocol import GEPAJobSpec
from p2o.gepa.service.server import GEPAService
from tests.conftest import CACHE_DIR
from tests.p2o.gepa.fake_servers import CyclingReflectionServer
from tests.p2o.gepa.tiny_policy import MAGIC, cached_tiny_policy, question

pytestmark = [pytest.mark.network, pytest.mark.slow]
log = logging.getLogger(__name__)

PROPOSALS = ["Be brief.", "Work carefully.", "Verify the final answer.", "Think carefully, step by step.",
             "Check the units.", "Compute the value slowly and carefully."]


def solves(template: str, answer: str) -> bool:
    return (MAGIC in template.lower()) == (answer == "7")


@pytest.fixture(scope="module")
def gateway(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.rollout.gateway import Gateway
    from p2o.rollout.hf_engine import HFEngine

    model_dir = cached_tiny_policy(tiny_model_dir, CACHE_DIR)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gw = Gateway(HFEngine(model, tok, max_batch_size=32), tok, model_name="tiny-policy").start()
    yield gw
    gw.stop()


def test_full_job_over_http(gateway, tmp_path):
    reflection = CyclingReflectionServer(PROPOSALS).start()
    svc = GEPAService(JobManager(tmp_path / "run").start()).start(port=0)
    try:
        problems = [Problem(f"h{i}", question(i), "7" if i % 3 else "3") for i in range(18)]
        answers = {p.id: p.answer for p in problems}
        spec = GEPAJobSpec(problems=problems, policy_url=gateway.url, policy_model="tiny-policy", policy_version=0,
                           k=6, idempotency_key="e2e",
                           gepa=dict(num_parents=3, minibatch_size=3, budget_metric_calls=80, seed=1,
                                     eval_max_tokens=8, eval_concurrency=16),
                           reflection=dict(base_url=reflection.url, model="reflector", context_tokens=4096,
                                           max_tokens=256, retries=1, backoff_base_s=0.01),
                           reward=dict(workers=1))
        client = GEPAClient(svc.url)
        job = client.submit(spec)
        final = client.wait(job, timeout_s=240, poll_s=0.1)
        assert final.state == "done", final
        res = client.result(job)
        dev = res.dev_ids
        # budget: honest accounting equals the requests the gateway actually served
        served = gateway.scheduler.counters["requests_evaluation"]
        assert res.metric_calls == res.budget_used == served
        accepted = [r for r in res.log if r.status == "accepted"]
        per_log = sum(len(r.minibatch) + len(r.child_scores) for r in res.log)
        assert res.metric_calls == len(dev) + per_log + len(dev) * len(accepted)
        assert res.budget_used >= res.budget_total - 2 * 3 and res.stop_reason == "budget"
        # every score is what real greedy decoding + the verifier give for this policy
        for r in res.log:
            parent = res.pool[r.parent].template
            assert r.parent_scores == [float(solves(parent, answers[m])) for m in r.minibatch]
            if r.child_scores:
                assert r.child_scores == [float(solves(r.child_template, answers[m])) for m in r.minibatch]
                assert (r.status == "accepted") == (sum(r.child_scores) > sum(r.parent_scores))
        # pool growth: accepted children joined with their dev scores
        assert len(res.pool) == 1 + len(accepted) >= 2
        for c in res.pool:
            assert c.dev_scores == {d: float(solves(c.template, answers[d])) for d in dev}
        # fronts: best score per dev instance, ties included
        for d in dev:
            best = max(c.dev_scores[d] for c in res.pool)
            assert res.fronts[d] == [c.idx for c in res.pool if c.dev_scores[d] == best]
        # assignment: K templates per hard sample; covered dev instances only get templates that solve them
        assert set(res.assignment) == set(answers) and all(len(v) == 6 for v in res.assignment.values())
        covered = {d for c in res.cover for d, s in res.pool[c].dev_scores.items() if s == 1.0}
        cover_templates = {res.pool[c].template for c in res.cover}
        for pid, temps in res.assignment.items():
            assert set(temps) <= cover_templates
            if pid in covered:
                assert all(solves(t, answers[pid]) for t in temps)
        assert covered == set(dev)  # the seed solves the 3s, a "carefully" child the 7s
        log.info("e2e GEPA: %d iterations, %d metric calls, %.2f s; per iteration: %s", res.iterations,
                 res.metric_calls, res.wall_s, res.iteration_stats)
    finally:
        svc.stop()
        reflection.stop()
