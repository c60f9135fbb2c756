"""`train.recompute` (none | selective | full) in MegatronPolicy: the same training steps as without recomputation.

One 2-rank launch (TP=2, gloo) builds the policy four times from the same weights: recompute none, selective and
full on the reference path, and full with `train.use_kernels` (the hidden-only forward feeding the fused loss).
Each run takes two optimizer steps with `GRPOLoss` on a synthetic batch whose old log-probs are shifted so that
some tokens clip. Recomputation redoes the same forward in the backward, so losses, grad norms and weights
must agree with the no-recompute run to fp32 rounding.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mb_workers import save_on_rank0, spawned_results, synthetic_batch

CONFIG = Path(__file__).parent / "configs" / "qwen3_gqa2_hd24_tied.json"
RUNS = [("none", False), ("selective", False), ("full", False), ("full", True)]

pytestmark = [pytest.mark.multiproc, pytest.mark.slow, pytest.mark.xdist_group("megatron_recompute")]


def _run(mode: str, use_kernels: bool, model_dir: str) -> dict:
    import gc

    from megatron_bridge.policy import MegatronPolicy
    from p2o.algo.grpo import GRPOLoss, token_weights
    from p2o.config import RunConfig

    gc.collect()
    cfg = RunConfig()
    cfg.parallel.tp = 2
    cfg.grpo.micro_batch_size = 2
    cfg.optim.lr, cfg.optim.eps, cfg.optim.warmup_steps = 1e-3, 1e-3, 0
    cfg.train.recompute, cfg.train.use_kernels = mode, use_kernels
    policy = MegatronPolicy.from_config(cfg, model_dir)
    config = policy.chunks[0].config
    batch, _ = synthetic_batch(seed=4, rows=5)
    lp = policy.logprobs(batch)
    T = lp.numel()
    lens = [len(r) for r in batch.response_ids]
    inputs = {"old_logprobs": lp + torch.tensor([-0.5, 0.0, 0.4]).repeat(T // 3 + 1)[:T],
              "advantages": torch.tensor([1.0, -0.6]).repeat(T // 2 + 1)[:T],
              "weights": token_weights(lens, "token-mean", len(lens), T, 8)}
    counts = {"layer": 0, "core_attention": 0}
    kinds = {"decoder.layers.0": "layer", "decoder.layers.0.self_attention.core_attention": "core_attention"}
    for name, module in policy.chunks[0].named_modules():
        kind = kinds.get(name.removeprefix("module."))
        if kind:
            module.register_forward_hook(lambda *_, _k=kind: counts.__setitem__(_k, counts[_k] + 1))
    steps = []
    for _ in range(2):
        m = policy.train_step(batch, inputs, GRPOLoss(0.2, 0.2, 3.0))
        weights = {name: t.clone() for bucket in policy.export_weights(1 << 20) for name, t in bucket}
        steps.append(dict(loss=m.loss, grad_norm=m.grad_norm, clip=m.extra["clip_frac_sum"], weights=weights))
    return {"steps": steps, "granularity": config.recompute_granularity, "method": config.recompute_method,
            "forwards": counts}


def recompute_worker(model_dir: str, out_file: str) -> None:
    save_on_rank0({run: _run(*run, model_dir) for run in RUNS}, out_file)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, worker_id):
    from p2o.models import resolve_model_dir

    model_dir = str(resolve_model_dir(str(CONFIG), init_seed=6))
    return spawned_results(tmp_path_factory, worker_id, "megatron_recompute", recompute_worker, 2, (model_dir,))


def test_recompute_settings_reach_megatron(runs):
    assert runs[("none", False)]["granularity"] is None
    assert runs[("selective", False)]["granularity"] == "selective"
    assert (runs[("full", False)]["granularity"], runs[("full", False)]["method"]) == ("full", "uniform")
    # Forwards of layer 0 and of its core attention over two steps of 3 micro-batches: recomputation redoes them.
    assert runs[("none", False)]["forwards"] == {"layer": 6, "core_attention": 6}
    assert runs[("selective", False)]["forwards"] == {"layer": 6, "core_attention": 12}
    assert runs[("full", False)]["forwards"] == {"layer": 12, "core_attention": 12}


@pytest.mark.parametrize("run", RUNS[1:], ids=[f"{m}-kernels" if k else m for m, k in RUNS[1:]])
def test_recompute_gives_the_same_steps(runs, run):
    ref, got = runs[("none", False)], runs[run]
    assert ref["steps"][0]["clip"] > 0  # some tokens clip: the loss is not a plain linear function
    for r, g in zip(ref["steps"], got["steps"], strict=True):
        assert g["loss"] == pytest.approx(r["loss"], rel=1e-5, abs=1e-7)
        assert g["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-5)
        for name, w in r["weights"].items():
            torch.testing.assert_close(g["weights"][name], w, rtol=0, atol=1e-5, msg=name)
    moved = max((ref["steps"][0]["weights"][n] - ref["steps"][1]["weights"][n]).abs().max()
                for n in ref["steps"][0]["weights"])
    assert moved > 1e-4


def test_unknown_recompute_mode_is_refused():
    from megatron_bridge.policy import recompute_settings

    with pytest.raises(ValueError, match="train.recompute: got 'layers'"):
        recompute_settings("layers")
