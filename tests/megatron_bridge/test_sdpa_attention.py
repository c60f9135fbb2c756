"""`SDPAttention` (torch SDPA) vs Megatron's `DotProductAttention`, a float64 reference, and transformers.

One 2-rank launch (process start-up dominates the cost):
  1. TP=1 (rank 0): both core attentions on seeded random q/k/v over odd shapes (s 7/13, b 1/3, 9 heads / 3 groups,
     4/2, 4/4, an explicit softmax scale, query-key layer scaling): outputs and input gradients for one upstream
     gradient; the test also computes a float64 reference by hand (repeat K/V, masked softmax). Plus the forward
     inputs SDPAttention rejects, with their error messages.
  2. TP=2: a tiny Qwen3 GPTModel (4 heads / 2 groups, head_dim 24, QK-norm) built with core_attention "megatron"
     and "sdpa" from the same HF checkpoint: full logits (vs each other and vs transformers via
     `megatron_bridge.parity.hf_logits`) and every parameter gradient of one backward pass, per rank.

Tolerances (fp32): outputs and gradients of unit-scale inputs 1e-5 absolute, between the two kernels (their
summation orders differ) and vs float64 (observed <= 1.7e-6; a 1e-4 relative error in the softmax scale fails).
Model logits: 1e-4 of the largest logit vs transformers (the parity tolerance), 1e-5 between the two core
attentions (observed 4e-7); parameter gradients 1e-5 of each tensor's largest entry (observed 1.6e-6).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from mb_workers import once_per_session

from megatron_bridge.launch import spawn

CONFIG = Path(__file__).parent / "configs" / "qwen3_gqa2_hd24_tied.json"
CASES = {  # name -> shapes and scale options; q/k/v are [s, b, heads|groups, hn]
    "s7_b1_gqa9x3": dict(s=7, b=1, heads=9, groups=3, hn=16),
    "s13_b3_gqa9x3": dict(s=13, b=3, heads=9, groups=3, hn=8),
    "s13_b3_gqa4x2": dict(s=13, b=3, heads=4, groups=2, hn=24),
    "s7_b3_mha4": dict(s=7, b=3, heads=4, groups=4, hn=16),
    "s13_b1_mha4": dict(s=13, b=1, heads=4, groups=4, hn=12),
    "s13_b3_scale0.3": dict(s=13, b=3, heads=9, groups=3, hn=8, softmax_scale=0.3),
    "s7_b3_qk_layer_scaling": dict(s=7, b=3, heads=4, groups=2, hn=16, qk_layer_scaling=True, layer_number=3),
}
KERNEL_ATOL = 1e-5  # inputs ~N(0, 1), outputs and gradients |x| < 7: observed <= 1.7e-6
REF_ATOL = 1e-5  # observed <= 1.2e-6
TOKENS_SHAPE = (3, 11)

pytestmark = [pytest.mark.multiproc, pytest.mark.xdist_group("megatron_sdpa")]


def attention_config(heads: int, groups: int, hn: int, qk_layer_scaling: bool = False, **overrides):
    from megatron.core.transformer import TransformerConfig

    kwargs = dict(num_layers=4, hidden_size=heads * hn, num_attention_heads=heads, num_query_groups=groups,
                  kv_channels=hn, attention_dropout=0.0, hidden_dropout=0.0, masked_softmax_fusion=False,
                  apply_query_key_layer_scaling=qk_layer_scaling, use_cpu_initialization=True)
    return TransformerConfig(**{**kwargs, **overrides})


def build_attention(cls, case: dict, **kwargs):
    from megatron.core.transformer.enums import AttnMaskType

    cfg = attention_config(case["heads"], case["groups"], case["hn"], case.get("qk_layer_scaling", False))
    kwargs = dict(attn_mask_type=AttnMaskType.causal, attention_type="self", **kwargs)
    return cls(cfg, case.get("layer_number", 1), softmax_scale=case.get("softmax_scale"), **kwargs)


def case_inputs(case: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s, b, hn = case["s"], case["b"], case["hn"]
    return {"q": torch.randn(s, b, case["heads"], hn, generator=g), "k": torch.randn(s, b, case["groups"], hn, generator=g),
            "v": torch.randn(s, b, case["groups"], hn, generator=g),
            "grad": torch.randn(s, b, case["heads"] * hn, generator=g)}


def run_attention(module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward with the model's causal mask, backward of `inputs['grad']`: output and input gradients."""
    from megatron_bridge.forward import causal_inputs

    q, k, v = (inputs[n].clone().requires_grad_() for n in "qkv")
    _, mask = causal_inputs(q.shape[1], q.shape[0], q.device)
    out = module(q, k, v, mask)
    out.backward(inputs["grad"])
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


