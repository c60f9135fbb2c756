"""Fused linear log-prob (+ entropy): log softmax(h W^T / temperature)[y] without [T, V] logits.

Forward (`_flp_fwd_kernel`): one program per (row block, vocabulary split), launched in grouped order
(`_grouped_pid`) so GROUP_T row blocks sweep the same split of W together and share its tiles through L2.
Each program walks its split in [BLOCK_T, BLOCK_V] logit tiles (tl.dot over H in BLOCK_H steps) and keeps,
per row, the online max m, the rescaled sum s = sum exp(z - m), b = sum exp(z - m) z (entropy only) and
the target logit. It writes (lse, target, b / s) per split; the host merges splits (and TP shards) with
`vocab_stats.merge_partials`. Saved for backward: lse [T] and E_p[z] [T] only.

    logp = z_y - lse,   entropy = lse - E_p[z],   z = h W^T / temperature

Backward: with upstream g = dL/dlogp and e = dL/dentropy per row,

    dL/dz_v = g (1[v = y] - p_v) - e p_v (z_v - E_p[z]),    dL/dl = dL/dz / temperature

Rows with g = e = 0 (masked tokens, zero-advantage groups) are dropped before any work (row compaction).
`_flp_dz_kernel` recomputes one vocabulary chunk of logits for the remaining rows and writes dL/dl in the
weight's dtype; cuBLAS turns each chunk into dH (fp32 accumulation) and that chunk's rows of dW
(`backward_loop`). Under tensor parallelism (vocabulary rows split over ``tp_group``) the forward
all-gathers the per-row statistics once (`vocab_stats.tp_merge`) and the backward all-reduces dH of the
active rows; dW stays local to each shard.

Algorithm after Apple's Cut Cross-Entropy (arXiv 2411.09009) and verl's linear_cross_entropy kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from kernels.dispatch import (
    acc_dtype,
    default_chunk_bytes,
    dot_precision,
    interpreter_enabled,
    resolve_backend,
    tile_config,
    vocab_chunk_for,
)
from kernels.ops.backward_loop import linear_backward_by_vocab_chunks
from kernels.ops.chunked_torch import flp_dz_torch, flp_partials_torch
from kernels.ops.tiles import _grouped_pid, _logit_tile
from kernels.ops.vocab_stats import SoftmaxStats, check_targets, merge_partials, owned_targets, tp_merge


# ----------------------------------------------------------------------------- Triton kernels
@triton.jit
def _flp_fwd_kernel(h_ptr, w_ptr, y_ptr, out_ptr, T, V, H, inv_temp, split_v,
                    stride_h, stride_w, stride_op, stride_ot,
                    ENTROPY: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_T: tl.constexpr):
    n_row_blocks = tl.cdiv(T, BLOCK_T)
    n_splits = tl.cdiv(V, split_v)
    pid_t, pid_s = _grouped_pid(tl.program_id(0), n_row_blocks, n_splits, GROUP_T)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    y = tl.load(y_ptr + rows, mask=row_mask, other=-1)  # shard-local target ids
    m = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_T,), tl.float32)
    b = tl.zeros((BLOCK_T,), tl.float32)
    tgt = tl.zeros((BLOCK_T,), tl.float32)
    v_begin = pid_s * split_v
    v_end = tl.minimum(v_begin + split_v, V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < v_end
        z = _logit_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w,
                        BLOCK_T, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION) * inv_temp
        z_finite = tl.where(col_mask[None, :], z, 0.0)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))  # finite: every split's first tile has a valid column
        alpha = tl.exp(m - m_new)
        ex = tl.exp(z - m_new[:, None])  # 0 on masked columns
        s = s * alpha + tl.sum(ex, axis=1)
        if ENTROPY:
            b = b * alpha + tl.sum(ex * z_finite, axis=1)
        tgt += tl.sum(tl.where((cols[None, :] == y[:, None]) & col_mask[None, :], z, 0.0), axis=1)
        m = m_new
    out = out_ptr + pid_s * stride_op + rows * stride_ot
    tl.store(out, m + tl.log(s), mask=row_mask)
    tl.store(out + 1, tgt, mask=row_mask)
    if ENTROPY:
        tl.store(out + 2, b / s, mask=row_mask)


@triton.jit
def _flp_dz_kernel(h_ptr, w_ptr, y_ptr, lse_ptr, ez_ptr, g_ptr, e_ptr, dz_ptr, T, V, H, inv_temp,
                   stride_h, stride_w, stride_dz,
                   ENTROPY: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    # program_id(0) (row block) varies fastest: consecutive programs reuse one W tile from L2.
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < T
    col_mask = cols < V
    z = _logit_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w,
                    BLOCK_T, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION) * inv_temp
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_mask, other=0.0)
    y = tl.load(y_ptr + rows, mask=row_mask, other=-1)  # chunk-local target ids
    p = tl.exp(z - lse[:, None])
    dz = g[:, None] * (tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - p)
    if ENTROPY:
        ez = tl.load(ez_ptr + rows, mask=row_mask, other=0.0)
        e = tl.load(e_ptr + rows, mask=row_mask, other=0.0)
        dz -= e[:, None] * p * (z - ez[:, None])
    dz_out = dz_ptr + rows.to(tl.int64)[:, None] * stride_dz + cols[None, :]
    tl.store(dz_out, dz * inv_temp, mask=row_mask[:, None] & col_mask[None, :])


# ----------------------------------------------------------------------------- host: Triton primitives
def _split_width(vocab: int, split_v: int, block_v: int) -> int:
    """Columns per forward split: a multiple of block_v, at most the (rounded-up) vocabulary, and positive even
    for an empty shard (vocab = 0: a TP rank whose rows are all vocabulary padding), which then has 0 splits."""
    return min(split_v, max(1, triton.cdiv(vocab, block_v)) * block_v)


def flp_partials_triton(hidden: torch.Tensor, weight: torch.Tensor, y_local: torch.Tensor, inv_temp: float,
                        with_entropy: bool, split_v: int | None = None) -> SoftmaxStats:
    """Per-split statistics from `_flp_fwd_kernel`: SoftmaxStats with [P, T] / [P, T, E] fields."""
    T, H = hidden.shape
    V = weight.shape[0]
    cfg = tile_config(hidden.device, hidden.dtype)
    split = _split_width(V, split_v or cfg.split_v, cfg.block_v)
    n_splits = triton.cdiv(V, split)
    ncols = 3 if with_entropy else 2
    out = torch.full((n_splits, T, ncols), float("nan"), dtype=torch.float32, device=hidden.device)
    grid = (triton.cdiv(T, cfg.block_t) * n_splits,)
    if T == 0 or n_splits == 0:  # nothing to launch (an empty grid is not portable across Triton backends)
        return SoftmaxStats.unpack(out)  # no splits: merge_partials gives lse -inf, target 0, expectations 0
    _flp_fwd_kernel[grid](hidden, weight, y_local, out, T, V, H, inv_temp, split,
                          hidden.stride(0), weight.stride(0), out.stride(0), out.stride(1),
                          ENTROPY=with_entropy, UPCAST=interpreter_enabled(),
                          DOT_PRECISION=dot_precision(hidden.dtype), BLOCK_T=cfg.block_t, BLOCK_V=cfg.block_v,
                          BLOCK_H=cfg.block_h, GROUP_T=cfg.group_t, num_warps=cfg.num_warps,
                          num_stages=cfg.num_stages)
    return SoftmaxStats.unpack(out)


def flp_dz_triton(hidden: torch.Tensor, weight_chunk: torch.Tensor, y_chunk: torch.Tensor, lse: torch.Tensor,
                  ez: torch.Tensor | None, g: torch.Tensor, e: torch.Tensor | None,
                  inv_temp: float) -> torch.Tensor:
    """dL/dl [Ta, C] of one vocabulary chunk (weight's dtype) from `_flp_dz_kernel`."""
    T, H = hidden.shape
    C = weight_chunk.shape[0]
    cfg = tile_config(hidden.device, hidden.dtype)
    dz = torch.full((T, C), float("nan"), dtype=weight_chunk.dtype, device=hidden.device)
    entropy = e is not None
    grid = (triton.cdiv(T, cfg.block_t), triton.cdiv(C, cfg.block_v))
    _flp_dz_kernel[grid](hidden, weight_chunk, y_chunk, lse, ez if entropy else lse, g, e if entropy else g, dz,
                         T, C, H, inv_temp, hidden.stride(0), weight_chunk.stride(0), dz.stride(0),
                         ENTROPY=entropy, UPCAST=interpreter_enabled(), DOT_PRECISION=dot_precision(hidden.dtype),
                         BLOCK_T=cfg.block_t, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h,
                         num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dz


# ----------------------------------------------------------------------------- host: forward / backward
@dataclass
class LogprobOptions:
    """Everything besides tensors that fixes one fused log-prob call (also carried into backward)."""

    temperature: float = 1.0
    vocab_start: int = 0
    with_entropy: bool = False
    tp_group: object | None = None
    backend: str = "auto"
    split_v: int | None = None
    """Forward columns per program (Triton) or per chunk (torch); None: the device default."""
    vocab_chunk: int | None = None
    """Backward columns per dz chunk; None: from the device's byte budget."""

    @property
    def inv_temp(self) -> float:
        return 1.0 / self.temperature


def check_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, opts: LogprobOptions) -> None:
    """Raise ValueError/TypeError naming the argument that does not fit the contract."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [T, H] and weight [V_local, H]; got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if targets.shape != (hidden.shape[0],) or targets.dtype != torch.long:
        raise ValueError(f"targets must be a long tensor of shape [T] = [{hidden.shape[0]}]; got "
                         f"{targets.dtype} {tuple(targets.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    if not (opts.temperature > 0 and math.isfinite(opts.temperature)):
        raise ValueError(f"temperature must be a positive finite number; got {opts.temperature}")
    if opts.vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0; got {opts.vocab_start}")


def vocab_partials(hidden: torch.Tensor, weight: torch.Tensor, y_local: torch.Tensor, opts: LogprobOptions,
                   backend: str) -> SoftmaxStats:
    """Statistics of this shard's vocabulary, split partials already merged: [T] / [T, E] fields."""
    if backend == "triton":
        parts = flp_partials_triton(hidden, weight, y_local, opts.inv_temp, opts.with_entropy, opts.split_v)
    else:
        chunk = opts.split_v or vocab_chunk_for(hidden.shape[0], weight.shape[0], 16,
                                                default_chunk_bytes(hidden.device))
        parts = flp_partials_torch(hidden, weight, y_local, opts.inv_temp, opts.with_entropy, chunk)
    return merge_partials(parts)


def global_stats(local: list[SoftmaxStats], targets: torch.Tensor, vocab_local: int,
                 opts: LogprobOptions) -> list[SoftmaxStats]:
    """Merge per-rank statistics over ``opts.tp_group`` (no-op without one) and check every target is owned once."""
    owned = owned_targets(targets, opts.vocab_start, vocab_local)
    if opts.tp_group is None or dist.get_world_size(opts.tp_group) == 1:
        check_targets(owned, targets, f"ids [{opts.vocab_start}, {opts.vocab_start + vocab_local})")
        return local
    merged, owned_count = tp_merge(local, owned, opts.tp_group)
    check_targets(owned_count, targets, "the union of the tensor-parallel vocabulary shards")
    return merged


def fused_linear_logprob_forward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 opts: LogprobOptions) -> tuple[torch.Tensor, torch.Tensor | None, SoftmaxStats]:
    """(logp [T] fp32, entropy [T] fp32 or None, merged stats to save for backward)."""
    check_inputs(hidden, weight, targets, opts)
    backend = resolve_backend(opts.backend, hidden.device)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    (stats,) = global_stats([vocab_partials(hidden, weight, targets - opts.vocab_start, opts, backend)],
                            targets, weight.shape[0], opts)
    logp = stats.target - stats.lse
    entropy = stats.lse - stats.expect[:, 0] if opts.with_entropy else None
    return logp, entropy, stats


