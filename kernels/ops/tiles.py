"""Triton building blocks shared by the log-prob kernels: one logit tile of h @ W^T.

`_logit_tile` computes a [BLOCK_T, BLOCK_V] fp32 tile of hidden @ weight^T, stepping over H in
BLOCK_H columns; `_logit_tile_pair` does the same for two hidden blocks that share every weight tile
load (the dual-context pass). Out-of-range rows/columns/H entries load as 0, so masked tiles are 0.

UPCAST (a constexpr; the branch compiles away) converts loaded tiles to fp32 before `tl.dot`. It is on
under the Triton interpreter, whose bf16 `tl.dot` multiplies raw bit patterns; on GPU bf16 tiles go to
the tensor cores as they are, with fp32 accumulation.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _logit_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w,
                BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    acc = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_mask = ks < H
        h = tl.load(h_rows + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_rows + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _logit_tile_pair(ha_ptr, hb_ptr, w_ptr, rows, cols, row_mask, col_mask, H, stride_ha, stride_hb, stride_w,
                     BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                     UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    acc_a = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    ha_rows = ha_ptr + rows.to(tl.int64)[:, None] * stride_ha
    hb_rows = hb_ptr + rows.to(tl.int64)[:, None] * stride_hb
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_mask = ks < H
        hmask = row_mask[:, None] & k_mask[None, :]
        w = tl.load(w_rows + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)  # loaded once
        ha = tl.load(ha_rows + ks[None, :], mask=hmask, other=0.0)
        hb = tl.load(hb_rows + ks[None, :], mask=hmask, other=0.0)
        if UPCAST:
            w = w.to(tl.float32)
            ha = ha.to(tl.float32)
            hb = hb.to(tl.float32)
        wt = tl.trans(w)
        acc_a = tl.dot(ha, wt, acc_a, input_precision=DOT_PRECISION)
        acc_b = tl.dot(hb, wt, acc_b, input_precision=DOT_PRECISION)
    return acc_a, acc_b


@triton.jit
def _grouped_pid(pid, n_row_blocks, n_splits, GROUP_T: tl.constexpr):
    """Map a 1-D program id to (row block, vocabulary split): GROUP_T row blocks walk one split together."""
    per_group = GROUP_T * n_splits
    group = pid // per_group
    first = group * GROUP_T
    rows_in_group = tl.minimum(n_row_blocks - first, GROUP_T)
    local = pid % per_group
    return first + local % rows_in_group, local // rows_in_group
