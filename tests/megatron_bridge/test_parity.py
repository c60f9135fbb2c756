"""HF transformers vs Megatron-Core logits (fp32, relative tolerance 1e-4) under TP/PP layouts.

Each launch checks several models in one set of ranks (process start-up dominates the cost).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from megatron_bridge.parity import FP32_REL_TOL, check_parity, check_parity_jobs

CONFIGS = Path(__file__).parent / "configs"
QWEN3 = str(CONFIGS / "qwen3_gqa2_hd24_tied.json")      # GQA 2, head_dim 24 != 64/4, tied, vocab 1000 (padded)
LLAMA = str(CONFIGS / "llama_gqa8_hd8_untied_rope3.json")  # GQA 8, head_dim 8 != 48/16, untied, Llama-3 rope scaling
QWEN3_MHA = str(CONFIGS / "qwen3_mha6_hd10_odd.json")   # GQA 1 (MHA), 6 heads, head_dim 10, untied, vocab 503
LLAMA_ODD = str(CONFIGS / "llama_gqa3_odd_heads.json")  # 9 heads / 3 groups, head_dim 6, linear rope, 3 layers

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]  # every test spawns Megatron ranks


def assert_all_ok(reports):
    bad = [r for r in reports if not r.ok(FP32_REL_TOL)]
    assert not bad, "\n".join(f"{r.model_dir} tp={r.tp} pp={r.pp}: rel {r.rel_diff:.2e} abs {r.max_abs_diff:.2e}"
                              for r in bad)
    assert all(r.max_abs_logit > 0 for r in reports)


def test_parity_tp1(smollm2_dir):
    assert_all_ok(check_parity([QWEN3, LLAMA, QWEN3_MHA, LLAMA_ODD, str(smollm2_dir)], tp=1, pp=1))


def test_parity_two_ranks_tp2_then_pp2():
    # One launch: TP=2, then PP=2 (1F1B), then the interleaved schedule (PP=2 x VPP=2) for the 4-layer model.
    jobs = [(m, 2, 1, 1) for m in (QWEN3, LLAMA, QWEN3_MHA)] + [(m, 1, 2, 1) for m in (QWEN3, LLAMA, QWEN3_MHA)]
    jobs.append((QWEN3, 1, 2, 2))
    reports = check_parity_jobs(jobs)
    assert [(r.tp, r.pp) for r in reports] == [(tp, pp) for _, tp, pp, _ in jobs]
    assert_all_ok(reports)


def test_parity_tp2_pp2():
    assert_all_ok(check_parity([QWEN3, LLAMA, QWEN3_MHA], tp=2, pp=2))


def test_parity_tp3_nine_heads(smollm2_dir):
    # SmolLM2-135M: 9 heads, 3 KV groups -> one group per rank; plus a tiny 9-head Llama.
    assert_all_ok(check_parity([str(smollm2_dir), LLAMA_ODD], tp=3, pp=1))
