"""The contract between the training loop and a policy backend (Megatron-Core in `megatron_bridge`).

Both sides import these types from here: the loop (`p2o.train`) and the backends below it, which must not import
the trainer (docs/design.md, "Layering").

Token layout: every row is `prompt_ids + response_ids`; only response tokens are scored. Per-token
tensors are *packed*: the response tokens of all rows of a batch concatenated in row order, so a batch
with response lengths [3, 5] has per-token tensors of shape [8].

The loss is supplied by the caller (`p2o.algo`), so the backend knows nothing about GRPO:

    def loss_fn(logprobs: Tensor[T], token_inputs: dict[str, Tensor[T]]) -> tuple[Tensor, dict[str, float]]

`logprobs` are the current policy's log-probs of the response tokens of one micro-batch (fp32, with
grad), `token_inputs` the caller's per-token tensors sliced to the same micro-batch. The returned loss is
already divided by the step's *global* normaliser (e.g. all unmasked tokens of the optimizer step, over
every micro-batch and data-parallel rank), so the backend sums micro-batch losses and never re-normalises.

A loss may also declare that it can be computed straight from the final hidden states and the LM-head rows
(`HiddenStateLoss`, e.g. `p2o.algo.grpo.GRPOLoss` through the fused GRPO kernel): a backend with fused kernels
asks for that capability and then never materialises log-probs or logits; loss, gradients and metrics are the
same as calling the loss on the log-probs.

P2O scores each templated row's response under two contexts, the training prompt x and the generation prompt
x+z (`dual_logprobs`); a backend with the dual-context kernel reads the LM head once for both.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
WeightBucket = list[tuple[str, torch.Tensor]]


@runtime_checkable
class HiddenStateLoss(Protocol):
    """A `LossFn` that can also be computed from final hidden states and LM-head weights (fused kernels).

    `loss_from_hidden(hidden, weight, targets, token_inputs, ...)` returns what `loss_fn(logprobs, token_inputs)`
    returns for logprobs = log_softmax(hidden @ weight.T / temperature)[targets] (vocabulary gathered over
    `tp_group`): hidden [T, H] and weight [V_local, H] in the model dtype, targets [T] long, the LM head's rows
    starting at vocabulary id `vocab_start`; `backend` is the kernels' backend (auto | triton | torch).
    """

    def __call__(self, logprobs: torch.Tensor, token_inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ...

    def loss_from_hidden(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         token_inputs: dict[str, torch.Tensor], *, temperature: float = 1.0, tp_group: Any = None,
                         vocab_start: int = 0, backend: str = "auto") -> tuple[torch.Tensor, dict[str, float]]:
        ...


@dataclass
class SequenceBatch:
    """Rows of (context, response) token ids; `response_ids[i]` are the tokens scored for row i."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.prompt_ids) != len(self.response_ids):
            raise ValueError(f"SequenceBatch: {len(self.prompt_ids)} prompts but {len(self.response_ids)} responses")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_response_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)

    def rows(self, idx: list[int]) -> SequenceBatch:
        return SequenceBatch([self.prompt_ids[i] for i in idx], [self.response_ids[i] for i in idx])


@dataclass
class StepMetrics:
    """What one optimizer step reports (summed / averaged over micro-batches as named)."""

    loss: float
    grad_norm: float
    lr: float
    num_tokens: int
    extra: dict[str, float] = field(default_factory=dict)


class PolicyBackend(Protocol):
    """A trainable policy. Every rank of the backend's process group calls each method collectively."""

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """Packed fp32 log-probs [T] of the response tokens under their contexts (no grad)."""
        ...

    def dual_logprobs(self, batch_x: SequenceBatch, batch_xz: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed fp32 log-probs ([T], [T]) of the same response tokens under the contexts of `batch_x` and
        `batch_xz` (no grad). The two batches have equal `response_ids`, row for row (ValueError otherwise);
        the result equals `(logprobs(batch_x), logprobs(batch_xz))`."""
        ...

    def train_step(self, batch: SequenceBatch, token_inputs: dict[str, torch.Tensor], loss_fn: LossFn) -> StepMetrics:
        """One optimizer step over `batch` (split into micro-batches internally); `token_inputs` are packed [T]."""
        ...

    def export_weights(self, bucket_bytes: int) -> Iterator[WeightBucket]:
        """HF-named full tensors in buckets of about `bucket_bytes` (TP shards gathered, PP stages collected)."""
        ...

    def save(self, path: str) -> None:
        """Model + optimizer + scheduler state (a complete, resumable checkpoint directory)."""
        ...

    def load(self, path: str) -> None:
        """Restore what `save` wrote (resharding across TP/PP layouts where supported)."""
        ...