def kernel_cases() -> dict:
    """Every CASES entry through both core attentions (needs Megatron's groups: TP=1)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megatron_bridge.sdpa_attention import SDPAttention

    out = {}
    for i, (name, case) in enumerate(CASES.items()):
        inputs = case_inputs(case, seed=100 + i)
        out[name] = {"inputs": inputs,
                     "megatron": run_attention(build_attention(DotProductAttention, case), inputs),
                     "sdpa": run_attention(build_attention(SDPAttention, case), inputs)}
    return out


def rejected_forward_inputs() -> dict[str, str]:
    """The error message of each forward input SDPAttention rejects."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_bridge.sdpa_attention import SDPAttention

    case = CASES["s7_b3_mha4"]
    module = build_attention(SDPAttention, case)
    x = case_inputs(case, seed=0)
    q, k, v = x["q"], x["k"], x["v"]
    calls = {
        "packed_seq_params": lambda: module(q, k, v, None, packed_seq_params=PackedSeqParams(qkv_format="thd")),
        "attention_bias": lambda: module(q, k, v, None, attention_bias=torch.zeros(1, 4, 7, 7)),
        "attn_mask_type": lambda: module(q, k, v, None, attn_mask_type=AttnMaskType.padding),
        "key length": lambda: module(q, k[:5], v[:5], None),
        "heads": lambda: module(q[:, :, :2], k, v, None),
    }
    errors = {}
    for name, call in calls.items():
        try:
            call()
            errors[name] = "no error"
        except (ValueError, NotImplementedError) as e:
            errors[name] = f"{type(e).__name__}: {e}"
    return errors


def model_run(model_dir: str, tokens: torch.Tensor, core_attention: str, layout) -> dict:
    """Build + load the GPTModel with `core_attention`, one forward (full logits) and backward of a seeded random
    linear function of this rank's logits; this rank's parameter gradients."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_bridge.forward import causal_inputs
    from megatron_bridge.hf_io import read_config
    from megatron_bridge.provider import bridge_for
    from megatron_bridge.weights import load_hf_checkpoint

    hf = read_config(model_dir)
    bridge = bridge_for(hf)
    provider = dataclasses.replace(bridge.provider(hf), core_attention=core_attention)
    (model,) = provider.provide(layout)
    load_hf_checkpoint([model], bridge, provider, model_dir, layout)
    pos, mask = causal_inputs(tokens.shape[0], tokens.shape[1], layout.device)
    logits = model(tokens, pos, mask)  # [B, S, V_local]
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(*logits.shape[:2], logits.shape[2] * layout.tp, generator=g).chunk(layout.tp, -1)
    (logits * weights[layout.tp_rank]).sum().backward()
    full = gather_from_tensor_model_parallel_region(logits.detach())[..., :provider.vocab_size]
    return {"logits": full, "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "core_attention_type": type(model.decoder.layers[0].self_attention.core_attention).__name__}


def sdpa_worker(model_dir: str, tokens: torch.Tensor, out_file: str) -> None:
    """Rank function: kernel cases at TP=1 (rank 0), then both core attentions in a TP=2 model; rank 0 saves."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_bridge.parallel import init_parallel, shutdown_parallel
    from p2o.config import ParallelConfig

    try:
        init_parallel(ParallelConfig(tp=1, pp=1))
        result = {"kernels": kernel_cases(), "errors": rejected_forward_inputs()} if dist.get_rank() == 0 else {}
        ps.destroy_model_parallel()
        layout = init_parallel(ParallelConfig(tp=2, pp=1))
        per_rank = {core: model_run(model_dir, tokens, core, layout) for core in ("megatron", "sdpa")}
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, per_rank)
        if dist.get_rank() == 0:
            torch.save({**result, "tp2": gathered}, out_file)
        dist.barrier()
    finally:
        shutdown_parallel()


