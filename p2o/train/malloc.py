"""glibc malloc settings for the CPU training process (process-wide; call once, before the model is built).

Why: with glibc's default *dynamic* mmap threshold, the first large tensor freed raises the threshold to its
size (up to 32 MiB), so later activation tensors of a few MiB come from the heap arenas instead of fresh
mappings. The forward/backward of a micro-batch frees them all again, but the arenas keep the pages: the
process's RSS stays far above what is live (measured on the Megatron policy of SmolLM2-135M in fp32, one
train_step of 4 micro-batches of 8 x 121 tokens: the forward/backward peak 1.9 GiB higher than with a fixed
threshold, and 3.3 GiB more resident after the step, 5.8 vs 2.5 GiB; docs/results.md section 1). A *fixed*
threshold (`mallopt(M_MMAP_THRESHOLD, n)`, which also turns the dynamic adjustment off) maps every
allocation of `n` bytes or more on its own and unmaps it when freed, so RSS follows live memory; the price
is page faults (kernel time) on the first touch of every such allocation: on SmolLM2-135M with 2 threads,
about +20% sampling and +27% forward/backward time. Hence off by default (`train.malloc_mmap_threshold_bytes=0`);
set it where host memory is the constraint.

This is what `MALLOC_MMAP_THRESHOLD_=n` in the environment does, applied from the config instead of the
launcher. A no-op (returns False) where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # <malloc.h>
MAX_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's HEAP_MAX_SIZE / 2 on 64-bit; mallopt refuses larger values


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at `nbytes` (0: leave the dynamic default). True if applied.

    Raises ValueError naming `train.malloc_mmap_threshold_bytes` outside [0, 32 MiB].
    """
    if not 0 <= nbytes <= MAX_MMAP_THRESHOLD_BYTES:
        raise ValueError(f"train.malloc_mmap_threshold_bytes: got {nbytes}; expected 0 (glibc's dynamic default) "
                         f"or 1..{MAX_MMAP_THRESHOLD_BYTES}")
    if nbytes == 0:
        return False
    libc = _glibc()
    if libc is None:
        log.info("malloc: not glibc; train.malloc_mmap_threshold_bytes=%d has no effect", nbytes)
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(nbytes)) == 1
    if not ok:
        log.warning("malloc: mallopt(M_MMAP_THRESHOLD, %d) failed", nbytes)
    return ok


def trim() -> bool:
    """Return free heap pages to the OS (`malloc_trim(0)`); True if memory was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
