"""`train.malloc_mmap_threshold_bytes` (p2o.train.malloc): with a fixed mmap threshold, memory freed after a
burst of mid-sized allocations goes back to the OS; with glibc's dynamic default the heap keeps it. Each case
runs in its own interpreter (the setting is process-wide)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2o.train.malloc import MAX_MMAP_THRESHOLD_BYTES, set_mmap_threshold

# One 16 MiB block freed first (this raises glibc's dynamic threshold to 16 MiB), then 96 blocks of 2 MiB with a
# small block after each (so the heap top cannot shrink), then the 2 MiB blocks are freed: what stays resident?
BURST = r"""
import ctypes, json, sys
from p2o.train.malloc import set_mmap_threshold
applied = set_mmap_threshold(int(sys.argv[1]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
big = libc.malloc(16 << 20); ctypes.memset(big, 1, 16 << 20); libc.free(big)
base = rss()
blocks, pins = [], []
for _ in range(96):
    b = libc.malloc(2 << 20); ctypes.memset(b, 1, 2 << 20); blocks.append(b)
    p = libc.malloc(64); pins.append(p)
peak = rss()
for b in blocks:
    libc.free(b)
print(json.dumps({"applied": applied, "burst": peak - base, "retained": rss() - base}))
"""


def burst(threshold: int) -> dict:
    out = subprocess.run([sys.executable, "-c", BURST, str(threshold)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_fixed_threshold_returns_freed_memory_and_the_default_keeps_it():
    fixed, default = burst(128 * 1024), burst(0)
    assert fixed["applied"] and not default["applied"]
    assert fixed["burst"] > 150 << 20 and default["burst"] > 150 << 20   # 192 MiB were touched in both
    assert fixed["retained"] < 16 << 20, fixed
    assert default["retained"] > 150 << 20, default                    # what the setting is for


def test_out_of_range_names_the_field():
    for bad in (-1, MAX_MMAP_THRESHOLD_BYTES + 1):
        with pytest.raises(ValueError, match="train.malloc_mmap_threshold_bytes"):
            set_mmap_threshold(bad)
