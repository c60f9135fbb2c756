"""GEPA's sampled requests carry seeds derived from the round and the request, so a round's samples do not depend
on the order its concurrent requests arrive in: the seeds on the wire (fake HTTP servers), and the real gateway
over the tiny model answering the same evaluations in opposite orders with the same samples."""
from __future__ import annotations

import hashlib

import pytest

from p2o.config import GEPAConfig, ReflectionConfig, ReflectionMode, RewardConfig
from p2o.data.problem import Problem
from p2o.gepa.adapters.endpoints import Endpoints
from p2o.gepa.adapters.policy_evaluator import PolicyEvaluator
from p2o.gepa.adapters.reflection_client import ReflectionClient
from p2o.gepa.core.evaluate import EvalItem
from p2o.gepa.service.jobs import default_evaluator, default_reflector, round_seed
from p2o.gepa.service.protocol import GEPAJobSpec
from p2o.reward import Verifier
from p2o.seeds import derive_seed
from tests.p2o.gepa.fake_servers import _Server, chat_response

pytestmark = pytest.mark.network


def test_derive_seed_is_a_31_bit_hash_of_its_parts():
    digest = hashlib.sha256(b"(7, 'problem-3')").digest()
    assert derive_seed(7, "problem-3") == int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    seeds = {derive_seed(7, f"p{i}") for i in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2 ** 31 for s in seeds)
    assert derive_seed(7, "a", 1) != derive_seed(7, "a1") and derive_seed(1, 2) != derive_seed(12)
    assert derive_seed(1, 2) != derive_seed("1", "2")  # parts keep their type


def test_evaluator_sends_one_seed_per_problem_for_every_candidate():
    server = _Server(lambda body: (200, chat_response("\\boxed{4}", body["model"]))).start()
    items = [EvalItem(z, Problem(pid, f"What is 2+2? ({pid})", "4")) for z in ("", "Add.") for pid in ("a", "b")]
    try:
        with Verifier(RewardConfig(workers=1)) as verifier:
            for seed in (11, None):
                ev = PolicyEvaluator(server.url, "policy", verifier, temperature=1.0, concurrency=4, seed=seed)
                ev.evaluate(items)
                ev.close()
    finally:
        server.stop()
    seeded, unseeded = server.requests[:4], server.requests[4:]
    for body in seeded:
        pid = "a" if "(a)" in body["messages"][-1]["content"] else "b"
        assert body["seed"] == derive_seed(11, pid)  # the template is not part of it: common random numbers
    assert len({b["seed"] for b in seeded}) == 2
    assert all("seed" not in b for b in unseeded)


def test_reflection_client_seeds_by_prompt_and_repeats():
    server = _Server(lambda body: (200, chat_response("```\nAdd.\n```", body["model"]))).start()
    try:
        client = ReflectionClient(ReflectionConfig(base_url=server.url, model="r", timeout_s=5.0), seed=5)
        for prompt in ("improve A", "improve B", "improve A"):
            client(prompt)
        unseeded = ReflectionClient(ReflectionConfig(base_url=server.url, model="r", timeout_s=5.0))
        unseeded("improve A")
    finally:
        server.stop()
    seeds = [b.get("seed") for b in server.requests]
    a = hashlib.sha256(b"improve A").hexdigest()
    assert seeds[0] == derive_seed(5, a, 0) and seeds[2] == derive_seed(5, a, 1)  # a repeat gets the next one
    assert len(set(seeds[:3])) == 3 and seeds[3] is None


def test_service_seeds_each_round_and_only_the_self_ref_model():
    gepa = GEPAConfig(seed=3)
    spec = GEPAJobSpec(problems=[Problem("a", "q", "1")], policy_url="http://127.0.0.1:1", policy_model="m",
                       policy_version=4)
    assert round_seed(spec, gepa) == derive_seed("gepa-round", 3, 4)
    later = GEPAJobSpec(problems=spec.problems, policy_url=spec.policy_url, policy_model="m", policy_version=5)
    assert round_seed(later, gepa) != round_seed(spec, gepa)
    ev = default_evaluator(spec, gepa, RewardConfig(workers=1), Endpoints())
    try:
        assert ev.seed == round_seed(spec, gepa)
    finally:
        ev.close()
    base = dict(base_url="http://127.0.0.1:1", model="m", context_tokens=4096, max_tokens=64)
    self_ref = default_reflector(spec, gepa, ReflectionConfig(**base), Endpoints())
    teacher = default_reflector(spec, gepa, ReflectionConfig(mode=ReflectionMode.TEACHER, **base), Endpoints())
    assert self_ref.complete.seed == round_seed(spec, gepa) and teacher.complete.seed is None


@pytest.fixture(scope="module")
def sampling_gateway(tiny_model_dir):
    """The real gateway serving the random tiny model (HF engine): samples at T=1 are all different text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.rollout.gateway import Gateway
    from p2o.rollout.hf_engine import HFEngine

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gw = Gateway(HFEngine(model, tok, max_batch_size=8, seed=0), tok, model_name="policy").start()
    yield gw
    gw.stop()


def test_seeded_evaluations_do_not_depend_on_request_order(sampling_gateway):
    items = [EvalItem(z, Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i))) for i in range(4) for z in ("", "Z.")]

    def responses(order, seed):
        with Verifier(RewardConfig(workers=1)) as verifier:
            ev = PolicyEvaluator(sampling_gateway.url, "policy", verifier, temperature=1.0, max_tokens=6,
                                 concurrency=1, seed=seed)
            try:
                outs = ev.evaluate([items[k] for k in order])
            finally:
                ev.close()
        return {(items[k].template, items[k].problem.id): o.response for k, o in zip(order, outs, strict=True)}

    forward, backward = list(range(len(items))), list(reversed(range(len(items))))
    assert responses(forward, seed=9) == responses(backward, seed=9)
    # the control: without seeds the engine hands out seeds in arrival order, and the samples change with it
    assert responses(forward, seed=None) != responses(backward, seed=None)
