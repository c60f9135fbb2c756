"""Triton kernels for the policy update, with plain-torch fallbacks (see docs/kernels.md).

- `fused_linear_logprob`: log p(y_t) (and entropy) from hidden states and the LM head, no [T, V] logits.
- `grouped_advantages`, `grpo_token_loss`, `fused_linear_grpo_loss`: GRPO advantages and the clipped loss,
  optionally fused with the log-prob kernel into one autograd node.
- `dual_context_logprob`: the same response under contexts x and x+z in one pass over the LM head.
"""
from kernels.fused_linear_logprob import FusedLinearLogprob, fused_linear_logprob

__all__ = ["FusedLinearLogprob", "fused_linear_logprob"]
