"""Score one response under two contexts (x and x+z) in a single pass over the LM head.

    out = dual_context_logprob(h_x, h_xz, weight, targets, ratio_low=0.01, ratio_high=10.0, with_kl=True)
    out.logp_x, out.logp_xz, out.ratio, out.mask, out.kl      # all [T]

``ratio = exp(logp_x - logp_xz)`` = pi(y_t | x) / pi(y_t | x+z) and ``mask = ratio_low <= ratio <= ratio_high``
(P2O's context ratio mask, `P2OConfig.ratio_low/ratio_high`). Gradients reach ``h_x`` and ``weight``
through logp_x, ratio and kl; x+z is treated as a fixed teacher context.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels.ops.dual_context import DualContextLogprobFunction
from kernels.ops.fused_linear_logprob import LogprobOptions


@dataclass
class DualContextOutput:
    """Per-token results of the dual-context pass, each [T]."""

    logp_x: torch.Tensor
    """log pi(y_t | x, y_<t), fp32, differentiable."""
    logp_xz: torch.Tensor
    """log pi(y_t | x+z, y_<t), fp32, no gradient."""
    ratio: torch.Tensor
    """exp(logp_x - logp_xz), fp32 (differentiable through logp_x)."""
    mask: torch.Tensor
    """bool: ratio_low <= ratio <= ratio_high."""
    kl: torch.Tensor | None
    """Full-vocabulary KL(pi(.|x+z) || pi(.|x)) per token (fp32, differentiable through x), or None."""


def dual_context_logprob(hidden_x: torch.Tensor, hidden_xz: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         temperature: float = 1.0, tp_group=None, vocab_start: int = 0, ratio_low: float = 0.01,
                         ratio_high: float = 10.0, with_kl: bool = False, *, backend: str = "auto",
                         split_v: int | None = None, vocab_chunk: int | None = None) -> DualContextOutput:
    """Log-probs of ``targets`` under both contexts with each W tile loaded once.

    Args:
        hidden_x, hidden_xz: [T, H] hidden states at the response positions under x and under x+z.
        weight: [V_local, H] LM-head rows of this rank (same dtype as the hidden states).
        targets: [T] long global vocabulary ids (the response tokens).
        temperature, tp_group, vocab_start, backend, split_v, vocab_chunk: as in `fused_linear_logprob`;
            under TP both contexts' statistics share one all-gather ([T, 5] fp32 per rank, [T, 6] with KL).
        ratio_low, ratio_high: inclusive bounds of the context ratio mask.
        with_kl: also compute the full-vocabulary KL(p_xz || p_x) per token.
    """
    if not 0 <= ratio_low <= ratio_high:
        raise ValueError(f"ratio bounds must satisfy 0 <= ratio_low <= ratio_high; got {ratio_low}, {ratio_high}")
    opts = LogprobOptions(temperature=temperature, vocab_start=vocab_start, tp_group=tp_group, backend=backend,
                          split_v=split_v, vocab_chunk=vocab_chunk)
    logp_x, logp_xz, kl = DualContextLogprobFunction.apply(hidden_x, hidden_xz, weight, targets, opts, with_kl)
    ratio = torch.exp(logp_x - logp_xz)
    mask = (ratio >= ratio_low) & (ratio <= ratio_high)
    return DualContextOutput(logp_x, logp_xz, ratio, mask.detach(), kl if with_kl else None)


class DualContextLogprob(nn.Module):
    """Module form of `dual_context_logprob`; forward(hidden_x, hidden_xz, weight, targets)."""

    def __init__(self, temperature: float = 1.0, ratio_low: float = 0.01, ratio_high: float = 10.0,
                 with_kl: bool = False, tp_group=None, vocab_start: int = 0, backend: str = "auto"):
        super().__init__()
        self.temperature, self.ratio_low, self.ratio_high, self.with_kl = temperature, ratio_low, ratio_high, with_kl
        self.tp_group, self.vocab_start, self.backend = tp_group, vocab_start, backend

    def forward(self, hidden_x, hidden_xz, weight, targets) -> DualContextOutput:
        return dual_context_logprob(hidden_x, hidden_xz, weight, targets, self.temperature, self.tp_group,
                                    self.vocab_start, self.ratio_low, self.ratio_high, self.with_kl,
                                    backend=self.backend)
