"""Dual-context pass: the same response tokens y under contexts x and x+z, one sweep over the LM head.

Inputs are the hidden states of the response positions under both contexts, h_x and h_xz [T, H], and one
W [V, H]. `_dual_fwd_kernel` loads every W tile once and applies it to both row blocks
(`tiles._logit_tile_pair`), keeping online softmax statistics for both contexts and, optionally, the
accumulator of the full-vocabulary KL between them:

    KL_t(p_xz || p_x) = sum_v p_xz,v (z_xz,v - z_x,v) - (lse_xz - lse_x)

(the E_{p_xz}[z_xz - z_x] term is rescaled online exactly like the softmax sum). Outputs: logp_x, logp_xz
and KL [T] fp32. Gradient flows only through the x branch (x+z is the fixed teacher context):

    dL/dz_x = g (1[v = y] - p_x) + k (p_x - p_xz),    g = dL/dlogp_x,  k = dL/dKL

The backward recomputes z_x (and z_xz only when k != 0) chunk by chunk, like the single-context kernel.
Under TP both contexts' statistics travel in the same all-gather ([T, 5] fp32 per rank, [T, 6] with KL).
"""
from __future__ import annotations

import torch
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
from kernels.ops.chunked_torch import dual_dz_torch, dual_partials_torch
from kernels.ops.fused_linear_logprob import (
    LogprobOptions,
    _split_width,
    active_rows,
    all_reduce_rows,
    check_inputs,
    global_stats,
    put_rows,
    take_rows,
)
from kernels.ops.tiles import _grouped_pid, _logit_tile, _logit_tile_pair
from kernels.ops.vocab_stats import SoftmaxStats, merge_partials


