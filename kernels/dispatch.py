"""Which implementation runs a kernel, and with what tile sizes.

Three backends share one host-side algorithm (vocabulary splits, row compaction, chunked backward):

- ``"triton"``: the Triton kernels, compiled for CUDA tensors;
- ``"triton"`` under ``TRITON_INTERPRET=1`` on CPU tensors: the same kernels run by Triton's numpy
  interpreter (tests; fp32 only, about 100-400x slower than torch);
- ``"torch"``: chunked plain-torch code for CPU production, never holding more than one
  ``[T, vocab_chunk]`` logit tile at a time.

``"auto"`` picks Triton on CUDA, the interpreter when ``TRITON_INTERPRET=1``, torch otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    """True when Triton kernels run in the numpy interpreter (set before the kernels are imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``auto|triton|torch`` to ``triton`` or ``torch`` for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend: got {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if device.type == "cuda" or interpreter_enabled() else "torch"
    if backend == "triton" and device.type != "cuda" and not interpreter_enabled():
        raise ValueError("kernel backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
                         "`kernels` is imported; use backend='torch' for the CPU fallback")
    return backend


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes of the log-prob kernels.

    ``block_t x block_v`` is one logit tile, reduced over ``block_h`` columns of H per ``tl.dot``;
    ``split_v`` vocabulary columns form one forward program's range (partial statistics per split are
    merged on the host); ``group_t`` row blocks run back to back over the same split so that concurrently
    resident programs read the same weight tiles from L2.
    """

    block_t: int
    block_v: int
    block_h: int
    split_v: int
    group_t: int
    num_warps: int
    num_stages: int


def tile_config(device: torch.device, dtype: torch.dtype) -> TileConfig:
    """Tile sizes for ``device``: tensor-core sized on CUDA, few large tiles under the interpreter."""
    if device.type == "cuda":
        # 128x128 bf16 tiles with a 64-wide K step fit Hopper's shared memory at 3 stages; fp32 halves K.
        block_h = 64 if dtype in (torch.bfloat16, torch.float16) else 32
        return TileConfig(block_t=128, block_v=128, block_h=block_h, split_v=4096, group_t=16,
                          num_warps=8, num_stages=3)
    # Interpreter: every program runs sequentially in numpy, so fewer, larger tiles are faster.
    return TileConfig(block_t=32, block_v=128, block_h=64, split_v=4096, group_t=4, num_warps=4, num_stages=1)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 ("ieee") for fp32 inputs, native for bf16/fp16."""
    return "ieee" if dtype == torch.float32 else "tf32"


def default_chunk_bytes(device: torch.device) -> int:
    """Bytes one backward vocabulary chunk of ``dz`` (plus temporaries on CPU) may take."""
    return (64 << 20) if device.type == "cuda" else (16 << 20)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / statistics dtype: fp32, or fp64 for fp64 inputs (the torch path then runs in fp64)."""
    return torch.promote_types(dtype, torch.float32)


def vocab_chunk_for(rows: int, vocab: int, bytes_per_elem: int, budget_bytes: int, multiple: int = 128) -> int:
    """Columns per backward chunk so that ``rows x chunk x bytes_per_elem <= budget_bytes`` (at least ``multiple``)."""
    cols = budget_bytes // max(1, rows * bytes_per_elem)
    cols = max(multiple, (cols // multiple) * multiple)
    return int(min(cols, vocab))
