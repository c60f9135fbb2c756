"""Per-token log-probs (and entropy) straight from hidden states and the LM head.

    logp = fused_linear_logprob(hidden, weight, targets, temperature=0.6)            # [T] fp32
    logp, ent = fused_linear_logprob(hidden, weight, targets, with_entropy=True)

Equivalent to ``log_softmax(hidden @ weight.T / temperature).gather(targets)`` (and the softmax's entropy)
without ever holding [T, V] logits. See `kernels.ops.fused_linear_logprob` for the algorithm and
docs/kernels.md for numbers.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from kernels.ops.fused_linear_logprob import FusedLinearLogprobFunction, LogprobOptions


def fused_linear_logprob(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         temperature: float = 1.0, tp_group=None, vocab_start: int = 0, with_entropy: bool = False,
                         *, backend: str = "auto", split_v: int | None = None,
                         vocab_chunk: int | None = None) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Log-prob of ``targets`` under softmax(hidden @ weight^T / temperature), fused and differentiable.

    Args:
        hidden: [T, H] final hidden states (bf16 on GPU, fp32 or bf16 on CPU).
        weight: [V_local, H] LM-head rows this rank holds, same dtype as ``hidden``.
        targets: [T] long, GLOBAL vocabulary ids.
        temperature: logits are divided by it (> 0).
        tp_group: torch.distributed group over which the vocabulary is split; this rank holds rows
            [vocab_start, vocab_start + V_local). Statistics are merged with one all-gather of
            [T, 3] fp32 per rank ([T, 4] with entropy); the backward all-reduces dH of the rows with
            non-zero upstream gradient. ``hidden`` and the upstream gradients must be identical on all ranks.
        vocab_start: first global id of ``weight``'s rows.
        with_entropy: also return the full-vocabulary entropy of the tempered softmax.
        backend: ``auto`` (Triton on CUDA or under TRITON_INTERPRET=1, chunked torch otherwise) | ``triton`` | ``torch``.
        split_v, vocab_chunk: forward split / backward chunk widths in vocabulary columns (None: defaults).

    Returns:
        logp [T] fp32, or (logp [T], entropy [T]) fp32 when ``with_entropy``.
    """
    opts = LogprobOptions(temperature=temperature, vocab_start=vocab_start, with_entropy=with_entropy,
                          tp_group=tp_group, backend=backend, split_v=split_v, vocab_chunk=vocab_chunk)
    return FusedLinearLogprobFunction.apply(hidden, weight, targets, opts)


class FusedLinearLogprob(nn.Module):
    """Module form of `fused_linear_logprob` for a fixed temperature / TP layout; forward(hidden, weight, targets)."""

    def __init__(self, temperature: float = 1.0, tp_group=None, vocab_start: int = 0, with_entropy: bool = False,
                 backend: str = "auto"):
        super().__init__()
        self.temperature, self.tp_group, self.vocab_start = temperature, tp_group, vocab_start
        self.with_entropy, self.backend = with_entropy, backend

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        return fused_linear_logprob(hidden, weight, targets, self.temperature, self.tp_group, self.vocab_start,
                                    self.with_entropy, backend=self.backend)
