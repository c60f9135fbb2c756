"""Each paper config's GEPA requests go through the real gateways with the config's own limits.

The paper configs (configs/qwen3_4b_p2o_*.yaml, configs/scaling/*.yaml) are loaded as they ship; only the model
is shrunk (a tiny Qwen3 of the same family and context, fine-tuned to answer \\boxed{7} when the prompt says
"carefully" and \\boxed{3} otherwise: `tiny_policy.py`; fp32, TP 1, the HF engine since this machine has no CUDA
for vLLM) and the data (a handful of problems). The gateways, engines and GEPA adapters are built by the same
functions the training run uses (`build_engine`, `build_gateway` with `p2o.limits` sizes, `reflection_rollout`,
the GEPA service's `default_evaluator` / `default_reflector` over a job spec like the trainer's). Then one
scoring wave (max_tokens = gepa.eval_max_tokens = 12288, the authors' user prompt) and one reflection call
(a meta-prompt fitted to reflection.context_tokens) must be served, and the scores must make an accepted child
possible. With the policy gateway's old fixed limit the same scoring is refused, as it was for every paper run.
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest

from p2o.config import load_config
from p2o.data.problem import Problem
from p2o.gepa.adapters.endpoints import Endpoints
from p2o.gepa.core.evaluate import EvalItem, RequestRefused
from p2o.gepa.core.reflect import ReflectionExample, ReflectionRequest
from p2o.gepa.service.jobs import default_evaluator, default_reflector
from p2o.gepa.service.protocol import GEPAJobSpec, job_section
from p2o.limits import reflection_rollout, resolve_limits
from p2o.prompts import AUTHORS_USER_TEMPLATE, user_text
from p2o.rollout.factory import build_engine, build_gateway
from tests.conftest import CACHE_DIR
from tests.p2o.gepa.tiny_policy import cached_tiny_policy, question

pytestmark = [pytest.mark.network, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
PAPER = sorted(glob.glob(str(REPO / "configs" / "qwen3_4b_p2o_*.yaml")) + glob.glob(str(REPO / "configs" / "scaling" / "*.yaml")))
QWEN3_POSITIONS = 40960  # max_position_embeddings of Qwen3-4B/8B/14B/32B


@pytest.fixture(scope="module")
def tiny_qwen3_policy(tiny_model_dir, tmp_path_factory) -> Path:
    """The fine-tuned tiny Qwen3 with the family's context (its weights and tokenizer linked, config.json set)."""
    src = cached_tiny_policy(tiny_model_dir, CACHE_DIR)
    out = tmp_path_factory.mktemp("tiny-qwen3-policy")
    for f in src.iterdir():
        if f.name != "config.json":
            os.symlink(f, out / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg["max_position_embeddings"] = QWEN3_POSITIONS
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def shrunk(path: str, model_dir: Path):
    """The paper config with only the model swapped (and what the model dictates: dtype, layout, CPU engine)."""
    return load_config(path, [f"model.path={model_dir}", "model.dtype=float32", "parallel.tp=1", "parallel.pp=1",
                              "rollout.engine=hf", "rollout.device=cpu"])


def problems() -> list[Problem]:
    # the policy answers 3 without "carefully" in the prompt and 7 with it: p7 is solvable only by a child
    return [Problem("p3", question(1), "3"), Problem("p7", question(2), "7"), Problem("q7", question(4), "7")]


def job_spec(cfg, policy_url: str, reflection_url: str) -> GEPAJobSpec:
    """What `ServiceGEPARound.submit` sends for this config (Self-Ref: the reflection gateway, model 'reflection')."""
    reflection = {**job_section("reflection", cfg.reflection), "base_url": reflection_url + "/v1",
                  "model": "reflection"}
    return GEPAJobSpec(problems=problems(), policy_url=policy_url + "/v1", policy_model="policy", policy_version=0,
                       reflection=reflection, gepa=job_section("gepa", cfg.gepa),
                       reward=job_section("reward", cfg.reward), k=cfg.rollout.n,
                       user_template=cfg.prompt.user_template, system=cfg.prompt.system, thinking=cfg.model.thinking)


@pytest.mark.parametrize("path", PAPER, ids=[str(Path(p).relative_to(REPO / "configs")) for p in PAPER])
def test_paper_config_gepa_scoring_and_reflection_through_the_real_gateways(path, tiny_qwen3_policy):
    cfg = shrunk(path, tiny_qwen3_policy)
    assert cfg.prompt.user_template == AUTHORS_USER_TEMPLATE and cfg.gepa.eval_max_tokens == 12288
    assert cfg.reflection.mode == "self" and cfg.reflection.context_tokens == 32768
    limits = resolve_limits(cfg, tiny_qwen3_policy)  # what the runtime computes from the resolved model
    policy_gw = build_gateway(build_engine(cfg.rollout, cfg.model, tiny_qwen3_policy), _tokenizer(tiny_qwen3_policy),
                              cfg.rollout, "policy", cfg.model.thinking, limits.policy_gateway).start()
    frozen_rollout = reflection_rollout(cfg, limits)
    reflection_gw = build_gateway(build_engine(frozen_rollout, cfg.model, tiny_qwen3_policy),
                                  _tokenizer(tiny_qwen3_policy), frozen_rollout, "reflection", cfg.model.thinking,
                                  limits.reflection_gateway).start()
    try:
        spec = job_spec(cfg, policy_gw.url, reflection_gw.url)
        gepa, reflection, reward = spec.configs()
        # one scoring wave, as the search sends it: the parent "" and a child on the same minibatch
        evaluator = default_evaluator(spec, gepa, reward, Endpoints())
        try:
            p3, p7, q7 = spec.problems
            outs = evaluator.evaluate([EvalItem("", p3), EvalItem("", p7), EvalItem("", q7),
                                       EvalItem("Work carefully.", p3), EvalItem("Work carefully.", p7),
                                       EvalItem("Work carefully.", q7)])
        finally:
            evaluator.close()
        assert all(o.ok for o in outs), [o.error for o in outs]
        parent, child = [o.score for o in outs[:3]], [o.score for o in outs[3:]]
        assert parent == [1.0, 0.0, 0.0] and child == [0.0, 1.0, 1.0]
        assert sum(child) > sum(parent)  # the search's acceptance rule: this child would be accepted
        assert policy_gw.scheduler.counters["requests_evaluation"] == 6
        # one reflection call: the meta-prompt on the parent's failures, through the reflection gateway
        reflector = default_reflector(spec, gepa, reflection, Endpoints())
        assert reflector.budget_tokens == limits.reflection_prompt_budget == 32768 - 2048 - 64
        examples = [ReflectionExample(user_text(p.question, spec.user_template), o.response, p.answer,
                                      o.score >= 1.0, o.extracted, o.reason, o.score)
                    for p, o in zip((p3, p7, q7), outs[:3], strict=True)]
        try:
            (proposal,) = reflector.propose([ReflectionRequest("", examples)])
        finally:
            reflector.complete.close()
        assert proposal.status in ("ok", "unusable"), proposal  # answered (a tiny model's answer may not parse)
        assert reflection_gw.scheduler.counters["requests_reflection"] == 1
    finally:
        policy_gw.stop()
        reflection_gw.stop()


def test_the_old_fixed_gateway_limit_refuses_the_paper_scoring(tiny_qwen3_policy):
    """The regression: the policy gateway with the former fixed max_tokens 4096 refuses every scoring request."""
    from p2o.limits import GatewaySize

    cfg = shrunk(str(REPO / "configs" / "qwen3_4b_p2o_deepmath.yaml"), tiny_qwen3_policy)
    old = GatewaySize(max_prompt_tokens=cfg.rollout.max_prompt_tokens, max_tokens=4096, max_n=64,
                      max_body_bytes=cfg.rollout.gateway_max_body_bytes)
    gw = build_gateway(build_engine(cfg.rollout, cfg.model, tiny_qwen3_policy), _tokenizer(tiny_qwen3_policy),
                       cfg.rollout, "policy", cfg.model.thinking, old).start()
    try:
        spec = job_spec(cfg, gw.url, "http://127.0.0.1:9")
        gepa, _, reward = spec.configs()
        evaluator = default_evaluator(spec, gepa, reward, Endpoints())
        try:
            with pytest.raises(RequestRefused, match="max_tokens 12288 exceeds the gateway limit 4096"):
                evaluator.evaluate([EvalItem("Work carefully.", spec.problems[1])])
        finally:
            evaluator.close()
    finally:
        gw.stop()


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)
