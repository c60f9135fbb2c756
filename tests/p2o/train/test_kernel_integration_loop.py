"""The loop's templated step over MegatronPolicy with `train.use_kernels` true vs false: the same metrics.

One single-rank launch (gloo) runs the Trainer's step pieces (`_score_and_mine`, `_old_logprobs`, `_update`, as in
test_loop_units.py) twice from the same initial weights: with the reference path and with the kernels (the
dual-context pass for the templated rows' old log-probs, the fused GRPO loss for the update). Two PPO epochs, so
the second optimizer step sees ratios != 1. The context-ratio mask's lower bound is put between two adjacent
context log-ratios of the reference run, so the mask drops some templated tokens and keeps others.

The model is the 1000-token test Qwen3 of tests/megatron_bridge (fast under the Triton interpreter), so the rows
carry synthetic token ids below 1000; the verifier scores their texts. Tolerances as in
tests/megatron_bridge/test_kernel_integration.py (fp32; Adam eps 1e-3 keeps updates linear in small gradients).
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from megatron_bridge.launch import spawn

CONFIG = Path(__file__).resolve().parents[2] / "megatron_bridge" / "configs" / "qwen3_gqa2_hd24_tied.json"
COMPARED = ("mask_rate", "context_log_ratio_mean", "loss", "grad_norm", "clip_frac", "train_tokens", "lr")

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


def _problems():
    from p2o.data.problem import Problem

    return [Problem("p0", "What is 2 + 2?", "4"), Problem("p1", "What is 3 + 5?", "8"),
            Problem("p2", "What is 6 - 1?", "5")]


def _rows():
    """p0 and p2: two templated rollouts each (one correct); p1: two plain rollouts (one correct)."""
    from p2o.train.rows import TrainRow

    g = torch.Generator().manual_seed(4)
    ids = lambda n: torch.randint(1, 1000, (n,), generator=g).tolist()  # noqa: E731
    z = "Count on your fingers."
    texts = ["\\boxed{4}", "\\boxed{5}", "\\boxed{8}", "\\boxed{9}", "\\boxed{5}", "\\boxed{2}"]
    rows = []
    for i, text in enumerate(texts):
        group = i // 2
        x = ids(5 + group)
        templated = group != 1
        xz = ids(4) + x if templated else x
        rows.append(TrainRow(f"p{group}", group, x, xz, ids(3 + i % 3), text, "stop", z if templated else "", 0))
    return rows


def _trainer_step(model_dir: str, use_kernels: bool, ratio_low: float | None, verify) -> dict:
    from megatron_bridge.policy import MegatronPolicy
    from p2o.algo.grpo import GRPOLoss
    from p2o.config import load_config
    from p2o.telemetry.progress import make_bar
    from p2o.train.distributed_control import ProcessGroupControl
    from p2o.train.loop import Trainer
    from p2o.train.runtime import Runtime

    cfg = load_config(None, ["model.path=tiny-qwen3", "rollout.n=2", "rollout.prompts_per_step=3",
                             "grpo.ppo_epochs=2", "grpo.micro_batch_size=2", "optim.lr=1e-2", "optim.eps=1e-3",
                             "optim.warmup_steps=0", f"train.use_kernels={str(use_kernels).lower()}"])
    if ratio_low is not None:
        cfg.p2o.ratio_low = ratio_low
    policy = MegatronPolicy.from_config(cfg, model_dir)
    calls = {"dual": 0, "fused_loss": 0}
    def counted(*a, _f=policy.dual_logprobs, **kw):
        calls["dual"] += 1
        return _f(*a, **kw)
    policy.dual_logprobs = counted
    parts = Runtime(run_dir=Path("."), control=ProcessGroupControl.single(), policy=policy,
                    rollout=SimpleNamespace(verify=verify),
                    metrics=SimpleNamespace(progress=lambda desc, total: make_bar(desc, total, enabled=False)),
                    train_problems=_problems())
    # count the calls of the loss's hidden-state capability (the fused GRPO-loss kernel path)
    patcher = mock.patch.object(GRPOLoss, "loss_from_hidden", autospec=True, side_effect=GRPOLoss.loss_from_hidden)
    fused = patcher.start()
    t = Trainer(cfg, parts)
    rows = _rows()
    metrics = t._score_and_mine(rows, _problems())
    tokens = t._old_logprobs(rows, metrics)
    metrics.update(t._update(rows, tokens))
    patcher.stop()
    calls["fused_loss"] = fused.call_count
    return dict(metrics=metrics, old=tokens.old, mask=tokens.mask, calls=calls)


def loop_worker(model_dir: str, out_file: str) -> None:
    from megatron_bridge.parallel import shutdown_parallel
    from megatron_bridge.policy import MegatronPolicy
    from p2o.config import load_config
    from p2o.reward import Verifier
    from p2o.train.policy import SequenceBatch

    with Verifier(load_config().reward) as verifier:
        probe = _trainer_step(model_dir, False, None, verifier.score_many)
        # Context log-ratios of the templated tokens under the initial weights: cut between two neighbours.
        rows = [r for r in _rows() if r.templated]
        policy = MegatronPolicy.from_config(load_config(None, ["grpo.micro_batch_size=2"]), model_dir)
        lp_x, lp_xz = policy.dual_logprobs(SequenceBatch([r.train_prompt_ids for r in rows], [r.response_ids for r in rows]),
                                           SequenceBatch([r.gen_prompt_ids for r in rows], [r.response_ids for r in rows]))
        d = torch.sort(lp_x - lp_xz).values
        k = len(d) // 2
        cut = float((d[k - 1] + d[k]) / 2)
        results = {"probe": probe, "gap": float(d[k] - d[k - 1]),
                   **{k_: _trainer_step(model_dir, k_, math.exp(cut), verifier.score_many) for k_ in (False, True)}}
    torch.save(results, out_file)
    shutdown_parallel()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from p2o.models import resolve_model_dir

    model_dir = str(resolve_model_dir(str(CONFIG), init_seed=5))
    out = tmp_path_factory.mktemp("kernel_loop") / "runs.pt"
    spawn(loop_worker, 1, (model_dir, str(out)))
    return torch.load(out)


def test_templated_step_same_metrics_with_kernels(runs):
    ref, fused = runs[False], runs[True]
    assert ref["calls"] == {"dual": 1, "fused_loss": 0}
    assert fused["calls"]["dual"] == 1 and fused["calls"]["fused_loss"] > 0
    assert runs["gap"] > 1e-5  # the mask's bound is far from every token's ratio (no fp32 coin flips)
    assert 0 < ref["metrics"]["mask_rate"] < 1  # the mask drops some templated tokens, keeps others
    assert ref["metrics"]["optimizer_steps"] == fused["metrics"]["optimizer_steps"] == 2
    assert ref["metrics"]["clip_frac"] > 0  # the second PPO epoch clips some ratios
    for key in COMPARED:
        assert fused["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(fused["old"], ref["old"], rtol=0, atol=2e-5)
    assert torch.equal(fused["mask"], ref["mask"])
    # Without the narrow bound (default 0.01 .. 10) nothing is masked: the bound above is what masks.
    assert runs["probe"]["metrics"]["mask_rate"] == 0.0
