"""Triton kernels for the policy update, with plain-torch fallbacks (see docs/kernels.md).

- `fused_linear_logprob`: log p(y_t) (and entropy) from hidden states and the LM head, no [T, V] logits.
- `grouped_advantages`, `grpo_token_loss`, `fused_linear_grpo_loss`: GRPO advantages and the clipped loss,
  optionally fused with the log-prob kernel into one autograd node.
- `dual_context_logprob`: the same response under contexts x and x+z in one pass over the LM head.
"""
from kernels.dual_context import DualContextLogprob, DualContextOutput, dual_context_logprob
from kernels.fused_linear_logprob import FusedLinearLogprob, fused_linear_logprob
from kernels.grpo_loss import (
                               FusedLinearGRPOLoss,
                               GRPOLossOutput,
                               fused_linear_grpo_loss,
                               grouped_advantages,
                               grpo_token_loss,
                               token_advantages,
)

__all__ = ["DualContextLogprob", "DualContextOutput", "FusedLinearGRPOLoss", "FusedLinearLogprob", "GRPOLossOutput",
           "dual_context_logprob", "fused_linear_grpo_loss", "fused_linear_logprob",
           "grouped_advantages", "grpo_token_loss", "token_advantages"]