@pytest.fixture(scope="session")
def model_dir():
    from p2o.models import resolve_model_dir

    return str(resolve_model_dir(str(CONFIG), init_seed=3))


@pytest.fixture(scope="session")
def tokens():
    return torch.randint(0, 1000, TOKENS_SHAPE, generator=torch.Generator().manual_seed(8))


@pytest.fixture(scope="session")
def runs(model_dir, tokens, tmp_path_factory, worker_id):
    def produce(tmp):
        spawn(sdpa_worker, 2, (model_dir, tokens, str(tmp / "sdpa.pt")))
        return torch.load(tmp / "sdpa.pt")

    return once_per_session(tmp_path_factory, worker_id, "megatron_sdpa_runs", produce)


def float64_attention(q, k, v, scale: float) -> torch.Tensor:
    """Independent reference: [s, b, np, hn] x [s, b, ng, hn] -> [s, b, np * hn], causal, by hand in float64."""
    s, b, heads, hn = q.shape
    rep = heads // k.shape[2]
    qh = q.permute(1, 2, 0, 3)  # [b, np, s, hn]
    kh, vh = (t.repeat_interleave(rep, dim=2).permute(1, 2, 0, 3) for t in (k, v))
    scores = qh @ kh.transpose(-1, -2) * scale  # [b, np, s, s]
    future = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    return (probs @ vh).permute(2, 0, 1, 3).reshape(s, b, heads * hn)


def expected_scale(case: dict) -> float:
    return case.get("softmax_scale") or case["hn"] ** -0.5


