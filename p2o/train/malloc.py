"""glibc malloc settings for a CPU training process (process-wide; applied once, before the model is built).

`train.malloc` picks one of three modes:

- ``keep`` (default): freed memory stays in the process for reuse: the heap top is never trimmed
  (`M_TRIM_THRESHOLD` 2 GiB - 1) and blocks up to 32 MiB come from the heap (`M_MMAP_THRESHOLD`, glibc's
  maximum). Why: every tensor a step allocates in memory the process gave back costs page faults on first
  touch, and on virtual machines a fault can cost far more than the arithmetic on the page. Measured on the
  Megatron policy of SmolLM2-135M in fp32, 2 threads, one optimizer step of 8 x 125 tokens: 5.4 s with ``keep``
  against 37 s with glibc's defaults (docs/results.md section 1). RSS stays at its high-water mark.
- ``release``: blocks of 128 KiB or more get their own mapping, unmapped when freed (`M_MMAP_THRESHOLD`
  128 KiB, which also turns glibc's dynamic thresholds off), so RSS follows live memory: the lowest peak
  RSS where freed activations would otherwise stay resident in the arenas, at the cost of those page faults.
- ``glibc``: leave glibc's dynamic defaults alone.

`malloc_env(mode)` gives the same settings as environment variables (`MALLOC_TRIM_THRESHOLD_`,
`MALLOC_MMAP_THRESHOLD_`) for a process that is not P2O's, e.g. the TRL side of `p2o bench vs-trl`.
Where the C library is not glibc, `apply_malloc_mode` is a no-op that returns False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MAX_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's HEAP_MAX_SIZE / 2 on 64-bit; mallopt refuses larger values
MODES: dict[str, dict[int, int]] = {
    "keep": {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_THRESHOLD: MAX_MMAP_THRESHOLD_BYTES},
    "release": {M_MMAP_THRESHOLD: 128 << 10},
    "glibc": {},
}
_ENV_NAMES = {M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}


def _settings(mode: str) -> dict[int, int]:
    if mode not in MODES:
        raise ValueError(f"train.malloc: got {mode!r}; expected one of {', '.join(MODES)}")
    return MODES[mode]


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def apply_malloc_mode(mode: str) -> bool:
    """Apply `train.malloc` = ``mode`` to this process with mallopt; True if settings were applied."""
    settings = _settings(mode)
    if not settings:
        return False
    libc = _glibc()
    if libc is None:
        log.info("malloc: not glibc; train.malloc=%s has no effect", mode)
        return False
    ok = all(libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in settings.items())
    if not ok:
        log.warning("malloc: mallopt refused a setting of train.malloc=%s", mode)
    return ok


def malloc_env(mode: str) -> dict[str, str]:
    """The environment variables that give a new process the settings of ``mode``."""
    return {_ENV_NAMES[param]: str(value) for param, value in _settings(mode).items()}


def trim() -> bool:
    """Return free heap pages to the OS (`malloc_trim(0)`); True if memory was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
