"""GRPO advantages and the clipped loss (standalone and fused with the LM head) against fp64 references.

The kernels are backends of `p2o.algo.grpo`: they take the loss's numbers (`GRPOLoss.knobs()`) and the per-token
aggregation weights of `p2o.algo.grpo.token_weights`; the references below are independent of both (verl's
`compute_policy_loss` + `agg_loss` written out in fp64).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import kernels.ops.fused_linear_logprob as flp_ops
from kernels import (
    FusedLinearGRPOLoss,
    fused_linear_grpo_loss,
    grouped_advantages,
    grpo_token_loss,
    token_advantages,
)
from kernels.ops.grpo_loss import ADV_NORMS, KL_TYPES
from p2o.algo.grpo import token_weights

BACKENDS = ["triton", "torch"]
# Elementwise fp32 math vs fp64: ~1e-7 relative; 1e-5 covers losses/gradients of O(1) summed over ~100 tokens.
ELEM_TOL = dict(atol=1e-5, rtol=1e-5)
# Through the LM head (H=72 dot products in fp32): as in test_fused_linear_logprob.
HEAD_TOL = dict(atol=1e-4, rtol=1e-4)


@dataclass(frozen=True)
class LossCase:
    """One set of loss settings (`p2o.algo.grpo.GRPOLoss`'s numbers plus the aggregation mode)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 3.0
    loss_agg: str = "token-mean"
    kl_coef: float = 0.0
    kl_type: str = "k3"

    def knobs(self) -> dict:
        return dict(clip_low=self.clip_low, clip_high=self.clip_high, dual_clip=self.dual_clip, kl_coef=self.kl_coef,
                    kl_type=self.kl_type)


def agg_weights(mask, normaliser, loss_agg, seq_ids):
    """The kernels' weights [T]: `p2o.algo.grpo.token_weights` with the global count ``normaliser``, times mask."""
    lens = torch.bincount(seq_ids).tolist() if seq_ids is not None else [mask.shape[0]]
    w = token_weights(lens, loss_agg, num_sequences=normaliser, num_tokens=normaliser, max_new_tokens=1)
    return w * mask


# ----------------------------------------------------------------------------- references (fp64, plain torch)
def ref_advantages(rewards, group_ids, adv_norm, eps, valid=None):
    """Loop-per-group reference: unbiased std; singleton groups have mean 0, std 1; invalid rows get 0."""
    r = rewards.double().tolist()
    ids = group_ids.tolist()
    ok = [True] * len(r) if valid is None else valid.tolist()
    kept = [x for x, v in zip(r, ok, strict=True) if v]
    batch_std = torch.tensor(kept, dtype=torch.float64).std().item() if len(kept) > 1 else 1.0
    out = [0.0] * len(r)
    for gid in set(i for i, v in zip(ids, ok, strict=True) if v):
        members = [j for j, (i, v) in enumerate(zip(ids, ok, strict=True)) if v and i == gid]
        vals = torch.tensor([r[j] for j in members], dtype=torch.float64)
        mean, std = (0.0, 1.0) if len(members) == 1 else (vals.mean().item(), vals.std().item())
        for j in members:
            a = r[j] - mean
            if adv_norm == "group":
                a /= std + eps
            elif adv_norm == "batch":
                a /= batch_std + eps
            out[j] = a
    return torch.tensor(out, dtype=torch.float64)


def ref_token_loss(logp, old, adv, mask, normaliser, seq_ids, ref, p: LossCase):
    """verl's compute_policy_loss (dual-clip) + KL + agg_loss, differentiable w.r.t. logp."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - p.clip_low, 1 + p.clip_high)
    clip1 = torch.maximum(pg1, pg2)
    if p.dual_clip > 0:
        clip2 = torch.minimum(-adv * p.dual_clip, clip1)
        pg = torch.where(adv < 0, clip2, clip1)
    else:
        pg = clip1
    if p.kl_coef:
        if p.kl_type == "k1":
            kl = logp - ref
        else:  # verl's low_var_kl, with its clamps
            d = torch.clamp(ref - logp, -20.0, 20.0)
            kl = torch.clamp(torch.exp(d) - d - 1, -10.0, 10.0)
        pg = pg + p.kl_coef * kl
    lm = pg * mask
    if p.loss_agg == "seq-mean-token-mean":
        total = 0
        for s in seq_ids.unique():
            sel = seq_ids == s
            total = total + lm[sel].sum() / sel.sum()
        return total / normaliser
    return lm.sum() / normaliser


def packed_batch(n_seq=7, seed=0):
    """Ragged sequences packed back to back: seq_ids [T], with lengths 1..9."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 10, (n_seq,), generator=g)
    return torch.repeat_interleave(torch.arange(n_seq), lengths)


# ----------------------------------------------------------------------------- advantages
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adv_norm", ADV_NORMS)
def test_grouped_advantages(backend, adv_norm):
    g = torch.Generator().manual_seed(1)
    # groups of sizes 1..6 in shuffled order, non-contiguous ids, one all-equal group, two singletons
    group_ids = torch.tensor([40, 7, 7, 40, 3, 7, 40, 12, 12, 12, 12, 99, 3, 40, 5, 5, 5, 5, 5, 5, 77])
    rewards = torch.rand(group_ids.shape[0], generator=g).round()
    rewards[[7, 8, 9, 10]] = 1.0  # group 12: all correct -> zero advantage
    valid = torch.ones_like(rewards, dtype=torch.bool)
    valid[[2, 15]] = False
    for v in (None, valid):
        got = grouped_advantages(rewards, group_ids, adv_norm, 1e-6, v, backend=backend)
        want = ref_advantages(rewards, group_ids, adv_norm, 1e-6, v)
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)
        assert (got[[7, 8, 9, 10]] == 0).all()
    assert got[2] == 0 and got[15] == 0