# ----------------------------------------------------------------------------- Triton kernels
@triton.jit
def _dual_fwd_kernel(hx_ptr, hxz_ptr, w_ptr, y_ptr, out_ptr, T, V, H, inv_temp, split_v,
                     stride_hx, stride_hxz, stride_w, stride_op, stride_ot,
                     WITH_KL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_T: tl.constexpr):
    n_row_blocks = tl.cdiv(T, BLOCK_T)
    n_splits = tl.cdiv(V, split_v)
    pid_t, pid_s = _grouped_pid(tl.program_id(0), n_row_blocks, n_splits, GROUP_T)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    y = tl.load(y_ptr + rows, mask=row_mask, other=-1)
    m_x = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    m_xz = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    s_x = tl.zeros((BLOCK_T,), tl.float32)
    s_xz = tl.zeros((BLOCK_T,), tl.float32)
    t_x = tl.zeros((BLOCK_T,), tl.float32)
    t_xz = tl.zeros((BLOCK_T,), tl.float32)
    kl = tl.zeros((BLOCK_T,), tl.float32)
    v_begin = pid_s * split_v
    v_end = tl.minimum(v_begin + split_v, V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < v_end
        zx, zxz = _logit_tile_pair(hx_ptr, hxz_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
                                   stride_hx, stride_hxz, stride_w, BLOCK_T, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION)
        zx = zx * inv_temp
        zxz = zxz * inv_temp
        is_y = (cols[None, :] == y[:, None]) & col_mask[None, :]
        t_x += tl.sum(tl.where(is_y, zx, 0.0), axis=1)
        t_xz += tl.sum(tl.where(is_y, zxz, 0.0), axis=1)
        diff = tl.where(col_mask[None, :], zxz - zx, 0.0)
        zx = tl.where(col_mask[None, :], zx, float("-inf"))
        zxz = tl.where(col_mask[None, :], zxz, float("-inf"))
        mx_new = tl.maximum(m_x, tl.max(zx, axis=1))
        s_x = s_x * tl.exp(m_x - mx_new) + tl.sum(tl.exp(zx - mx_new[:, None]), axis=1)
        m_x = mx_new
        mxz_new = tl.maximum(m_xz, tl.max(zxz, axis=1))
        alpha = tl.exp(m_xz - mxz_new)
        ex = tl.exp(zxz - mxz_new[:, None])
        s_xz = s_xz * alpha + tl.sum(ex, axis=1)
        if WITH_KL:
            kl = kl * alpha + tl.sum(ex * diff, axis=1)
        m_xz = mxz_new
    out = out_ptr + pid_s * stride_op + rows * stride_ot
    tl.store(out, m_x + tl.log(s_x), mask=row_mask)
    tl.store(out + 1, t_x, mask=row_mask)
    tl.store(out + 2, m_xz + tl.log(s_xz), mask=row_mask)
    tl.store(out + 3, t_xz, mask=row_mask)
    if WITH_KL:
        tl.store(out + 4, kl / s_xz, mask=row_mask)


@triton.jit
def _dual_dz_kernel(hx_ptr, hxz_ptr, w_ptr, y_ptr, lse_x_ptr, lse_xz_ptr, g_ptr, k_ptr, dz_ptr, T, V, H, inv_temp,
                    stride_hx, stride_hxz, stride_w, stride_dz,
                    WITH_KL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < T
    col_mask = cols < V
    if WITH_KL:
        zx, zxz = _logit_tile_pair(hx_ptr, hxz_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
                                   stride_hx, stride_hxz, stride_w, BLOCK_T, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION)
    else:
        zx = _logit_tile(hx_ptr, w_ptr, rows, cols, row_mask, col_mask, H, stride_hx, stride_w,
                         BLOCK_T, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION)
    g = tl.load(g_ptr + rows, mask=row_mask, other=0.0)
    y = tl.load(y_ptr + rows, mask=row_mask, other=-1)
    p_x = tl.exp(zx * inv_temp - tl.load(lse_x_ptr + rows, mask=row_mask, other=0.0)[:, None])
    dz = g[:, None] * (tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - p_x)
    if WITH_KL:
        k = tl.load(k_ptr + rows, mask=row_mask, other=0.0)
        p_xz = tl.exp(zxz * inv_temp - tl.load(lse_xz_ptr + rows, mask=row_mask, other=0.0)[:, None])
        dz += k[:, None] * (p_x - p_xz)
    dz_out = dz_ptr + rows.to(tl.int64)[:, None] * stride_dz + cols[None, :]
    tl.store(dz_out, dz * inv_temp, mask=row_mask[:, None] & col_mask[None, :])


# ----------------------------------------------------------------------------- host: Triton primitives
def dual_partials_triton(hidden_x: torch.Tensor, hidden_xz: torch.Tensor, weight: torch.Tensor,
                         y_local: torch.Tensor, inv_temp: float, with_kl: bool,
                         split_v: int | None = None) -> tuple[SoftmaxStats, SoftmaxStats]:
    """Per-split statistics of both contexts from `_dual_fwd_kernel` ([P, T] / [P, T, E] fields)."""
    T, H = hidden_x.shape
    V = weight.shape[0]
    cfg = tile_config(hidden_x.device, hidden_x.dtype)
    split = _split_width(V, split_v or cfg.split_v, cfg.block_v)
    n_splits = triton.cdiv(V, split)
    out = torch.full((n_splits, T, 5 if with_kl else 4), float("nan"), dtype=torch.float32, device=hidden_x.device)
    grid = (triton.cdiv(T, cfg.block_t) * n_splits,)
    if T == 0 or n_splits == 0:  # nothing to launch (an empty grid is not portable across Triton backends)
        return SoftmaxStats.unpack(out[..., :2]), SoftmaxStats.unpack(out[..., 2:])
    _dual_fwd_kernel[grid](hidden_x, hidden_xz, weight, y_local, out, T, V, H, inv_temp, split,
                           hidden_x.stride(0), hidden_xz.stride(0), weight.stride(0), out.stride(0), out.stride(1),
                           WITH_KL=with_kl, UPCAST=interpreter_enabled(), DOT_PRECISION=dot_precision(hidden_x.dtype),
                           BLOCK_T=cfg.block_t, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h, GROUP_T=cfg.group_t,
                           num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return SoftmaxStats.unpack(out[..., :2]), SoftmaxStats.unpack(out[..., 2:])


def dual_dz_triton(hidden_x: torch.Tensor, hidden_xz: torch.Tensor | None, weight_chunk: torch.Tensor,
                   y_chunk: torch.Tensor, lse_x: torch.Tensor, lse_xz: torch.Tensor | None, g: torch.Tensor,
                   k: torch.Tensor | None, inv_temp: float) -> torch.Tensor:
    """dL/dl_x [Ta, C] of one vocabulary chunk (weight's dtype) from `_dual_dz_kernel`."""
    T, H = hidden_x.shape
    C = weight_chunk.shape[0]
    cfg = tile_config(hidden_x.device, hidden_x.dtype)
    with_kl = k is not None
    hxz = hidden_xz if with_kl else hidden_x
    dz = torch.full((T, C), float("nan"), dtype=weight_chunk.dtype, device=hidden_x.device)
    grid = (triton.cdiv(T, cfg.block_t), triton.cdiv(C, cfg.block_v))
    _dual_dz_kernel[grid](hidden_x, hxz, weight_chunk, y_chunk, lse_x, lse_xz if with_kl else lse_x, g,
                          k if with_kl else g, dz, T, C, H, inv_temp, hidden_x.stride(0), hxz.stride(0),
                          weight_chunk.stride(0), dz.stride(0), WITH_KL=with_kl, UPCAST=interpreter_enabled(),
                          DOT_PRECISION=dot_precision(hidden_x.dtype), BLOCK_T=cfg.block_t, BLOCK_V=cfg.block_v,
                          BLOCK_H=cfg.block_h, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dz


# ----------------------------------------------------------------------------- host: forward / backward
def dual_context_forward(hidden_x: torch.Tensor, hidden_xz: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor, opts: LogprobOptions,
                         with_kl: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, SoftmaxStats,
                                                 SoftmaxStats]:
    """(logp_x [T], logp_xz [T], KL(p_xz || p_x) [T] or None, merged x stats, merged x+z stats)."""
    check_inputs(hidden_x, weight, targets, opts)
    if hidden_xz.shape != hidden_x.shape or hidden_xz.dtype != hidden_x.dtype:
        raise ValueError(f"hidden_xz must match hidden_x ({hidden_x.dtype} {tuple(hidden_x.shape)}); got "
                         f"{hidden_xz.dtype} {tuple(hidden_xz.shape)}")
    backend = resolve_backend(opts.backend, hidden_x.device)
    hidden_x, hidden_xz, weight = hidden_x.contiguous(), hidden_xz.contiguous(), weight.contiguous()
    y_local = targets - opts.vocab_start
    if backend == "triton":
        px, pxz = dual_partials_triton(hidden_x, hidden_xz, weight, y_local, opts.inv_temp, with_kl, opts.split_v)
    else:
        chunk = opts.split_v or vocab_chunk_for(hidden_x.shape[0], weight.shape[0], 32,
                                                default_chunk_bytes(hidden_x.device))
        px, pxz = dual_partials_torch(hidden_x, hidden_xz, weight, y_local, opts.inv_temp, with_kl, chunk)
    sx, sxz = global_stats([merge_partials(px), merge_partials(pxz)], targets, weight.shape[0], opts)
    kl = sxz.expect[:, 0] - (sxz.lse - sx.lse) if with_kl else None
    return sx.target - sx.lse, sxz.target - sxz.lse, kl, sx, sxz


def dual_context_backward(hidden_x: torch.Tensor, hidden_xz: torch.Tensor, weight: torch.Tensor,
                          targets: torch.Tensor, lse_x: torch.Tensor, lse_xz: torch.Tensor, d_logp_x: torch.Tensor,
                          d_kl: torch.Tensor | None, opts: LogprobOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(dH_x [T, H], dW [V_local, H]) for upstream dL/dlogp_x and dL/dKL [T]; x+z receives no gradient."""
    backend = resolve_backend(opts.backend, hidden_x.device)
    hidden_x, weight = hidden_x.contiguous(), weight.contiguous()
    g = d_logp_x.to(acc_dtype(hidden_x.dtype)).contiguous()
    k = d_kl.to(g.dtype).contiguous() if d_kl is not None else None
    rows = active_rows(g, k)
    if rows.numel() == 0:
        return torch.zeros_like(hidden_x), torch.zeros_like(weight)
    hx_a = take_rows(hidden_x, rows)
    hxz_a = take_rows(hidden_xz, rows) if k is not None else None
    y_a = take_rows(targets, rows) - opts.vocab_start
    lse_x_a, g_a, k_a = take_rows(lse_x, rows), take_rows(g, rows), take_rows(k, rows)
    lse_xz_a = take_rows(lse_xz, rows) if k is not None else None
    dz_fn = dual_dz_triton if backend == "triton" else dual_dz_torch
    chunk = opts.vocab_chunk or vocab_chunk_for(
        rows.numel(), weight.shape[0], weight.element_size() if backend == "triton" else 32,
        default_chunk_bytes(hidden_x.device))

    def dz_chunk(c0: int, c1: int) -> torch.Tensor:
        return dz_fn(hx_a, hxz_a, weight[c0:c1], y_a - c0, lse_x_a, lse_xz_a, g_a, k_a, opts.inv_temp)

    dh_a, d_weight = linear_backward_by_vocab_chunks(hx_a, weight, chunk, dz_chunk)
    d_hidden = put_rows(all_reduce_rows(dh_a, opts), rows, hidden_x.shape[0], hidden_x.dtype)
    return d_hidden, d_weight


class DualContextLogprobFunction(torch.autograd.Function):
    """Autograd node: (hidden_x, hidden_xz, weight) -> (logp_x, logp_xz, KL or empty); only x is differentiated."""

    @staticmethod
    def forward(ctx, hidden_x, hidden_xz, weight, targets, opts: LogprobOptions, with_kl: bool):
        logp_x, logp_xz, kl, sx, sxz = dual_context_forward(hidden_x, hidden_xz, weight, targets, opts, with_kl)
        ctx.save_for_backward(hidden_x, hidden_xz, weight, targets, sx.lse, sxz.lse)
        ctx.opts, ctx.with_kl = opts, with_kl
        ctx.mark_non_differentiable(logp_xz)
        return logp_x, logp_xz, kl if with_kl else logp_x.new_empty(0)

    @staticmethod
    def backward(ctx, d_logp_x, _d_logp_xz, d_kl):
        hidden_x, hidden_xz, weight, targets, lse_x, lse_xz = ctx.saved_tensors
        if d_logp_x is None:
            d_logp_x = torch.zeros_like(lse_x)
        d_hidden, d_weight = dual_context_backward(hidden_x, hidden_xz, weight, targets, lse_x, lse_xz, d_logp_x,
                                                   d_kl if ctx.with_kl else None, ctx.opts)
        return (d_hidden if ctx.needs_input_grad[0] else None, None,
                d_weight if ctx.needs_input_grad[2] else None, None, None, None)
