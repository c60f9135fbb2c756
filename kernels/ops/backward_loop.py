"""The backward's outer loop, shared by every log-prob kernel and backend.

Given the logit gradient of one vocabulary chunk, dz = dL/dl [Ta, C] (l = h W^T), the chunk's share of
the input gradients is

    dH += dz @ W[c0:c1]        (accumulated in fp32 over chunks, in row blocks of <= TEMP_BYTES products)
    dW[c0:c1] = dz^T @ H       (complete in one GEMM: the chunk's rows of dW)

so only one [Ta, C] chunk of dz is alive at a time, and the GEMMs go to cuBLAS (or CPU BLAS). The chunk
width comes from a byte budget (`dispatch.vocab_chunk_for`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.dispatch import acc_dtype

DzFn = Callable[[int, int], torch.Tensor]
TEMP_BYTES = 64 << 20
"""Largest temporary of the dH update: dz @ W_c is formed for this many bytes' worth of rows at a time."""


def linear_backward_by_vocab_chunks(hidden: torch.Tensor, weight: torch.Tensor, chunk: int,
                                    dz_fn: DzFn) -> tuple[torch.Tensor, torch.Tensor]:
    """dH [Ta, H] fp32 (fp64 for fp64 inputs) and dW [V, H] (weight's dtype) from ``dz_fn(c0, c1) -> [Ta, c1 - c0]`` per chunk."""
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    d_hidden = torch.zeros(hidden.shape, dtype=acc_dtype(hidden.dtype), device=hidden.device)
    d_weight = torch.empty_like(weight)
    rows_per_update = max(1, TEMP_BYTES // (hidden.shape[1] * weight.element_size()))
    for c0 in range(0, weight.shape[0], max(1, chunk)):  # an empty shard (V = 0): dH 0, dW empty
        c1 = min(c0 + chunk, weight.shape[0])
        dz = dz_fn(c0, c1)  # [Ta, C]
        for r0 in range(0, hidden.shape[0], rows_per_update):
            d_hidden[r0:r0 + rows_per_update] += dz[r0:r0 + rows_per_update] @ weight[c0:c1]
        torch.mm(dz.T, hidden, out=d_weight[c0:c1])
    return d_hidden, d_weight
