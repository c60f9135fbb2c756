"""The vLLM engine: the conversion layer on CPU; the real colocated cycle only with vLLM and CUDA."""
from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass

import pytest
import torch

from p2o.rollout.batching import expand
from p2o.rollout.engine import GenerationRequest, SamplingParams
from p2o.rollout.sampling import sequence_seed
from p2o.rollout.vllm_engine import generation_from_vllm, vllm_sampling_kwargs


@dataclass
class FakeLogprob:  # vLLM's Logprob record (vLLM is not installable on CPU machines)
    logprob: float


@dataclass
class FakeCompletionOutput:  # vLLM's CompletionOutput fields the engine reads
    token_ids: list[int]
    text: str
    logprobs: list[dict[int, FakeLogprob]]
    finish_reason: str


def test_requests_expand_to_one_vllm_request_per_sample_with_its_own_seed():
    reqs = [GenerationRequest([1, 2], SamplingParams(n=3, temperature=0.8, top_k=0, top_p=0.9, max_new_tokens=7,
                                                     stop=["\n\n"], seed=42)),
            GenerationRequest([3], SamplingParams(n=1, temperature=0.0, top_k=5))]
    seqs = expand(reqs, random.Random(0))
    kwargs = [vllm_sampling_kwargs(s) for s in seqs]
    assert [k["seed"] for k in kwargs[:3]] == [sequence_seed(42, j) for j in range(3)]
    assert all(k["n"] == 1 and k["logprobs"] == 0 for k in kwargs)
    assert kwargs[0]["stop"] == ["\n\n"] and kwargs[0]["top_p"] == 0.9 and kwargs[0]["max_tokens"] == 7
    assert kwargs[3]["temperature"] == 0.0 and kwargs[3]["top_k"] == 5 and kwargs[3]["stop"] is None
    # unseeded requests get seeds from the engine's rng: reproducible per engine
    assert [s.seed for s in expand(reqs[1:], random.Random(0))] == [seqs[3].seed]


def test_generation_from_vllm_output():
    seq = expand([GenerationRequest([9, 9], SamplingParams())], random.Random(0))[0]
    out = FakeCompletionOutput([5, 7], "ab", [{5: FakeLogprob(-0.5), 1: FakeLogprob(-3.0)}, {7: FakeLogprob(-1.25)}],
                               "stop")
    g = generation_from_vllm(seq, out, policy_version=3)
    assert (g.response_ids, g.logprobs, g.text, g.finish_reason, g.policy_version) == ([5, 7], [-0.5, -1.25], "ab",
                                                                                       "stop", 3)
    with pytest.raises(ValueError, match="log-prob entries"):
        generation_from_vllm(seq, FakeCompletionOutput([5], "a", [], "length"), 0)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
                    reason="needs vLLM and CUDA")
@pytest.mark.parametrize("sleep_level", [1, 2])
def test_vllm_colocated_cycle(tiny_model_dir, sleep_level, tmp_path):
    """generate -> sleep -> load new weights -> wake: greedy outputs follow the new weights; logprobs are finite."""
    from transformers import AutoModelForCausalLM

    from p2o.rollout.hf_engine import HFEngine
    from p2o.rollout.vllm_engine import VLLMEngine
    from p2o.rollout.weights import state_dict_buckets

    engine = VLLMEngine(str(tiny_model_dir), sleep_level=sleep_level, gpu_memory_utilization=0.2, dtype="float32",
                        max_model_len=256)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    reqs = [GenerationRequest([1, 2, 3, 4], params), GenerationRequest([7, 8], params)]
    before = engine.generate(reqs)
    new = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in new.parameters():
            p.mul_(1.5)
    engine.sleep()
    engine.load_weights(state_dict_buckets(new, 1 << 20), version=1)
    engine.wake_up()
    after = engine.generate(reqs)
    new.save_pretrained(tmp_path)
    hf = HFEngine.from_pretrained(tiny_model_dir, device="cuda")
    hf.load_weights(state_dict_buckets(new, 1 << 20), version=1)
    expected = hf.generate(reqs)
    assert [g[0].response_ids for g in after] == [g[0].response_ids for g in expected]
    assert all(g[0].policy_version == 1 for g in after) and all(g[0].policy_version == 0 for g in before)
