"""Batches of token rows -> Megatron forward(/backward) through `get_forward_backward_func` (any PP schedule).

Rows are grouped into micro-batches of exactly `micro_batch_size` rows (the last one filled with empty rows) and
right-padded. Each micro-batch is padded to its own longest row, unless pipeline stages exchange activations
(PP > 1): the schedules then need one fixed shape [S, micro_batch_size, H], the longest row of the whole batch.
Under sequence parallelism S is rounded up to a multiple of the TP size (Megatron scatters the sequence over the
TP ranks and requires S % tp == 0). Right padding needs no attention mask beyond the causal one: real tokens
never attend to later (pad) positions, so padding changes no log-prob.

With bf16 weights the chunks are wrapped in Megatron's `Float16Module`, whose forward upcasts the last stage's
output to fp32 by default: [B, S, V/TP] logits, or the [S, B, H] hidden states of a hidden-only forward. The
forward here asks for the model dtype (`fp32_output=False`); the log-prob paths upcast only what they score
([T, V/TP] rows of logits; the kernels read bf16 hidden states and accumulate in fp32), so results are the same.

Log-probs: `logits[b, t]` scores `tokens[b, t + 1]`; a row `prompt + response` with P prompt tokens scores its
response tokens at positions P-1 .. P+R-2. Padded vocabulary columns (ids >= the HF vocab size) are set to -inf
before the vocab-parallel log-softmax, so log-probs equal the HF model's (at temperature T: log_softmax(logits / T),
the distribution the rollouts were sampled from).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from p2o.policy_api import SequenceBatch


@dataclass
class MicroBatch:
    """One micro-batch: tokens [B, S] (int64), and the packed positions of its response tokens."""

    tokens: torch.Tensor
    rows: list[int]
    """Indices (into the step's batch) of the real rows, in order; rows beyond len(rows) are padding."""
    score_index: tuple[torch.Tensor, torch.Tensor]
    """(row, position) index tensors [T_mb] of the logits that score response tokens, in packed order."""
    targets: torch.Tensor
    """[T_mb] the scored response token ids."""
    token_slice: slice
    """This micro-batch's range in the step's packed per-token tensors."""
    extra: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())


