"""Training temperature and the KL reference on the real Megatron backend, at TP=1 (one rank) and TP=2 (two ranks).

Per layout, from the same initial weights, with `rollout.temperature=0.6`:
  policy  `logprobs`, `dual_logprobs` (x and a longer x+z) and one `train_step` with `GRPOLoss` (PPO + dual clip +
          k3 KL against given reference log-probs), with `train.use_kernels` false (vocab-parallel log-softmax of
          logits / T) and true (the fused kernels, chunked torch on CPU);
  loop    two loop steps (`_score_and_mine`, `_old_logprobs`, `_update`) with `grpo.kl_coef=0.1` and the frozen
          reference `MegatronScorer.frozen`; one group has zero advantage;
  resume  the loop's policy saved, then a fresh policy + reference built as `build_runtime` does on resume and the
          checkpoint loaded: the reference is the initial model again, the policy the trained one.
The two-rank launch also builds the reference at PP=2 (its forward-only pipeline schedule without DDP).

The independent reference is transformers in float64: log_softmax(logits / 0.6), and the same loss (written out
here) back-propagated through it for the gradient norm. Tolerances: fp32 Megatron vs float64, log-probs 2e-5
absolute; loss 1e-5 and grad norm 1e-4 relative (sums over ~20 tokens and ~60k parameters).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[2] / "megatron_bridge" / "configs" / "qwen3_gqa2_hd24_tied.json"
T = 0.6

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


def _batches():
    from p2o.train.policy import SequenceBatch

    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(1, 1000, (n,), generator=g).tolist()  # noqa: E731
    x = [ids(3 + i % 3) for i in range(5)]
    responses = [ids(2 + i % 4) for i in range(5)]
    return SequenceBatch(x, responses), SequenceBatch([[7, 8, 9, 10, *p] for p in x], responses)


def _token_inputs(lp: torch.Tensor) -> dict[str, torch.Tensor]:
    """old = lp shifted by up to +-1.5 nats (every clip branch), advantages of both signs, token-mean weights with
    every fifth zeroed, reference = lp - U(0, 0.5)."""
    n = lp.numel()
    shift = torch.tensor([-1.5, -0.6, -0.1, 0.0, 0.1, 0.6, 1.5]).repeat(n // 7 + 1)[:n]
    w = torch.full((n,), 1.0 / n)
    w[2::5] = 0.0
    g = torch.Generator().manual_seed(11)
    return {"old_logprobs": lp + shift, "advantages": torch.tensor([-1.0, 0.7, -0.4]).repeat(n // 3 + 1)[:n],
            "weights": w, "ref_logprobs": lp - 0.5 * torch.rand(n, generator=g)}


def _cfg(tp: int, use_kernels: bool = False, extra: tuple = ()):
    from p2o.config import load_config

    return load_config(None, [f"parallel.tp={tp}", "rollout.temperature=0.6", "grpo.micro_batch_size=2",
                              "optim.lr=1e-2", "optim.eps=1e-3", "optim.warmup_steps=0", "model.path=tiny-qwen3",
                              f"train.use_kernels={str(use_kernels).lower()}", *extra])


def _policy_scenario(tp: int, use_kernels: bool, model_dir: str) -> dict:
    from megatron_bridge.policy import MegatronPolicy
    from p2o.algo.grpo import GRPOLoss

    policy = MegatronPolicy.from_config(_cfg(tp, use_kernels), model_dir)
    batch, batch_xz = _batches()
    lp = policy.logprobs(batch)
    inputs = _token_inputs(lp)
    res = {"logprobs": lp, "dual": policy.dual_logprobs(batch, batch_xz), "inputs": inputs}
    m = policy.train_step(batch, inputs, GRPOLoss(0.2, 0.2, 3.0, kl_coef=0.1, kl_type="k3"))
    res.update(loss=m.loss, grad_norm=m.grad_norm)
    return res


def _problems():
    from p2o.data.problem import Problem

    return [Problem("p0", "What is 2 + 2?", "4"), Problem("p1", "What is 3 + 5?", "8")]


def _loop_rows():
    """p0: two templated rollouts (one correct); p1: two plain rollouts, both correct (zero advantage)."""
    from p2o.train.rows import TrainRow

    batch, batch_xz = _batches()
    texts = ["\\boxed{4}", "\\boxed{5}", "\\boxed{8}", "\\boxed{8}"]
    return [TrainRow(f"p{i // 2}", i // 2, batch.prompt_ids[i], (batch_xz if i < 2 else batch).prompt_ids[i],
                     batch.response_ids[i], text, "stop", "Count." if i < 2 else "", 0)
            for i, text in enumerate(texts)]


def _loop_scenario(tp: int, model_dir: str, ckpt: str, verify) -> dict:
    from types import SimpleNamespace

    from megatron_bridge.policy import MegatronPolicy, MegatronScorer
    from p2o.telemetry.progress import make_bar
    from p2o.train.distributed_control import ProcessGroupControl
    from p2o.train.loop import Trainer
    from p2o.train.policy import SequenceBatch
    from p2o.train.runtime import Runtime

    cfg = _cfg(tp, extra=("grpo.kl_coef=0.1", "grpo.kl_type=k3", "rollout.n=2", "rollout.prompts_per_step=2"))
    policy = MegatronPolicy.from_config(cfg, model_dir)
    reference = MegatronScorer.frozen(cfg, model_dir)
    parts = Runtime(run_dir=Path("."), control=ProcessGroupControl.single(), policy=policy, reference=reference,
                    rollout=SimpleNamespace(verify=verify),
                    metrics=SimpleNamespace(progress=lambda desc, total: make_bar(desc, total, enabled=False)),
                    train_problems=_problems())
    t = Trainer(cfg, parts)
    rows = _loop_rows()
    on_x = SequenceBatch([r.train_prompt_ids for r in rows], [r.response_ids for r in rows])
    res: dict = {"steps": []}
    for _ in range(2):
        metrics = t._score_and_mine(rows, _problems())
        tokens = t._old_logprobs(rows, metrics)
        metrics.update(t._update(rows, tokens))
        res["steps"].append(dict(metrics=metrics, ref=tokens.ref, advantages=[r.advantage for r in rows]))
    res["trained"] = policy.logprobs(on_x)
    policy.save(ckpt)
    resumed = MegatronPolicy.from_config(cfg, model_dir)  # what build_runtime does on resume ...
    resumed_reference = MegatronScorer.frozen(cfg, model_dir)
    resumed.load(ckpt)  # ... and Trainer.resume then loads the policy's checkpoint
    res["resumed_policy"] = resumed.logprobs(on_x)
    res["resumed_reference"] = resumed_reference.logprobs(on_x)
    return res


def _pp2_reference(model_dir: str) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    from megatron_bridge.policy import MegatronScorer

    ps.destroy_model_parallel()
    return MegatronScorer.frozen(_cfg(1, extra=("parallel.pp=2",)), model_dir).logprobs(_batches()[0])


def fidelity_worker(model_dir: str, ckpt: str, out_file: str) -> None:
    import os

    import torch.distributed as dist

    from megatron_bridge.parallel import shutdown_parallel
    from p2o.config import load_config
    from p2o.reward import Verifier

    tp = int(os.environ["WORLD_SIZE"])  # every rank is one TP shard
    results = {f"policy_kernels={k}": _policy_scenario(tp, k, model_dir) for k in (False, True)}
    with Verifier(load_config(None, ["reward.workers=1"]).reward) as verifier:
        results["loop"] = _loop_scenario(tp, model_dir, ckpt, verifier.score_many)
    if tp == 2:
        results["reference_pp2"] = _pp2_reference(model_dir)
    if dist.get_rank() == 0:
        torch.save(results, out_file)
    dist.barrier()
    shutdown_parallel()


@pytest.fixture(scope="module")
def model_dir():
    from p2o.models import resolve_model_dir

    return str(resolve_model_dir(str(CONFIG), init_seed=5))


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    from megatron_bridge.launch import spawn

    out = {}
    for tp in (1, 2):
        d = tmp_path_factory.mktemp(f"fidelity_tp{tp}")
        spawn(fidelity_worker, tp, (model_dir, str(d / "ckpt"), str(d / "results.pt")))
        out[tp] = torch.load(d / "results.pt")
    return out


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()


def _hf_logprobs(model, batch, temperature: float) -> torch.Tensor:
    """float64 packed log softmax(logits / temperature)[response tokens], row by row (differentiable)."""
    out = []
    for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True):
        logits = model(input_ids=torch.tensor([p + r])).logits[0]
        logp = torch.log_softmax(logits / temperature, dim=-1)
        out.append(logp[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)])
    return torch.cat(out)


def _reference_loss(lp, i, clip=0.2, dual=3.0, kl_coef=0.1):
    """PPO with dual clip plus kl_coef * k3 (no clamp is active here), weighted by i["weights"]; float64."""
    ratio = torch.exp(lp - i["old_logprobs"].double())
    a = i["advantages"].double()
    pg = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip))
    pg = torch.where(a < 0, torch.minimum(pg, -a * dual), pg)
    d = i["ref_logprobs"].double() - lp
    return (i["weights"].double() * (pg + kl_coef * (torch.exp(d) - d - 1))).sum()


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("kernels", [False, True])
def test_logprobs_and_update_use_the_rollout_temperature(runs, hf, tp, kernels):
    run = runs[tp][f"policy_kernels={kernels}"]
    batch, batch_xz = _batches()
    with torch.no_grad():
        want, want_xz = _hf_logprobs(hf, batch, T), _hf_logprobs(hf, batch_xz, T)
        at_one = _hf_logprobs(hf, batch, 1.0)
    assert (want - at_one).abs().max() > 0.05  # the temperature matters far beyond the tolerance
    torch.testing.assert_close(run["logprobs"].double(), want, rtol=0, atol=2e-5)
    lp_x, lp_xz = run["dual"]
    torch.testing.assert_close(lp_x.double(), want, rtol=0, atol=2e-5)
    torch.testing.assert_close(lp_xz.double(), want_xz, rtol=0, atol=2e-5)
    # The update's loss and gradient: the same loss through the float64 model at T = 0.6.
    hf.zero_grad()
    lp = _hf_logprobs(hf, batch, T)
    loss = _reference_loss(lp, run["inputs"])
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in hf.parameters() if p.grad is not None))
    assert run["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert run["grad_norm"] == pytest.approx(float(grad_norm), rel=1e-4)


@pytest.mark.parametrize("tp", [1, 2])
def test_loop_step_with_kl_against_the_frozen_reference(runs, hf, tp):
    from p2o.train.policy import SequenceBatch

    loop = runs[tp]["loop"]
    rows = _loop_rows()
    on_x = SequenceBatch([r.train_prompt_ids for r in rows], [r.response_ids for r in rows])
    with torch.no_grad():
        initial = _hf_logprobs(hf, on_x, T)
    first, second = loop["steps"]
    assert first["advantages"][2] == first["advantages"][3] == 0  # p1: a zero-advantage group ...
    for step in (first, second):
        assert step["metrics"]["skipped_rows"] == 0  # ... still trained: the KL term pulls it
        # The reference scores every row on its training context x, at T, and is the initial model throughout.
        torch.testing.assert_close(step["ref"].double(), initial, rtol=0, atol=2e-5)
    assert first["metrics"]["kl_mean"] == pytest.approx(0.0, abs=1e-9)  # step 1: policy == reference
    assert second["metrics"]["kl_mean"] > 1e-6  # step 2: the policy has moved
    assert (loop["trained"].double() - initial).abs().max() > 1e-3
    # Resume: the reference is rebuilt from the model directory (the initial weights), the policy from the
    # checkpoint.
    torch.testing.assert_close(loop["resumed_reference"].double(), initial, rtol=0, atol=2e-5)
    torch.testing.assert_close(loop["resumed_policy"], loop["trained"], rtol=0, atol=1e-6)


def test_reference_under_pipeline_parallelism(runs, hf):
    with torch.no_grad():
        want = _hf_logprobs(hf, _batches()[0], T)
    torch.testing.assert_close(runs[2]["reference_pp2"].double(), want, rtol=0, atol=2e-5)


def test_loop_metrics_agree_across_tensor_parallel_sizes(runs):
    for a, b in zip(runs[1]["loop"]["steps"], runs[2]["loop"]["steps"], strict=True):
        for key in ("loss", "grad_norm", "kl_mean", "mask_rate", "clip_frac"):
            assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-8), key