@pytest.mark.slow  # uses `runs`: TP=1 and TP=2 Megatron ranks, spawned once per session
@pytest.mark.parametrize("name", list(CASES))
def test_sdpa_matches_dot_product_attention(runs, name):
    got = runs["kernels"][name]
    s, b, heads, hn = got["inputs"]["q"].shape
    assert got["sdpa"]["out"].shape == (s, b, heads * hn) and got["sdpa"]["out"].dtype == torch.float32
    for key in ("out", "dq", "dk", "dv"):
        torch.testing.assert_close(got["sdpa"][key], got["megatron"][key], atol=KERNEL_ATOL, rtol=0,
                                   msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.slow  # uses `runs`: TP=1 and TP=2 Megatron ranks, spawned once per session
@pytest.mark.parametrize("name", list(CASES))
def test_both_match_float64_reference(runs, name):
    got, case = runs["kernels"][name], CASES[name]
    x = {n: t.double().requires_grad_(n in "qkv") for n, t in got["inputs"].items()}
    ref = float64_attention(x["q"], x["k"], x["v"], expected_scale(case))
    ref.backward(x["grad"])
    want = {"out": ref.detach(), "dq": x["q"].grad, "dk": x["k"].grad, "dv": x["v"].grad}
    for core in ("sdpa", "megatron"):
        for key, value in want.items():
            torch.testing.assert_close(got[core][key].double(), value, atol=REF_ATOL, rtol=0,
                                       msg=lambda m, c=core, k=key: f"{c} {k}: {m}")


@pytest.mark.slow  # uses `runs`: TP=1 and TP=2 Megatron ranks, spawned once per session
def test_rejected_forward_inputs_name_the_setting(runs):
    errors = runs["errors"]
    assert errors["packed_seq_params"].startswith("NotImplementedError") and "packed_seq_params" in \
        errors["packed_seq_params"]
    assert "attention_bias" in errors["attention_bias"]
    assert "attn_mask_type=<AttnMaskType.padding" in errors["attn_mask_type"]
    assert "key length=5" in errors["key length"] and "query length 7" in errors["key length"]
    assert errors["heads"].startswith("ValueError") and "expected 4/4" in errors["heads"]


@pytest.mark.slow  # uses `runs`: TP=1 and TP=2 Megatron ranks, spawned once per session
def test_tp2_model_sdpa_matches_megatron_and_transformers(runs, model_dir, tokens):
    from megatron_bridge.parity import FP32_REL_TOL, hf_logits

    ranks = runs["tp2"]
    assert [r["sdpa"]["core_attention_type"] for r in ranks] == ["SDPAttention"] * 2
    assert [r["megatron"]["core_attention_type"] for r in ranks] == ["DotProductAttention"] * 2
    ref = hf_logits(model_dir, tokens)
    scale = ref.abs().max().item()
    assert scale > 0 and ranks[0]["sdpa"]["logits"].shape == ref.shape
    for r in ranks:  # every TP rank holds the gathered logits
        for core in ("sdpa", "megatron"):
            assert (r[core]["logits"] - ref).abs().max().item() <= FP32_REL_TOL * scale, core
        assert (r["sdpa"]["logits"] - r["megatron"]["logits"]).abs().max().item() <= 1e-5 * scale


@pytest.mark.slow  # uses `runs`: TP=1 and TP=2 Megatron ranks, spawned once per session
def test_tp2_model_gradients_match(runs):
    for rank, r in enumerate(runs["tp2"]):
        got, want = r["sdpa"]["grads"], r["megatron"]["grads"]
        assert sorted(got) == sorted(want) and any("linear_qkv" in n for n in got)
        for name, g in want.items():
            assert g.abs().max() > 0, f"rank {rank} {name}: zero gradient"
            torch.testing.assert_close(got[name], g, atol=1e-5 * g.abs().max().item(), rtol=0,
                                       msg=lambda m, r=rank, n=name: f"rank {r} {n}: {m}")


@pytest.mark.parametrize("setting,overrides,kwargs", [
    ("attention_dropout", {}, {"attention_dropout": 0.1}),
    ("attention_dropout", {"attention_dropout": 0.1}, {}),
    ("attn_mask_type", {}, {"attn_mask_type": "padding"}),
    ("context_parallel_size", {"context_parallel_size": 2}, {}),
    ("window_size", {"window_size": (4, 0)}, {}),
])
def test_rejected_settings_name_the_setting(setting, overrides, kwargs):
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_bridge.sdpa_attention import SDPAttention

    cfg = attention_config(4, 2, 8, **overrides)
    args = dict(attn_mask_type=AttnMaskType.causal, attention_type="self")
    if "attn_mask_type" in kwargs:
        args["attn_mask_type"] = AttnMaskType[kwargs.pop("attn_mask_type")]
    with pytest.raises((ValueError, NotImplementedError), match=setting):
        SDPAttention(cfg, 1, **args, **kwargs)


def test_provider_core_attention_choice():
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megatron_bridge.provider import bridge_and_provider
    from megatron_bridge.sdpa_attention import SDPAttention

    _, provider = bridge_and_provider(CONFIG)
    assert provider.core_attention == "sdpa"

    def core(p):
        return p.layer_spec().submodules.self_attention.submodules.core_attention

    assert core(provider) is SDPAttention
    assert core(dataclasses.replace(provider, core_attention="megatron")) is DotProductAttention
    with pytest.raises(ValueError, match="core_attention='flash'; expected one of sdpa, megatron"):
        dataclasses.replace(provider, core_attention="flash")