def padded_length(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple` (>= 1)."""
    return -(-n // multiple) * multiple


def sequence_multiple(tp: int, sequence_parallel: bool) -> int:
    """What every micro-batch's S must be a multiple of: the TP size under sequence parallelism, else 1."""
    return tp if sequence_parallel and tp > 1 else 1


def make_micro_batches(batch: SequenceBatch, micro_batch_size: int, device, pad_id: int = 0,
                       seq_len: int | None = None, min_micro_batches: int = 1, seq_multiple: int = 1,
                       per_micro_batch: bool = True) -> tuple[list[MicroBatch], int]:
    """Split rows into micro-batches of `micro_batch_size` rows (at least `min_micro_batches`, adding all-padding
    ones: the interleaved schedule needs >= pp); returns (micro_batches, S) with S the longest micro-batch.

    Each micro-batch's tokens are [micro_batch_size, S_mb]: S_mb is its own longest row (`per_micro_batch`, for
    schedules without pipeline stages) or the longest row of the batch (`per_micro_batch=False`, PP > 1), or
    `seq_len` when given; then rounded up to `seq_multiple` (see `sequence_multiple`)."""
    if seq_multiple < 1:
        raise ValueError(f"seq_multiple must be >= 1; got {seq_multiple}")
    if len(batch) == 0:  # e.g. a data-parallel rank with no rows: all-padding micro-batches
        none = torch.empty(0, dtype=torch.long, device=device)
        S = padded_length(seq_len or 1, seq_multiple)
        return [MicroBatch(torch.full((micro_batch_size, S), pad_id, dtype=torch.long, device=device), [],
                           (none, none), none, slice(0, 0)) for _ in range(min_micro_batches)], S
    lengths = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)]
    for i, p in enumerate(batch.prompt_ids):
        if not p:
            raise ValueError(f"row {i}: empty prompt (the first response token needs a context token)")
    if seq_len is not None and max(lengths) > seq_len:
        raise ValueError(f"row of {max(lengths)} tokens exceeds the sequence length {seq_len}")
    batch_S = padded_length(seq_len or max(lengths), seq_multiple)
    out: list[MicroBatch] = []
    start_tok = 0
    for start in range(0, len(batch), micro_batch_size):
        rows = list(range(start, min(start + micro_batch_size, len(batch))))
        S = padded_length(max(lengths[i] for i in rows), seq_multiple) if per_micro_batch and not seq_len else batch_S
        tokens = torch.full((micro_batch_size, S), pad_id, dtype=torch.long)
        bidx, pidx, tgt = [], [], []
        for b, i in enumerate(rows):
            p, r = batch.prompt_ids[i], batch.response_ids[i]
            tokens[b, : len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
            bidx += [b] * len(r)
            pidx += range(len(p) - 1, len(p) + len(r) - 1)
            tgt += list(r)
        n = len(tgt)
        out.append(MicroBatch(tokens.to(device), rows,
                              (torch.tensor(bidx, dtype=torch.long, device=device),
                               torch.tensor(pidx, dtype=torch.long, device=device)),
                              torch.tensor(tgt, dtype=torch.long, device=device), slice(start_tok, start_tok + n)))
        start_tok += n
    while len(out) < min_micro_batches:
        none = torch.empty(0, dtype=torch.long, device=device)
        out.append(MicroBatch(torch.full((micro_batch_size, batch_S), pad_id, dtype=torch.long, device=device), [],
                              (none, none), none, slice(start_tok, start_tok)))
    return out, max(mb.tokens.shape[1] for mb in out)


def causal_inputs(batch_size: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_ids [B, S], attention_mask [B, 1, S, S] bool, True = masked) for causal attention."""
    pos = torch.arange(seq_len, device=device).unsqueeze(0).expand(batch_size, -1)
    mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)
    return pos, mask.view(1, 1, seq_len, seq_len).expand(batch_size, 1, -1, -1)


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int, tp_rank: int) -> torch.Tensor:
    """Set columns of padded vocabulary entries (global id >= vocab_size) to -inf; logits [..., V_local]."""
    v_local = logits.shape[-1]
    start = tp_rank * v_local
    if start + v_local <= vocab_size:
        return logits
    ids = torch.arange(start, start + v_local, device=logits.device)
    return logits.masked_fill(ids >= vocab_size, float("-inf"))


def vocab_parallel_logprobs(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, tp_rank: int,
                            temperature: float = 1.0) -> torch.Tensor:
    """fp32 log softmax(logits / temperature)[target] [T] from vocab-parallel logits [T, V_local] (differentiable,
    TP-reduced); the division happens in fp32."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logits = mask_padded_vocab(logits, vocab_size, tp_rank)
    # Megatron's op expects [S, B, V]; use S=T, B=1.
    return -vocab_parallel_cross_entropy(logits.unsqueeze(1), targets.unsqueeze(1)).squeeze(1)


def run_schedule(chunks: list, layout, micro_batches: list[MicroBatch], seq_len: int,
                 loss_func: Callable[[MicroBatch, torch.Tensor], tuple], forward_only: bool,
                 collect_non_loss_data: bool = False, hidden_only: bool = False) -> list:
    """Run Megatron's forward(/backward) schedule over `micro_batches`; returns what the last stage's loss_func
    reported, per micro-batch (empty elsewhere). `loss_func(mb, output)` gets logits [B, S_mb, V_local] (or final
    hidden states [S_mb, B, H] with `hidden_only`) in the model's dtype. `seq_len`: the pipeline's activation
    length (every micro-batch's S_mb when PP > 1)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.module import Float16Module

    mbs = micro_batches[0].tokens.shape[0]
    if layout.pp > 1 and any(mb.tokens.shape[1] != seq_len for mb in micro_batches):
        raise ValueError(f"pipeline parallelism needs every micro-batch at S = {seq_len}; got "
                         f"{sorted({mb.tokens.shape[1] for mb in micro_batches})} (make_micro_batches with "
                         "per_micro_batch=False)")
    masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        S = mb.tokens.shape[1]
        if S not in masks:
            masks[S] = causal_inputs(mbs, S, layout.device)
        pos, mask = masks[S]
        inner, half = model, False
        while hasattr(inner, "module"):
            half = half or isinstance(inner, Float16Module)
            inner = inner.module
        kwargs = {"fp32_output": False} if half else {}  # no fp32 copy of [B, S, V/TP] logits / [S, B, H] hidden
        if hidden_only and inner.post_process:
            inner.post_process = False  # GPTModel then returns the final (normed) hidden states
            try:
                out = model(mb.tokens, pos, mask, **kwargs)
            finally:
                inner.post_process = True
        else:
            out = model(mb.tokens, pos, mask, **kwargs)
        return out, lambda output, non_loss_data=False: loss_func(mb, output)

    data = [iter(micro_batches) for _ in chunks] if len(chunks) > 1 else iter(micro_batches)
    fb = get_forward_backward_func()
    return fb(forward_step_func=forward_step, data_iterator=data, model=chunks if len(chunks) > 1 else chunks[0],
              num_microbatches=len(micro_batches), seq_length=seq_len, micro_batch_size=mbs,
              forward_only=forward_only, collect_non_loss_data=collect_non_loss_data)