def test_advantages_inputs():
    r = torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="adv_norm"):
        grouped_advantages(r, torch.tensor([0, 0]), "mean")
    with pytest.raises(ValueError, match="group_ids must have shape"):
        grouped_advantages(r, torch.tensor([0]))
    with pytest.raises(ValueError, match="NaN"):
        grouped_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    assert (grouped_advantages(r, torch.tensor([0, 0]), valid=torch.tensor([False, False])) == 0).all()
    assert token_advantages(torch.tensor([1.0, -2.0]), torch.tensor([0, 0, 1])).tolist() == [1.0, 1.0, -2.0]


# ----------------------------------------------------------------------------- token loss
LOSS_CASES = [
    LossCase(),                                                             # paper: dual clip 3, token-mean
    LossCase(clip_low=0.2, clip_high=0.28, dual_clip=0.0, loss_agg="seq-mean-token-mean"),
    LossCase(dual_clip=2.0, loss_agg="seq-mean-token-sum-norm", kl_coef=0.1, kl_type="k3"),
    LossCase(kl_coef=0.05, kl_type="k1", loss_agg="seq-mean-token-mean"),
]


def loss_inputs(seq_ids, seed=0):
    T = seq_ids.shape[0]
    g = torch.Generator().manual_seed(seed)
    logp = -3 * torch.rand(T, generator=g)
    old = logp + 0.4 * torch.randn(T, generator=g)  # ratios ~ 0.3..3: every clip branch is hit
    old[0] = logp[0] + 25.0  # beyond the +-20 log-ratio clamp
    ref = logp + 0.3 * torch.randn(T, generator=g)
    ref[1] = logp[1] + 3.0  # k3 = e^3 - 4 > 10: clamped
    ref[2] = logp[2] - 25.0  # beyond the +-20 log-ratio clamp of k3
    adv = token_advantages(torch.randn(int(seq_ids.max()) + 1, generator=g), seq_ids)
    mask = (torch.rand(T, generator=g) > 0.2).float()
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("params", LOSS_CASES, ids=lambda p: f"{p.loss_agg}-dual{p.dual_clip}-kl{p.kl_coef}{p.kl_type}")
def test_token_loss_matches_reference(backend, params):
    seq_ids = packed_batch()
    logp, old, ref, adv, mask = loss_inputs(seq_ids)
    normaliser = 123.0  # a global normaliser larger than this micro-batch's count
    lp = logp.clone().requires_grad_()
    out = grpo_token_loss(lp, old, adv, agg_weights(mask, normaliser, params.loss_agg, seq_ids), ref_logprobs=ref,
                          **params.knobs(), backend=backend)
    out.loss.backward()
    lp64 = logp.double().requires_grad_()
    want = ref_token_loss(lp64, old.double(), adv.double(), mask.double(), normaliser, seq_ids, ref.double(), params)
    want.backward()
    torch.testing.assert_close(out.loss.double(), want.detach(), **ELEM_TOL)
    torch.testing.assert_close(lp.grad.double(), lp64.grad, **ELEM_TOL)
    torch.testing.assert_close(out.per_token_loss.sum().double(), want.detach(), **ELEM_TOL)
    assert 0 < out.clip_fraction < 1
    assert (out.kl is not None) == (params.kl_coef != 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_term_value_and_gradient_hand_computed(backend):
    """Zero advantages leave only the KL term: loss = kl_coef * sum_t w_t KL_t, by hand (d = ref - logp)."""
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    ref = torch.tensor([-1.5, -1.0, 2.5, -3.0])  # d = -0.5, 1, 3, 0
    e = torch.e
    k3 = [e ** -0.5 - 0.5, e - 2.0, 10.0, 0.0]  # e^d - d - 1; e^3 - 4 = 16.09 is clamped to 10
    dk3 = [1 - e ** -0.5, 1 - e, 0.0, 0.0]  # d k3 / d logp = 1 - e^d; 0 where clamped
    cases = {"k1": ([0.5, -1.0, -3.0, 0.0], [1.0] * 4), "k3": (k3, dk3)}
    for kind, (kl, dkl) in cases.items():
        lp = logp.clone().requires_grad_()
        out = grpo_token_loss(lp, logp, torch.zeros(4), torch.ones(4) / 4, ref_logprobs=ref,
                              **LossCase(kl_coef=0.1, kl_type=kind).knobs(), backend=backend)
        out.loss.backward()
        assert out.loss.item() == pytest.approx(0.1 * sum(kl) / 4, rel=1e-6), kind
        torch.testing.assert_close(out.kl, torch.tensor(kl), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(lp.grad, 0.1 * torch.tensor(dkl) / 4, rtol=1e-6, atol=1e-7)


def test_params_follow_grpo_config():
    """The kernels cover every configurable choice and take `GRPOLoss`'s numbers, which are the config's."""
    from p2o.algo.grpo import GRPOLoss
    from p2o.config import GRPOConfig, choices
    assert choices("grpo.adv_norm") == ADV_NORMS
    assert {c.loss_agg for c in LOSS_CASES} == set(choices("grpo.loss_agg"))
    assert choices("grpo.kl_type") == KL_TYPES
    cfg = GRPOConfig()
    knobs = GRPOLoss.from_config(cfg).knobs()
    assert knobs == dict(clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                         kl_coef=cfg.kl_coef, kl_type=cfg.kl_type)
    assert set(knobs) == set(LossCase().knobs())


def test_loss_inputs_are_checked():
    from p2o.algo.grpo import GRPOLoss
    with pytest.raises(ValueError, match="loss_agg"):
        token_weights([2], "mean", 1, 2, 2)
    with pytest.raises(ValueError, match="dual_clip"):
        GRPOLoss(0.2, 0.2, dual_clip=0.5)
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_token_loss(x, x, x, x + 1, **LossCase(kl_coef=0.1).knobs())
    with pytest.raises(ValueError, match="weights must have shape"):
        grpo_token_loss(x, x, x, torch.ones(3), **LossCase().knobs())
    with pytest.raises(ValueError, match="kl_type"):
        grpo_token_loss(x, x, x, x + 1, **LossCase(kl_type="k2").knobs())


# ----------------------------------------------------------------------------- fused with the LM head
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("params", LOSS_CASES[:3], ids=["paper", "seq-mean-token-mean", "kl-k3"])
def test_fused_linear_grpo_loss(backend, params, monkeypatch):
    T, H, V = 37, 72, 1000
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * H ** -0.5 * 3
    targets = torch.randint(0, V, (T,), generator=g)
    seq_ids = torch.repeat_interleave(torch.arange(6), torch.tensor([9, 1, 7, 5, 8, 7]))
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    group_ids = torch.tensor([0, 0, 1, 1, 2, 3])  # group 1 all correct (A = 0), group 3 a singleton
    adv = token_advantages(grouped_advantages(rewards, group_ids, backend=backend), seq_ids)
    with torch.no_grad():
        z = torch.log_softmax(hidden.double() @ weight.double().T / 0.6, -1)
        cur = z.gather(1, targets[:, None])[:, 0].float()
    old = cur + 0.3 * torch.randn(T, generator=g)
    ref = cur + 0.2 * torch.randn(T, generator=g)
    mask = torch.ones(T)
    mask[[3, 4, 20]] = 0

    seen = []
    real = flp_ops.flp_dz_triton

    def spy(h, *a):
        seen.append(h.shape[0])
        return real(h, *a)
    monkeypatch.setattr(flp_ops, "flp_dz_triton", spy)

    h_, w_ = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = fused_linear_grpo_loss(h_, w_, targets, old, adv, agg_weights(mask, 50.0, params.loss_agg, seq_ids),
                                 ref_logprobs=ref, **params.knobs(), temperature=0.6, backend=backend, split_v=384,
                                 vocab_chunk=512)
    out.loss.backward()

    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logp64 = torch.log_softmax(h64 @ w64.T / 0.6, -1).gather(1, targets[:, None])[:, 0]
    want = ref_token_loss(logp64, old.double(), adv.double(), mask.double(), 50.0, seq_ids, ref.double(), params)
    want.backward()
    torch.testing.assert_close(out.loss.double(), want.detach(), **HEAD_TOL)
    torch.testing.assert_close(out.logprobs.double(), logp64.detach(), **HEAD_TOL)
    torch.testing.assert_close(h_.grad.double(), h64.grad, **HEAD_TOL)
    torch.testing.assert_close(w_.grad.double(), w64.grad, **HEAD_TOL)
    if backend == "triton" and params.kl_coef == 0:
        live = int(((mask > 0) & (adv != 0)).sum())
        assert seen and all(n <= live < T for n in seen), "masked and zero-advantage rows must be skipped"


def test_fused_forward_without_grad():
    T, H, V = 5, 8, 40
    hidden, weight = torch.randn(T, H), torch.randn(V, H)
    targets = torch.randint(0, V, (T,))
    with torch.no_grad():
        out = fused_linear_grpo_loss(hidden, weight, targets, torch.zeros(T) - 3, torch.ones(T), torch.ones(T) / 5.0,
                                     **LossCase().knobs())
        module = FusedLinearGRPOLoss(**LossCase().knobs())(hidden, weight, targets, torch.zeros(T) - 3, torch.ones(T),
                                                           torch.ones(T) / 5.0)
    assert out.loss.requires_grad is False and torch.isfinite(out.loss)
    assert module.loss == out.loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_on_policy_tokens_use_the_current_logprob(backend):
    """Tokens flagged on_policy ignore their old_logprobs entry (poisoned with NaN here) and use the log-prob of
    the same pass: ratio 1, so their loss is -A w and the gradient is the plain policy gradient."""
    T, H, V = 23, 40, 300
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * H ** -0.5 * 3
    targets = torch.randint(0, V, (T,), generator=g)
    adv = torch.randn(T, generator=g)
    on_policy = torch.arange(T) % 3 != 0
    with torch.no_grad():
        cur = torch.log_softmax(hidden.double() @ weight.double().T, -1).gather(1, targets[:, None])[:, 0]
    old = torch.where(on_policy, torch.full((T,), float("nan")), cur.float() + 0.4 * torch.randn(T, generator=g))
    params = LOSS_CASES[0]

    h_, w_ = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = fused_linear_grpo_loss(h_, w_, targets, old, adv, torch.ones(T) / T, **params.knobs(), backend=backend,
                                 on_policy=on_policy)
    out.loss.backward()

    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logp64 = torch.log_softmax(h64 @ w64.T, -1).gather(1, targets[:, None])[:, 0]
    old64 = torch.where(on_policy, logp64.detach(), old.double())
    want = ref_token_loss(logp64, old64, adv.double(), torch.ones(T, dtype=torch.float64), float(T), None, None, params)
    want.backward()
    torch.testing.assert_close(out.loss.double(), want.detach(), **HEAD_TOL)
    torch.testing.assert_close(h_.grad.double(), h64.grad, **HEAD_TOL)
    torch.testing.assert_close(w_.grad.double(), w64.grad, **HEAD_TOL)
    assert not out.clipped[on_policy].any()
