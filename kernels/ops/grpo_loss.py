"""Backends of GRPO's advantages and clipped policy-gradient loss (the definition: `p2o.algo.grpo`).

The formulas, their parameters and the loss aggregation are defined once, in `p2o.algo.grpo` (this package
imports nothing from `p2o`); these kernels compute the same quantities in Triton (and a torch twin for CPU),
taking the parameters as plain numbers. `tests/kernels/test_grpo_loss.py` holds an independent fp64 reference.

Advantages (`_group_advantage_kernel`, one program per group over rewards sorted by group):

    group: A_i = (r_i - mean_g) / (std_g + eps)      batch: A_i = (r_i - mean_g) / (std_batch + eps)
    none:  A_i = r_i - mean_g                        (Dr. GRPO, arXiv 2503.20783)

std is unbiased (Bessel). A singleton group has mean 0 and std 1, so its advantage is its raw reward r (/ (1 + eps)
under group norm), as in verl's `compute_grpo_outcome_advantage` (and `p2o.algo.grpo.group_advantages`). Rows
marked invalid take no part in any statistic and get A = 0.

Per-token loss (`_grpo_token_loss_kernel`, elementwise over the packed tokens), verl's dual-clip PPO:

    r = exp(clamp(logp - old, -20, 20))
    pg = max(-A r, -A clamp(r, 1 - clip_low, 1 + clip_high))
    pg = min(pg, -A dual_clip)   where A < 0 and dual_clip > 0
    l  = pg + kl_coef * KL,  KL = k1: logp - ref  |  k3: min(exp(d) - d - 1, 10), d = clamp(ref - logp, -20, 20)
         (verl's kl_penalty "low_var_kl"; the gradient is 0 where a clamp is active)
    loss = sum_t w_t l_t

w_t is the caller's aggregation weight (`p2o.algo.grpo.token_weights`: the loss aggregation with the GLOBAL
normaliser of the optimizer step, times any mask), so the kernels know nothing about aggregation modes. The
kernel also returns coef_t = w_t dl_t/dlogp_t, which is all the backward needs: fused with the log-prob kernel
the loss is one autograd node from hidden states, and rows with coef = 0 (masked, zero advantage, clipped) are
skipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.dispatch import resolve_backend
from kernels.ops.fused_linear_logprob import LogprobOptions, fused_linear_logprob_backward, fused_linear_logprob_forward
from kernels.ops.vocab_stats import SoftmaxStats

ADV_NORMS = ("group", "batch", "none")
KL_TYPES = ("k1", "k3")
LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


# ----------------------------------------------------------------------------- Triton kernels
@triton.jit
def _group_advantage_kernel(r_ptr, offsets_ptr, adv_ptr, batch_std, eps,
                            NORM: tl.constexpr, BLOCK: tl.constexpr):
    """NORM: 0 group std, 1 batch std, 2 none. r/adv are sorted by group; offsets [G + 1]."""
    g = tl.program_id(0)
    start = tl.load(offsets_ptr + g)
    end = tl.load(offsets_ptr + g + 1)
    n = end - start
    total = tl.zeros((BLOCK,), tl.float32)
    for i0 in range(start, end, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        total += tl.load(r_ptr + idx, mask=idx < end, other=0.0)
    mean = tl.where(n == 1, 0.0, tl.sum(total, axis=0) / n)
    sq = tl.zeros((BLOCK,), tl.float32)
    for i0 in range(start, end, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        d = tl.where(idx < end, tl.load(r_ptr + idx, mask=idx < end, other=0.0) - mean, 0.0)
        sq += d * d
    std = tl.where(n == 1, 1.0, tl.sqrt(tl.sum(sq, axis=0) / tl.maximum(n - 1, 1)))
    if NORM == 1:
        std = batch_std + 0.0 * std
    for i0 in range(start, end, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        a = tl.load(r_ptr + idx, mask=idx < end, other=0.0) - mean
        if NORM != 2:
            a = a / (std + eps)
        tl.store(adv_ptr + idx, a, mask=idx < end)


@triton.jit
def _grpo_token_loss_kernel(logp_ptr, old_ptr, adv_ptr, w_ptr, ref_ptr, loss_ptr, coef_ptr, clipped_ptr, kl_ptr,
                            T, clip_low, clip_high, dual_clip, kl_coef,
                            HAS_KL: tl.constexpr, K3: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < T
    logp = tl.load(logp_ptr + offs, mask=mask, other=0.0)
    old = tl.load(old_ptr + offs, mask=mask, other=0.0)
    adv = tl.load(adv_ptr + offs, mask=mask, other=0.0)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    delta = logp - old
    log_ratio = tl.minimum(tl.maximum(delta, -20.0), 20.0)  # LOG_RATIO_CLAMP
    ratio = tl.exp(log_ratio)
    d_ratio = tl.where((delta >= -20.0) & (delta <= 20.0), ratio, 0.0)  # d ratio / d logp
    pg1 = -adv * ratio
    pg2 = -adv * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
    pg = tl.maximum(pg1, pg2)
    d_pg = tl.where(pg1 >= pg2, -adv * d_ratio, 0.0)
    clipped = pg2 > pg1
    pg3 = -adv * dual_clip
    dual = (adv < 0) & (dual_clip > 0) & (pg3 < pg)
    pg = tl.where(dual, pg3, pg)
    d_pg = tl.where(dual, 0.0, d_pg)
    clipped = clipped | dual
    loss = pg
    d_loss = d_pg
    if HAS_KL:
        ref = tl.load(ref_ptr + offs, mask=mask, other=0.0)
        if K3:  # verl's low_var_kl: log-ratio clamped to +-20, estimate clamped to 10 (zero gradient there)
            d = ref - logp
            dc = tl.minimum(tl.maximum(d, -20.0), 20.0)
            kl = tl.exp(dc) - dc - 1.0
            d_kl = tl.where((d >= -20.0) & (d <= 20.0) & (kl <= 10.0), 1.0 - tl.exp(dc), 0.0)
            kl = tl.minimum(kl, 10.0)
        else:
            kl = logp - ref
            d_kl = tl.full((BLOCK,), 1.0, tl.float32)
        loss += kl_coef * kl
        d_loss += kl_coef * d_kl
        tl.store(kl_ptr + offs, kl, mask=mask)
    tl.store(loss_ptr + offs, w * loss, mask=mask)
    tl.store(coef_ptr + offs, w * d_loss, mask=mask)
    tl.store(clipped_ptr + offs, clipped.to(tl.float32), mask=mask)


# ----------------------------------------------------------------------------- advantages (host)
def _check_1d(name: str, t: torch.Tensor, n: int) -> None:
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}]; got {tuple(t.shape)}")


def grouped_advantages_forward(rewards: torch.Tensor, group_ids: torch.Tensor, adv_norm: str = "group",
                               eps: float = 1e-6, valid: torch.Tensor | None = None,
                               backend: str = "auto") -> torch.Tensor:
    """Advantages [N] fp32 from rewards [N] and group ids [N] (any integers; groups of any size)."""
    if adv_norm not in ADV_NORMS:
        raise ValueError(f"adv_norm: got {adv_norm!r}; expected one of {', '.join(ADV_NORMS)}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N]; got {tuple(rewards.shape)}")
    n = rewards.shape[0]
    _check_1d("group_ids", group_ids, n)
    if valid is not None:
        _check_1d("valid", valid, n)
    r = rewards.float()
    if not torch.isfinite(r).all():
        raise ValueError("rewards contain NaN/inf; mark unscorable rows with `valid=False` instead")
    keep = (valid.bool() if valid is not None else torch.ones(n, dtype=torch.bool, device=r.device)).nonzero()[:, 0]
    adv = torch.zeros(n, dtype=torch.float32, device=r.device)
    if keep.numel() == 0:
        return adv
    rk = r[keep]
    _, dense = torch.unique(group_ids[keep], return_inverse=True)
    order = torch.argsort(dense, stable=True)
    counts = torch.bincount(dense)
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=r.device)
    offsets[1:] = torch.cumsum(counts, 0)
    batch_std = float(rk.std()) if rk.numel() > 1 else 1.0
    r_sorted = rk[order].contiguous()
    if resolve_backend(backend, r.device) == "triton":
        adv_sorted = torch.full_like(r_sorted, float("nan"))
        _group_advantage_kernel[(counts.numel(),)](r_sorted, offsets, adv_sorted, batch_std, eps,
                                                    NORM=ADV_NORMS.index(adv_norm), BLOCK=128)
    else:
        adv_sorted = _group_advantage_torch(r_sorted, dense[order], counts, adv_norm, eps, batch_std)
    out = torch.empty_like(rk)
    out[order] = adv_sorted
    adv[keep] = out
    return adv


def _group_advantage_torch(r: torch.Tensor, gid: torch.Tensor, counts: torch.Tensor, adv_norm: str, eps: float,
                           batch_std: float) -> torch.Tensor:
    """Same rules as `_group_advantage_kernel` with scatter-adds; r and gid sorted by group."""
    n = counts.float()
    mean = torch.zeros_like(n).index_add_(0, gid, r) / n
    mean = torch.where(counts == 1, torch.zeros_like(mean), mean)
    dev = r - mean[gid]
    var = torch.zeros_like(n).index_add_(0, gid, dev * dev) / (n - 1).clamp(min=1)
    std = torch.where(counts == 1, torch.ones_like(var), var.sqrt())
    if adv_norm == "none":
        return dev
    denom = torch.full_like(std, batch_std) if adv_norm == "batch" else std
    return dev / (denom[gid] + eps)


# ----------------------------------------------------------------------------- token loss (host)
@dataclass
class TokenLossTerms:
    """Per-token outputs of the loss kernel, each [T] fp32: w*l, w*dl/dlogp, clip flag (0/1), KL or None."""

    weighted_loss: torch.Tensor
    coef: torch.Tensor
    clipped: torch.Tensor
    kl: torch.Tensor | None


def grpo_token_terms(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, weight: torch.Tensor,
                     ref_logp: torch.Tensor | None, clip_low: float, clip_high: float, dual_clip: float,
                     kl_coef: float, kl_type: str, backend: str = "auto") -> TokenLossTerms:
    """Run the per-token loss (Triton, or the same formulas in torch); all tensors [T], weight = w_t."""
    T = logp.shape[0]
    for name, t in (("old_logprobs", old_logp), ("advantages", adv), ("weights", weight)):
        _check_1d(name, t, T)
    if kl_type not in KL_TYPES:
        raise ValueError(f"kl_type: got {kl_type!r}; expected one of {', '.join(KL_TYPES)}")
    has_kl = kl_coef != 0
    if has_kl:
        if ref_logp is None:
            raise ValueError("kl_coef != 0 needs ref_logprobs [T] (reference-policy log-probs)")
        _check_1d("ref_logprobs", ref_logp, T)
    f32 = [x.detach().float().contiguous() for x in (logp, old_logp, adv, weight)]
    ref = ref_logp.detach().float().contiguous() if has_kl else None
    if resolve_backend(backend, logp.device) == "torch":
        return _grpo_token_terms_torch(*f32, ref, clip_low, clip_high, dual_clip, kl_coef, kl_type)
    out = [torch.full((T,), float("nan"), dtype=torch.float32, device=logp.device) for _ in range(4)]
    if T:
        _grpo_token_loss_kernel[(triton.cdiv(T, 1024),)](
            *f32, ref if has_kl else f32[0], *out, T, float(clip_low), float(clip_high), float(dual_clip),
            float(kl_coef), HAS_KL=has_kl, K3=kl_type == "k3", BLOCK=1024)
    return TokenLossTerms(out[0], out[1], out[2], out[3] if has_kl else None)


def _grpo_token_terms_torch(logp, old, adv, w, ref, clip_low: float, clip_high: float, dual_clip: float,
                            kl_coef: float, kl_type: str) -> TokenLossTerms:
    """Torch twin of `_grpo_token_loss_kernel` (CPU production path)."""
    delta = logp - old
    ratio = torch.exp(delta.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    d_ratio = torch.where(delta.abs() <= LOG_RATIO_CLAMP, ratio, torch.zeros_like(ratio))
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    pg = torch.maximum(pg1, pg2)
    d_pg = torch.where(pg1 >= pg2, -adv * d_ratio, torch.zeros_like(ratio))
    clipped = pg2 > pg1
    pg3 = -adv * dual_clip
    dual = (adv < 0) & (pg3 < pg) if dual_clip > 0 else torch.zeros_like(clipped)
    pg = torch.where(dual, pg3, pg)
    d_pg = torch.where(dual, torch.zeros_like(d_pg), d_pg)
    kl = None
    if ref is not None:
        if kl_type == "k3":
            d = ref - logp
            dc = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            kl = torch.exp(dc) - dc - 1
            live = (d.abs() <= LOG_RATIO_CLAMP) & (kl <= K3_CLAMP)
            kl, d_kl = kl.clamp(max=K3_CLAMP), torch.where(live, 1 - torch.exp(dc), torch.zeros_like(dc))
        else:
            kl, d_kl = logp - ref, torch.ones_like(logp)
        pg, d_pg = pg + kl_coef * kl, d_pg + kl_coef * d_kl
    return TokenLossTerms(w * pg, w * d_pg, (clipped | dual).float(), kl)


def _outputs(ctx, loss: torch.Tensor, terms: TokenLossTerms, *extra: torch.Tensor):
    """(loss, *extra, w*l, clipped, kl) with everything but the loss marked non-differentiable."""
    kl = terms.kl if terms.kl is not None else loss.new_empty(0)
    rest = (*extra, terms.weighted_loss, terms.clipped, kl)
    ctx.mark_non_differentiable(*rest)
    return (loss, *rest)


class GRPOTokenLossFunction(torch.autograd.Function):
    """Autograd node: logp [T] -> (loss, w*l [T], clipped [T], kl [T] or empty); only loss is differentiable.

    Positional arguments: logp, old_logp, adv, weight, ref_logp (or None), clip_low, clip_high, dual_clip, kl_coef,
    kl_type, backend.
    """

    @staticmethod
    def forward(ctx, logp, old_logp, adv, weight, ref_logp, clip_low, clip_high, dual_clip, kl_coef, kl_type, backend):
        terms = grpo_token_terms(logp, old_logp, adv, weight, ref_logp, clip_low, clip_high, dual_clip, kl_coef,
                                 kl_type, backend)
        ctx.save_for_backward(terms.coef)
        return _outputs(ctx, terms.weighted_loss.sum(), terms)

    @staticmethod
    def backward(ctx, d_loss, *_):
        (coef,) = ctx.saved_tensors
        return (coef * d_loss,) + (None,) * 10


class FusedLinearGRPOLossFunction(torch.autograd.Function):
    """Autograd node: (hidden [T, H], weight [V_local, H]) -> (loss, logp [T], w*l [T], clipped [T], kl [T] or empty).

    Positional arguments: hidden, weight, targets, old_logp, adv, agg_weight, ref_logp (or None), clip_low,
    clip_high, dual_clip, kl_coef, kl_type, opts (`LogprobOptions`), on_policy (optional bool [T]: tokens whose old
    log-prob is the current one, computed in this pass).

    Only the loss is differentiable; its backward is the fused log-prob backward with upstream coef * dL.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, old_logp, adv, agg_weight, ref_logp, clip_low, clip_high, dual_clip,
                kl_coef, kl_type, opts: LogprobOptions, on_policy=None):
        logp, _, stats = fused_linear_logprob_forward(hidden, weight, targets, opts)
        if on_policy is not None:  # these tokens' old log-prob is the current one (ratio exactly 1)
            old_logp = torch.where(on_policy, logp, old_logp)
        terms = grpo_token_terms(logp, old_logp, adv, agg_weight, ref_logp, clip_low, clip_high, dual_clip, kl_coef,
                                 kl_type, opts.backend)
        ctx.save_for_backward(hidden, weight, targets, stats.lse, terms.coef)
        ctx.opts = opts
        return _outputs(ctx, terms.weighted_loss.sum(), terms, logp)

    @staticmethod
    def backward(ctx, d_loss, *_):
        hidden, weight, targets, lse, coef = ctx.saved_tensors
        stats = SoftmaxStats(lse, torch.empty(0), lse.new_zeros(lse.shape[0], 0))
        d_hidden, d_weight = fused_linear_logprob_backward(hidden, weight, targets, stats, coef * d_loss, None,
                                                           ctx.opts)
        return (d_hidden if ctx.needs_input_grad[0] else None, d_weight if ctx.needs_input_grad[1] else None,
                *(None,) * 12)
