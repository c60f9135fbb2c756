"""GRPO advantages and the clipped policy loss, optionally fused with the LM head.

    adv = grouped_advantages(rewards, group_ids, adv_norm="group")          # [N] per sequence
    adv_tok = token_advantages(adv, seq_ids)                                # [T] packed tokens
    out = fused_linear_grpo_loss(hidden, weight, targets, old_logp, adv_tok, weights, clip_low=0.2, clip_high=0.2,
                                 dual_clip=3.0, kl_coef=0.0, kl_type="k3")
    out.loss.backward()                                                     # one autograd node from hidden states

These are backends of the one definition in `p2o.algo.grpo`: `GRPOLoss` holds (and validates) the loss's
parameters and calls `fused_linear_grpo_loss` with them as plain numbers (`GRPOLoss.loss_from_hidden`);
`weights` [T] are the per-token aggregation weights of `p2o.algo.grpo.token_weights` (global normaliser and
masks folded in). Option names follow `p2o.config.GRPOConfig`; the formulas are in `kernels.ops.grpo_loss`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels.ops.fused_linear_logprob import LogprobOptions
from kernels.ops.grpo_loss import FusedLinearGRPOLossFunction, GRPOTokenLossFunction, grouped_advantages_forward

__all__ = ["GRPOLossOutput", "FusedLinearGRPOLoss", "fused_linear_grpo_loss", "grouped_advantages",
           "grpo_token_loss", "token_advantages"]


def grouped_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, adv_norm: str = "group", eps: float = 1e-6,
                       valid: torch.Tensor | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Per-sequence advantages [N] fp32.

    Args:
        rewards: [N] scalar rewards.
        group_ids: [N] integer group of each sequence (the prompt's uid); any sizes, singletons allowed.
        adv_norm: ``group`` (std of the group) | ``batch`` (std of all valid rewards) | ``none`` (Dr. GRPO).
        eps: added to the std.
        valid: optional [N] bool; invalid rows are left out of every statistic and get advantage 0.
    """
    return grouped_advantages_forward(rewards, group_ids, adv_norm, eps, valid, backend)


def token_advantages(advantages: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sequence advantages [N] to the packed tokens: [T] = advantages[seq_ids]."""
    if seq_ids.numel() and (int(seq_ids.min()) < 0 or int(seq_ids.max()) >= advantages.shape[0]):
        raise ValueError(f"seq_ids must lie in [0, {advantages.shape[0]}); got range "
                         f"[{int(seq_ids.min())}, {int(seq_ids.max())}]")
    return advantages.float()[seq_ids]


@dataclass
class GRPOLossOutput:
    """Result of one loss call."""

    loss: torch.Tensor
    """Scalar sum_t w_t l_t (the weights carry the global normaliser); differentiable."""
    per_token_loss: torch.Tensor
    """[T] w_t * l_t (detached): the loss's per-token contributions."""
    clip_fraction: torch.Tensor
    """Scalar: share of tokens with weight > 0 whose gradient was zeroed by (dual) clipping."""
    kl: torch.Tensor | None
    """[T] per-token KL estimate to the reference (detached), when kl_coef != 0."""
    logprobs: torch.Tensor | None = None
    """[T] fp32 current log-probs (detached), from the fused variant."""
    clipped: torch.Tensor | None = None
    """[T] bool: the token's gradient was zeroed by (dual) clipping (whatever its mask)."""


def _output(weights: torch.Tensor, loss, weighted, clipped, kl: torch.Tensor | None, logprobs=None) -> GRPOLossOutput:
    live = weights > 0
    frac = (clipped * live).sum() / live.sum().clamp(min=1)
    return GRPOLossOutput(loss, weighted, frac, kl, logprobs, clipped.bool())


def grpo_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    weights: torch.Tensor, *, clip_low: float, clip_high: float, dual_clip: float, kl_coef: float,
                    kl_type: str, ref_logprobs: torch.Tensor | None = None, backend: str = "auto") -> GRPOLossOutput:
    """The clipped GRPO loss sum_t w_t l_t from per-token log-probs [T] (differentiable w.r.t. ``logprobs`` only).

    ``weights`` [T] are the aggregation weights with the step's GLOBAL normaliser and any mask folded in
    (`p2o.algo.grpo.token_weights`); ``clip_low, clip_high, dual_clip, kl_coef, kl_type`` are the fields of
    `p2o.algo.grpo.GRPOLoss` (dual_clip 0: off; kl_coef 0: no KL term, ``ref_logprobs`` [T] needed otherwise).
    """
    loss, weighted, clipped, kl = GRPOTokenLossFunction.apply(logprobs, old_logprobs, advantages, weights, ref_logprobs,
                                                              clip_low, clip_high, dual_clip, kl_coef, kl_type, backend)
    return _output(weights, loss, weighted, clipped, kl if kl_coef != 0 else None)


def fused_linear_grpo_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           old_logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor, *,
                           clip_low: float, clip_high: float, dual_clip: float, kl_coef: float, kl_type: str,
                           ref_logprobs: torch.Tensor | None = None, temperature: float = 1.0, tp_group=None,
                           vocab_start: int = 0, backend: str = "auto", split_v: int | None = None,
                           vocab_chunk: int | None = None, on_policy: torch.Tensor | None = None) -> GRPOLossOutput:
    """GRPO loss straight from hidden states [T, H] and LM-head rows [V_local, H]: one autograd node.

    Same arguments as `grpo_token_loss` plus those of `fused_linear_logprob` (targets, temperature,
    tp_group, vocab_start). The backward touches only tokens with a non-zero loss gradient. ``on_policy``
    (optional bool [T]) marks tokens whose old log-prob is the current one from this same pass (their
    ``old_logprobs`` entries are ignored; ratio exactly 1): the update needs no separate old-log-prob pass.
    """
    opts = LogprobOptions(temperature=temperature, vocab_start=vocab_start, tp_group=tp_group, backend=backend,
                          split_v=split_v, vocab_chunk=vocab_chunk)
    loss, logp, weighted, clipped, kl = FusedLinearGRPOLossFunction.apply(
        hidden, weight, targets, old_logprobs, advantages, weights, ref_logprobs, clip_low, clip_high, dual_clip,
        kl_coef, kl_type, opts, on_policy)
    return _output(weights, loss, weighted, clipped, kl if kl_coef != 0 else None, logp)


class FusedLinearGRPOLoss(nn.Module):
    """Module form of `fused_linear_grpo_loss` holding the loss's numbers and the LM-head settings."""

    def __init__(self, *, clip_low: float, clip_high: float, dual_clip: float, kl_coef: float, kl_type: str,
                 temperature: float = 1.0, tp_group=None, vocab_start: int = 0, backend: str = "auto"):
        super().__init__()
        self.knobs = dict(clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, kl_coef=kl_coef,
                          kl_type=kl_type)
        self.temperature, self.tp_group, self.vocab_start, self.backend = temperature, tp_group, vocab_start, backend

    def forward(self, hidden, weight, targets, old_logprobs, advantages, weights, ref_logprobs=None,
                on_policy=None) -> GRPOLossOutput:
        return fused_linear_grpo_loss(hidden, weight, targets, old_logprobs, advantages, weights, **self.knobs,
                                      ref_logprobs=ref_logprobs, temperature=self.temperature, tp_group=self.tp_group,
                                      vocab_start=self.vocab_start, backend=self.backend, on_policy=on_policy)
