"""Step-time arithmetic against hand-computed cases."""
import pytest

from p2o.plan.layouts import Cluster, Layout, RunSettings
from p2o.plan.presets import PRESETS
from p2o.plan.throughput import generation_time, resolve_vllm_tp, step_time

SHAPE = PRESETS["Qwen3-4B"]
H100 = Cluster(nodes=1)


def test_update_is_6n_flops_at_mfu():
    run = RunSettings(prompts_per_step=8, k=8, prompt_tokens=64, response_tokens=448, vllm_tp=1)
    layout = Layout(1, 1, 8)
    st = step_time(SHAPE, H100, layout, run)
    tokens = 64 * 512
    attn = 2 * 2 * 36 * 32 * 128 * 256  # per token: QK^T and PV over an average context of 256
    fwd = tokens * (2 * SHAPE.num_active_params + attn)
    dp_ring = SHAPE.num_params * 4 * 2 * 7 / 8 / 450e9  # fp32 gradient ring all-reduce over NVLink
    assert st.update_s == pytest.approx(3 * fwd / (8 * 989e12 * 0.35) + dp_ring, rel=1e-9)
    assert st.old_logprob_s == pytest.approx(fwd / (8 * 989e12 * 0.35), rel=1e-9)
    assert st.weight_sync_s == pytest.approx(SHAPE.num_params * 2 / 450e9)
    assert st.tokens_per_s_per_gpu == pytest.approx(tokens / st.total_s / 8)


def test_pipeline_bubble_and_recompute():
    run = RunSettings(prompts_per_step=8, k=8, vllm_tp=1)
    base = step_time(SHAPE, H100, Layout(1, 1, 8), run).old_logprob_s
    # PP=4, DP=2: 32 micro-batches per rank -> bubble (1 + 3/32)
    assert step_time(SHAPE, H100, Layout(1, 4, 2), run).old_logprob_s == pytest.approx(base * (1 + 3 / 32))
    rec = RunSettings(prompts_per_step=8, k=8, vllm_tp=1, recompute=True)
    assert (step_time(SHAPE, H100, Layout(1, 1, 8), rec).update_s - step_time(SHAPE, H100, Layout(1, 1, 8), run).update_s
            == pytest.approx(base))


def test_decode_is_bandwidth_bound_by_hand():
    # one sequence per GPU: each decode step reads the bf16 weights and its KV cache at 0.7 x 3.35 TB/s
    run = RunSettings(prompts_per_step=8, k=1, prompt_tokens=100, response_tokens=1000, max_response_tokens=1000,
                      vllm_tp=1)
    t = generation_time(SHAPE, H100, run, 8, 1000, 1000)
    kv = (100 + 500) * SHAPE.kv_bytes_per_token_bf16
    decode = 1000 * (SHAPE.num_params * 2 + kv) / (3.35e12 * 0.7)
    prefill = 100 * (2 * SHAPE.num_active_params + 2 * 2 * 36 * 32 * 128 * 50) / (989e12 * 0.5)
    assert t == pytest.approx(decode + prefill, rel=1e-9)


def test_gepa_and_templates_cost_time():
    run = RunSettings(vllm_tp=1)
    st = step_time(SHAPE, H100, Layout(1, 1, 8), run)
    assert st.gepa_s > 0
    none = step_time(SHAPE, H100, Layout(1, 1, 8), RunSettings(vllm_tp=1, gepa_calls_per_epoch=0))
    assert none.gepa_s == 0
    templ = step_time(SHAPE, H100, Layout(1, 1, 8), RunSettings(vllm_tp=1, templated_fraction=0.5))
    assert templ.old_logprob_s == pytest.approx(1.5 * st.old_logprob_s)
    # On-policy update: untemplated rows take old log-probs from the update; templated rows are scored twice.
    on_policy = step_time(SHAPE, H100, Layout(1, 1, 8), RunSettings(vllm_tp=1, templated_fraction=0.25,
                                                                    old_logprob_pass=False))
    assert on_policy.old_logprob_s == pytest.approx(0.5 * st.old_logprob_s)
    assert step_time(SHAPE, H100, Layout(1, 1, 8), RunSettings(vllm_tp=1, old_logprob_pass=False)).old_logprob_s == 0


def test_auto_vllm_tp_fits_the_model():
    assert resolve_vllm_tp(PRESETS["Qwen3-32B"], H100, RunSettings()).vllm_tp >= 2
    assert resolve_vllm_tp(SHAPE, H100, RunSettings(vllm_tp=4)).vllm_tp == 4
