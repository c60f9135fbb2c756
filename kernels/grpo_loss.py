"""GRPO advantages and the clipped policy loss, optionally fused with the LM head.

    adv = grouped_advantages(rewards, group_ids, adv_norm="group")          # [N] per sequence
    adv_tok = token_advantages(adv, seq_ids)                                # [T] packed tokens
    out = fused_linear_grpo_loss(hidden, weight, targets, old_logp, adv_tok, mask, normaliser=n_tokens_global)
    out.loss.backward()                                                     # one autograd node from hidden states

Option names follow `p2o.config.GRPOConfig` (adv_norm, loss_agg, kl_type, clip_low, clip_high, dual_clip,
kl_coef); `GRPOLossParams.from_config(cfg.grpo)` builds the loss knobs from a config. The formulas and
conventions are in `kernels.ops.grpo_loss`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels.ops.fused_linear_logprob import LogprobOptions
from kernels.ops.grpo_loss import (
    FusedLinearGRPOLossFunction,
    GRPOLossParams,
    GRPOTokenLossFunction,
    aggregation_weights,
    grouped_advantages_forward,
)

__all__ = ["GRPOLossOutput", "GRPOLossParams", "FusedLinearGRPOLoss", "fused_linear_grpo_loss", "grouped_advantages",
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
    """Scalar, already divided by the global normaliser; differentiable."""
    per_token_loss: torch.Tensor
    """[T] w_t * l_t (detached): the loss's per-token contributions."""
    clip_fraction: torch.Tensor
    """Scalar: share of tokens with mask > 0 whose gradient was zeroed by (dual) clipping."""
    kl: torch.Tensor | None
    """[T] per-token KL estimate to the reference (detached), when kl_coef != 0."""
    logprobs: torch.Tensor | None = None
    """[T] fp32 current log-probs (detached), from the fused variant."""
    clipped: torch.Tensor | None = None
    """[T] bool: the token's gradient was zeroed by (dual) clipping (whatever its mask)."""


def _output(mask: torch.Tensor, loss, weighted, clipped, kl: torch.Tensor | None, logprobs=None) -> GRPOLossOutput:
    live = mask > 0
    frac = (clipped * live).sum() / live.sum().clamp(min=1)
    return GRPOLossOutput(loss, weighted, frac, kl, logprobs, clipped.bool())


def grpo_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, normaliser: float, *, seq_ids: torch.Tensor | None = None,
                    ref_logprobs: torch.Tensor | None = None, params: GRPOLossParams | None = None,
                    backend: str = "auto") -> GRPOLossOutput:
    """The clipped GRPO loss from per-token log-probs [T] (differentiable w.r.t. ``logprobs`` only).

    ``mask`` [T] multiplies each token's loss (response mask x context-ratio mask); ``normaliser`` is the
    GLOBAL denominator of the step (tokens for token-mean, sequences for seq-mean-token-mean, sequences x
    max length for seq-mean-token-sum-norm); ``seq_ids`` [T] is needed for seq-mean-token-mean.
    """
    params = params or GRPOLossParams()
    w = aggregation_weights(mask, normaliser, params.loss_agg, seq_ids)
    loss, weighted, clipped, kl = GRPOTokenLossFunction.apply(logprobs, old_logprobs, advantages, w, ref_logprobs,
                                                              params, backend)
    return _output(mask, loss, weighted, clipped, kl if params.kl_coef != 0 else None)


def fused_linear_grpo_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                           normaliser: float, *, seq_ids: torch.Tensor | None = None,
                           ref_logprobs: torch.Tensor | None = None, params: GRPOLossParams | None = None,
                           temperature: float = 1.0, tp_group=None, vocab_start: int = 0, backend: str = "auto",
                           split_v: int | None = None, vocab_chunk: int | None = None,
                           on_policy: torch.Tensor | None = None) -> GRPOLossOutput:
    """GRPO loss straight from hidden states [T, H] and LM-head rows [V_local, H]: one autograd node.

    Same arguments as `grpo_token_loss` plus those of `fused_linear_logprob` (targets, temperature,
    tp_group, vocab_start). The backward touches only tokens with a non-zero loss gradient. ``on_policy``
    (optional bool [T]) marks tokens whose old log-prob is the current one from this same pass (their
    ``old_logprobs`` entries are ignored; ratio exactly 1): the update needs no separate old-log-prob pass.
    """
    params = params or GRPOLossParams()
    w = aggregation_weights(mask, normaliser, params.loss_agg, seq_ids)
    opts = LogprobOptions(temperature=temperature, vocab_start=vocab_start, tp_group=tp_group, backend=backend,
                          split_v=split_v, vocab_chunk=vocab_chunk)
    loss, logp, weighted, clipped, kl = FusedLinearGRPOLossFunction.apply(
        hidden, weight, targets, old_logprobs, advantages, w, ref_logprobs, params, opts, on_policy)
    return _output(mask, loss, weighted, clipped, kl if params.kl_coef != 0 else None, logp)


class FusedLinearGRPOLoss(nn.Module):
    """Module form of `fused_linear_grpo_loss` holding the loss knobs (e.g. from ``GRPOConfig``)."""

    def __init__(self, params: GRPOLossParams | None = None, temperature: float = 1.0, tp_group=None,
                 vocab_start: int = 0, backend: str = "auto"):
        super().__init__()
        self.params = params or GRPOLossParams()
        self.temperature, self.tp_group, self.vocab_start, self.backend = temperature, tp_group, vocab_start, backend

    def forward(self, hidden, weight, targets, old_logprobs, advantages, mask, normaliser, seq_ids=None,
                ref_logprobs=None) -> GRPOLossOutput:
        return fused_linear_grpo_loss(hidden, weight, targets, old_logprobs, advantages, mask, normaliser,
                                      seq_ids=seq_ids, ref_logprobs=ref_logprobs, params=self.params,
                                      temperature=self.temperature, tp_group=self.tp_group,
                                      vocab_start=self.vocab_start, backend=self.backend)