def active_rows(*coefs: torch.Tensor | None) -> torch.Tensor:
    """Indices [Ta] of rows where any of the per-row upstream coefficients is non-zero."""
    live = None
    for c in coefs:
        if c is not None:
            live = (c != 0) if live is None else live | (c != 0)
    return live.nonzero()[:, 0]


def take_rows(t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """t[rows] (contiguous), or t itself when every row is active (no copy of a [T, H] input)."""
    if t is None:
        return None
    return t.contiguous() if rows.numel() == t.shape[0] else t.index_select(0, rows).contiguous()


def put_rows(values: torch.Tensor, rows: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    """[total, ...] tensor of ``dtype`` holding ``values`` at ``rows`` and zeros elsewhere."""
    if rows.numel() == total:
        return values.to(dtype)
    out = values.new_zeros((total, *values.shape[1:]), dtype=dtype)
    out[rows] = values.to(dtype)
    return out


def all_reduce_rows(d_hidden: torch.Tensor, opts: LogprobOptions) -> torch.Tensor:
    """Sum dH over the tensor-parallel ranks (each rank holds only its vocabulary shard's contribution)."""
    if opts.tp_group is not None and dist.get_world_size(opts.tp_group) > 1:
        dist.all_reduce(d_hidden, op=dist.ReduceOp.SUM, group=opts.tp_group)
    return d_hidden


def fused_linear_logprob_backward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                  stats: SoftmaxStats, d_logp: torch.Tensor, d_entropy: torch.Tensor | None,
                                  opts: LogprobOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(dH [T, H] in hidden's dtype, dW [V_local, H] in weight's dtype) for upstream d_logp / d_entropy [T].

    Upstream gradients must be identical on every TP rank (the loss is computed redundantly), so all
    ranks compact the same rows and issue the same collective.
    """
    backend = resolve_backend(opts.backend, hidden.device)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    g = d_logp.to(acc_dtype(hidden.dtype)).contiguous()
    e = d_entropy.to(g.dtype).contiguous() if d_entropy is not None else None
    rows = active_rows(g, e)
    if rows.numel() == 0:
        return torch.zeros_like(hidden), torch.zeros_like(weight)
    h_a = take_rows(hidden, rows)
    y_a = take_rows(targets, rows) - opts.vocab_start
    lse_a, g_a = take_rows(stats.lse, rows), take_rows(g, rows)
    ez_a = take_rows(stats.expect[:, 0], rows) if e is not None else None
    e_a = take_rows(e, rows)
    dz_fn = flp_dz_triton if backend == "triton" else flp_dz_torch
    chunk = opts.vocab_chunk or vocab_chunk_for(
        rows.numel(), weight.shape[0], weight.element_size() if backend == "triton" else 24,
        default_chunk_bytes(hidden.device))

    def dz_chunk(c0: int, c1: int) -> torch.Tensor:
        return dz_fn(h_a, weight[c0:c1], y_a - c0, lse_a, ez_a, g_a, e_a, opts.inv_temp)

    dh_a, d_weight = linear_backward_by_vocab_chunks(h_a, weight, chunk, dz_chunk)
    d_hidden = put_rows(all_reduce_rows(dh_a, opts), rows, hidden.shape[0], hidden.dtype)
    return d_hidden, d_weight


class FusedLinearLogprobFunction(torch.autograd.Function):
    """Autograd node: (hidden, weight) -> logp [T] (and entropy [T] when opts.with_entropy)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, opts: LogprobOptions):
        logp, entropy, stats = fused_linear_logprob_forward(hidden, weight, targets, opts)
        ctx.save_for_backward(hidden, weight, targets, stats.lse, stats.expect)
        ctx.opts = opts
        return (logp, entropy) if opts.with_entropy else logp

    @staticmethod
    def backward(ctx, *grads):
        hidden, weight, targets, lse, expect = ctx.saved_tensors
        d_logp = grads[0] if grads[0] is not None else torch.zeros_like(lse)
        d_entropy = grads[1] if ctx.opts.with_entropy else None
        d_hidden, d_weight = fused_linear_logprob_backward(
            hidden, weight, targets, SoftmaxStats(lse, torch.empty(0), expect), d_logp, d_entropy, ctx.opts)
        return (d_hidden if ctx.needs_input_grad[0] else None,
                d_weight if ctx.needs_input_grad[1] else None, None, None)
