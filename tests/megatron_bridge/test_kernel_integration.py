"""`train.use_kernels` in MegatronPolicy: the fused GRPO loss and the dual-context pass vs the reference path.

One 2-rank launch runs three layouts, TP=2, TP=1 x DP=2 and PP=2, each twice (use_kernels false, then true) from the
same initial weights. Per run: `logprobs`, `dual_logprobs` (x and a longer context x+z), `logprobs` of x+z, then two
optimizer steps with `p2o.algo.grpo.GRPOLoss`: step 1 without KL, step 2 with a k3 KL term. Old log-probs are the
current ones shifted by up to +-1.5 nats, so ratios leave [1 - clip_low, 1 + clip_high] and some negative-advantage
tokens hit the dual clip (c = 3); a fifth of the aggregation weights are zero.
The step-1 clip count is also checked against `p2o.algo.grpo.clipped_policy_loss` on the same inputs.

The reference path (use_kernels=false) is independent of the kernels: Megatron's vocab-parallel cross entropy on
materialised logits, then `GRPOLoss` in plain torch autograd.

Tolerances (fp32): log-probs 2e-5 absolute; loss, grad norm and metrics 1e-5 relative (sums of ~20 terms);
weights after each Adam step 1e-5 absolute (lr 1e-3, Adam eps 1e-3, so an update is ~lr * g / 1e-3: linear in
small gradients, and gradient rounding differences of ~1e-7 move weights by < 1e-7).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mb_workers import save_on_rank0, spawned_results, synthetic_batch

CONFIG = Path(__file__).parent / "configs" / "qwen3_gqa2_hd24_tied.json"  # vocab 1000: fast under the interpreter
LAYOUTS = {"tp2": dict(tp=2, pp=1), "tp1_dp2": dict(tp=1, pp=1), "pp2": dict(tp=1, pp=2)}
METRICS = ("pg_loss", "clip_frac_sum", "active_tokens", "approx_kl_sum")

pytestmark = [pytest.mark.multiproc, pytest.mark.slow, pytest.mark.xdist_group("megatron_kernel_integration")]


def _cfg(tp: int, pp: int, use_kernels: bool):
    from p2o.config import RunConfig

    cfg = RunConfig()
    cfg.parallel.tp, cfg.parallel.pp = tp, pp
    cfg.grpo.micro_batch_size = 2
    cfg.optim.lr, cfg.optim.eps, cfg.optim.warmup_steps, cfg.optim.grad_clip = 1e-3, 1e-3, 0, 1.0
    cfg.train.use_kernels = use_kernels
    return cfg


def _token_inputs(batch, lp: torch.Tensor) -> dict[str, torch.Tensor]:
    """old = lp + a shift cycling over 7 values in [-1.5, 1.5] nats, advantages cycling over 3 values of both signs
    (every shift meets every sign), token-mean weights with every fifth token zeroed, ref = lp - U(0, 0.3)."""
    from p2o.algo.grpo import token_weights

    T = lp.numel()
    shift = torch.tensor([-1.5, -0.6, -0.1, 0.0, 0.1, 0.6, 1.5]).repeat(T // 7 + 1)[:T]
    adv = torch.tensor([-1.0, 0.7, -0.4]).repeat(T // 3 + 1)[:T]
    lens = [len(r) for r in batch.response_ids]
    w = token_weights(lens, "token-mean", len(lens), T, 8)
    w[2::5] = 0.0
    g = torch.Generator().manual_seed(11)
    return {"old_logprobs": lp + shift, "advantages": adv, "weights": w,
            "ref_logprobs": lp - 0.3 * torch.rand(T, generator=g)}


def _run(tp: int, pp: int, use_kernels: bool, model_dir: str) -> dict:
    import gc

    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_bridge.policy import MegatronPolicy
    from p2o.algo.grpo import GRPOLoss
    from p2o.policy_api import SequenceBatch

    if ps.model_parallel_is_initialized() and (ps.get_tensor_model_parallel_world_size(),
                                               ps.get_pipeline_model_parallel_world_size()) != (tp, pp):
        ps.destroy_model_parallel()
    gc.collect()
    policy = MegatronPolicy.from_config(_cfg(tp, pp, use_kernels), model_dir)
    calls = {"logprobs": 0, "fused_loss": 0}

    def counted(*a, _f=policy.logprobs, **kw):
        calls["logprobs"] += 1
        return _f(*a, **kw)
    policy.logprobs = counted

    class CountedGRPOLoss(GRPOLoss):
        """GRPOLoss counting the calls of its hidden-state capability (the fused kernel path)."""

        def loss_from_hidden(self, *a, **kw):
            calls["fused_loss"] += 1
            return super().loss_from_hidden(*a, **kw)

    batch, _ = synthetic_batch(seed=3, rows=5)
    batch_xz = SequenceBatch([[7, 8, 9, 10, *p] for p in batch.prompt_ids], batch.response_ids)  # x+z: longer
    res: dict = {"logprobs": policy.logprobs(batch), "logprobs_xz": policy.logprobs(batch_xz)}
    calls["logprobs"] = 0
    res["dual"] = policy.dual_logprobs(batch, batch_xz)
    res["dual_logprob_calls"] = calls["logprobs"]
    try:
        policy.dual_logprobs(batch, SequenceBatch(batch.prompt_ids, [[*r, 1] for r in batch.response_ids]))
        res["mismatch_error"] = "no error"
    except ValueError as e:
        res["mismatch_error"] = str(e)
    inputs = _token_inputs(batch, res["logprobs"])
    res["inputs"] = inputs
    res["steps"] = []
    for loss_fn in (CountedGRPOLoss(0.2, 0.28, 3.0), CountedGRPOLoss(0.2, 0.28, 3.0, kl_coef=0.1, kl_type="k3")):
        m = policy.train_step(batch, inputs, loss_fn)
        weights = {name: t.clone() for bucket in policy.export_weights(1 << 20) for name, t in bucket}
        res["steps"].append(dict(loss=m.loss, grad_norm=m.grad_norm, extra=m.extra, weights=weights))
    n = torch.tensor([calls["fused_loss"]])
    dist.all_reduce(n)  # only last-stage ranks compute the loss
    res["fused_loss_calls"] = int(n)
    dist.barrier()
    return res


def kernel_integration_worker(model_dir: str, out_file: str) -> None:
    save_on_rank0({(name, k): _run(kw["tp"], kw["pp"], k, model_dir) for name, kw in LAYOUTS.items()
                   for k in (False, True)}, out_file)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, worker_id):
    from p2o.models import resolve_model_dir

    model_dir = str(resolve_model_dir(str(CONFIG), init_seed=5))
    return spawned_results(tmp_path_factory, worker_id, "megatron_kernel_integration", kernel_integration_worker, 2,
                           (model_dir,))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_dual_logprobs_equal_two_logprobs_calls(runs, layout):
    ref, fused = runs[(layout, False)], runs[(layout, True)]
    assert ref["dual_logprob_calls"] == 2 and fused["dual_logprob_calls"] == 0  # the kernel path: one dual pass
    for run in (ref, fused):
        lp_x, lp_xz = run["dual"]
        torch.testing.assert_close(lp_x, ref["logprobs"], rtol=0, atol=2e-5)
        torch.testing.assert_close(lp_xz, ref["logprobs_xz"], rtol=0, atol=2e-5)
    assert (ref["logprobs"] - ref["logprobs_xz"]).abs().max() > 1e-3  # the contexts do differ
    for run in (ref, fused):
        assert "must hold the same response_ids" in run["mismatch_error"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fused_grpo_loss_step_equals_reference(runs, layout):
    ref, fused = runs[(layout, False)], runs[(layout, True)]
    assert ref["fused_loss_calls"] == 0 and fused["fused_loss_calls"] > 0
    torch.testing.assert_close(fused["logprobs"], ref["logprobs"], rtol=0, atol=2e-5)
    first = ref["steps"][0]["extra"]
    # The case is not trivial: clipped tokens and zero-weight tokens exist; the KL step reports a KL.
    assert first["clip_frac_sum"] > 0 and first["active_tokens"] < ref["inputs"]["weights"].numel()
    assert "kl_sum" in ref["steps"][1]["extra"] and "kl_sum" not in first
    for r, f in zip(ref["steps"], fused["steps"], strict=True):
        assert f["loss"] == pytest.approx(r["loss"], rel=1e-5, abs=1e-7)
        assert f["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-5)
        assert set(f["extra"]) == set(r["extra"])
        for k, v in r["extra"].items():
            assert f["extra"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        for name, w in r["weights"].items():
            torch.testing.assert_close(f["weights"][name], w, rtol=0, atol=1e-5, msg=name)
    moved = max((ref["steps"][0]["weights"][n] - ref["steps"][1]["weights"][n]).abs().max()
                for n in ref["steps"][0]["weights"])
    assert moved > 1e-4  # the steps change the weights, so equal weights mean equal updates


def test_clipped_tokens_are_the_ones_the_surrogate_clips(runs):
    """Independent check of the scenario: the reported clip count equals the surrogate's on the step-1 inputs."""
    from p2o.algo.grpo import clipped_policy_loss

    run = runs[("tp2", True)]
    i = run["inputs"]
    pl = clipped_policy_loss(run["logprobs"], i["old_logprobs"], i["advantages"], 0.2, 0.28, 3.0)
    dual = (i["advantages"] < 0) & (torch.exp(run["logprobs"] - i["old_logprobs"]) > 3.0) & (i["weights"] > 0)
    assert dual.any()  # some tokens take the dual-clip branch
    micro_batches = 3  # 5 rows, micro-batch size 2; step extras are micro-batch averages
    assert run["steps"][0]["extra"]["clip_frac_sum"] * micro_batches == pytest.approx(
        float((pl.clipped & (i["weights"] > 0)).sum()))
