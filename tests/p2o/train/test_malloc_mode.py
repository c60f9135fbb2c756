"""`train.malloc` (p2o.train.malloc): what each mode does to memory freed after a burst of allocations, in its
own interpreter (the setting is process-wide), and the same settings through the environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from p2o.train.malloc import apply_malloc_mode, malloc_env

# One 16 MiB block freed first (glibc's dynamic mmap threshold rises to 16 MiB), then 192 MiB in blocks of SIZE MiB,
# each followed by a small block (so the heap top cannot shrink), then the big blocks are freed: how much stays
# resident?
BURST = r"""
import ctypes, json, sys
from p2o.train.malloc import apply_malloc_mode
applied = apply_malloc_mode(sys.argv[1]) if sys.argv[1] != "env" else None
size = int(sys.argv[2]) << 20
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
big = libc.malloc(16 << 20); ctypes.memset(big, 1, 16 << 20); libc.free(big)
base = rss()
blocks, pins = [], []
for _ in range((192 << 20) // size):
    b = libc.malloc(size); ctypes.memset(b, 1, size); blocks.append(b)
    pins.append(libc.malloc(64))
peak = rss()
for b in blocks:
    libc.free(b)
print(json.dumps({"applied": applied, "burst": peak - base, "retained": rss() - base}))
"""
MiB = 1 << 20


def burst(mode: str, size_mib: int, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", BURST, mode, str(size_mib)], capture_output=True,
                         text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_modes_keep_or_release_freed_memory():
    results = {(mode, size): burst(mode, size) for mode in ("keep", "release", "glibc") for size in (2, 24)}
    for (mode, _), r in results.items():
        assert r["applied"] is (mode != "glibc")
        assert r["burst"] > 150 * MiB, r  # 192 MiB were touched
    # glibc's dynamic default keeps freed blocks below its threshold (16 MiB here) and unmaps larger ones.
    assert results[("glibc", 2)]["retained"] > 150 * MiB and results[("glibc", 24)]["retained"] < 16 * MiB
    # keep: up to 32 MiB from the heap, which is never trimmed: freed memory is reused without page faults.
    assert results[("keep", 2)]["retained"] > 150 * MiB and results[("keep", 24)]["retained"] > 150 * MiB
    # release: every block of 128 KiB or more is its own mapping: RSS follows live memory.
    assert results[("release", 2)]["retained"] < 16 * MiB and results[("release", 24)]["retained"] < 16 * MiB
    # The environment form gives another process the same behaviour.
    assert burst("env", 24, env=malloc_env("keep"))["retained"] > 150 * MiB
    assert burst("env", 2, env=malloc_env("release"))["retained"] < 16 * MiB


def test_environment_form_and_bad_mode():
    assert malloc_env("keep") == {"MALLOC_TRIM_THRESHOLD_": str(2**31 - 1), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}
    assert malloc_env("release") == {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
    assert malloc_env("glibc") == {}
    with pytest.raises(ValueError, match="train.malloc: got 'fast'"):
        apply_malloc_mode("fast")
