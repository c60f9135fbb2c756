"""Memory arithmetic against hand-computed cases."""
import pytest

from p2o.plan.layouts import GIB, Cluster, Layout, RunSettings
from p2o.plan.memory import activation_bytes_per_token_layer, layout_memory, padded_vocab, stage_memory
from p2o.plan.presets import PRESETS, ModelShape

# h=8, f=16, 4 layers, 2 heads / 1 KV head of width 4, V=100, untied, no q/k norm
SMALL = ModelShape("small", hidden=8, ffn=16, layers=4, heads=2, kv_heads=1, head_dim=4, vocab=100, tied=False)
RUN = RunSettings(prompts_per_step=4, k=2, prompt_tokens=6, response_tokens=10, max_response_tokens=10,
                  micro_batch=1, vocab_multiple=8,
                  fused_logprob=False, distributed_optimizer=True, overhead_gib=0.0)


def test_padded_vocab():
    assert padded_vocab(SMALL, 2, 8) == 104
    assert padded_vocab(PRESETS["Qwen3-8B"], 8, 128) == padded_vocab(PRESETS["Qwen3-8B"], 1, 128) == 151936
    assert padded_vocab(SMALL, 3, 8) == 120  # lcm(8, 3) = 24


def test_stage_terms_by_hand():
    layout = Layout(tp=2, pp=2, dp=2)
    # one layer on a TP rank: (q 8x8 + k,v 8x4 each + o 8x8 + SwiGLU 3x8x16) / 2 + 2 norms x 8 = 304
    first = stage_memory(SMALL, Cluster(), layout, RUN, stage=0, micro_batches=4)
    last = stage_memory(SMALL, Cluster(), layout, RUN, stage=1, micro_batches=4)
    p_first, p_last = 2 * 304 + 104 * 8 // 2, 2 * 304 + 104 * 8 // 2 + 8  # + embedding | LM head, final norm
    assert first.weights == 2 * p_first and last.weights == 2 * p_last
    assert first.gradients == 4 * p_first
    assert first.optimizer == 12 * p_first / 2  # fp32 master + Adam m, v, sharded over DP=2
    # fused per token per layer: 4h + (QKV 4 + q,k 3 + attn out 2) x d / t + 3f / t = 32 + 18 + 24 = 74 elements
    per_layer = 74 * 2 * 16  # bf16, 16 tokens per micro-batch
    assert first.activations == 2 * 2 * per_layer  # first stage: min(PP, M) = 2 micro-batches in flight
    assert last.activations == 1 * 2 * per_layer
    assert first.logits == 0 and last.logits == 16 * 52 * 2 * 2  # two bf16 [T, V/TP] buffers
    assert last.peak_update == last.weights + last.gradients + last.optimizer + last.activations + last.logits


def test_switches_change_the_right_terms():
    layout = Layout(tp=1, pp=1, dp=4)
    shape = PRESETS["Qwen3-4B"]
    base = RunSettings()
    m = stage_memory(shape, Cluster(), layout, base, 0, 8)
    no_dist = stage_memory(shape, Cluster(), layout, RunSettings(distributed_optimizer=False), 0, 8)
    assert no_dist.optimizer == pytest.approx(4 * m.optimizer)
    naive = stage_memory(shape, Cluster(), layout, RunSettings(fused_logprob=False), 0, 8)
    tokens = base.peak_seq_tokens * base.micro_batch
    assert naive.logits == pytest.approx(tokens * 151936 * 2 * 2)  # 2 bf16 buffers; 151936 = 1187 x 128
    labels = stage_memory(shape, Cluster(), layout, RunSettings(fused_logprob=False, logits_path="labels"), 0, 8)
    assert labels.logits == pytest.approx(tokens * 151936 * 6)  # fp32 softmax + bf16 logits
    assert m.logits == tokens * 8
    rec = stage_memory(shape, Cluster(), layout, RunSettings(recompute=True), 0, 8)
    assert rec.activations < m.activations / 10
    sleep0 = stage_memory(shape, Cluster(), layout, RunSettings(vllm_sleep_level=0), 0, 8)
    assert sleep0.peak_update - m.peak_update == pytest.approx(0.5 * 80 * GIB)
    # nothing is offloaded while vLLM generates: the trainer's whole state is resident next to vLLM's share
    assert m.peak_generation == pytest.approx(m.overhead + m.weights + m.gradients + m.optimizer + m.vllm_generation)
    # activations and logits follow the longest row, not the mean
    longer = stage_memory(shape, Cluster(), layout, RunSettings(max_response_tokens=8 * base.response_tokens), 0, 8)
    assert longer.logits / m.logits == pytest.approx((base.prompt_tokens + 8 * base.response_tokens)
                                                     / base.peak_seq_tokens)


def test_unfused_attention_stores_probabilities():
    run_f, run_u = RunSettings(), RunSettings(flash_attention=False)
    shape = PRESETS["tiny-qwen3"]
    a1 = activation_bytes_per_token_layer(shape, run_u, 1, seq=64)
    a2 = activation_bytes_per_token_layer(shape, run_u, 1, seq=128)
    assert a2 - a1 == pytest.approx(shape.heads * 64 * 2)  # a x s more elements per token
    assert activation_bytes_per_token_layer(shape, run_f, 1, 64) == activation_bytes_per_token_layer(shape, run_f, 1, 128)


def test_worst_rank_is_reported():
    m = layout_memory(PRESETS["Qwen3-8B"], Cluster(), Layout(2, 4, 1), RunSettings(prompts_per_step=8, k=2))
    assert m.stage in ("first", "last")


def test_vllm_terms_by_sleep_level():
    shape, layout = PRESETS["Qwen3-4B"], Layout(1, 1, 8)
    for level, on_gpu_training, host in ((0, 0.5 * 80 * GIB, 0.0), (1, 0.0, shape.num_params), (2, 0.0, 0.0)):
        m = stage_memory(shape, Cluster(), layout, RunSettings(vllm_sleep_level=level, vllm_tp=2), 0, 8)
        assert m.vllm_training == on_gpu_training and m.host_vllm == host  # level 1: bf16 weights / vllm_tp 2
        assert m.vllm_weights == shape.num_params  # 2 bytes x params / 2
        assert m.vllm_kv_cache == pytest.approx(0.5 * 80 * GIB - shape.num_params - 1 * GIB)
