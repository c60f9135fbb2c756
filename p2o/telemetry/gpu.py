"""GPU memory and utilisation via NVML (nvidia-ml-py), for the GPUs this process sees; {} without NVML (CPU).

Device i in the metrics ("gpu{i}/...") is CUDA's device i: the i-th entry of CUDA_VISIBLE_DEVICES, which Slurm
and torchrun set per rank. NVML itself ignores that variable and numbers all GPUs of the node, so the entries
are resolved to NVML handles as CUDA reads them: an integer index (NVML's index, i.e. PCI bus order, the order
Slurm's gres binding uses; CUDA agrees with CUDA_DEVICE_ORDER=PCI_BUS_ID), a GPU or MIG UUID, or a unique
prefix of one; the list ends at the first entry that names no device. Without the variable every GPU is seen.

Sampling never raises: a query that fails (a GPU fallen off the bus, utilisation of a MIG slice: NotSupported)
leaves that value out of the sample and is logged once per device, metric and error.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_handles(nvml: Any, visible: str | None) -> list[Any]:
    """NVML handles of CUDA's devices 0, 1, ... given CUDA_VISIBLE_DEVICES = `visible` (None: all devices)."""
    count = nvml.nvmlDeviceGetCount()
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    uuids: list[str] | None = None
    handles: list[Any] = []
    for entry in (e.strip() for e in visible.split(",")):
        handle = None
        if entry.isdigit():
            if int(entry) < count:
                handle = nvml.nvmlDeviceGetHandleByIndex(int(entry))
        elif entry.startswith(("GPU-", "MIG-")):
            try:
                handle = nvml.nvmlDeviceGetHandleByUUID(entry)
            except nvml.NVMLError:
                if uuids is None:
                    uuids = [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
                matches = [i for i, u in enumerate(uuids) if u.startswith(entry)]
                if len(matches) == 1:
                    handle = nvml.nvmlDeviceGetHandleByIndex(matches[0])
        if handle is None:  # CUDA ignores this entry and every later one
            if entry:
                log.warning("CUDA_VISIBLE_DEVICES=%r: %r names no GPU of this node; GPU telemetry covers the %d "
                            "device(s) before it", visible, entry, len(handles))
            break
        handles.append(handle)
    return handles


class GPUSampler:
    """`sample()` -> {"gpu{i}/mem_used_gib", "gpu{i}/util_pct"} for this process's GPUs, or {} without NVML.

    `nvml`: the NVML module (default: `pynvml` from nvidia-ml-py); `env`: where CUDA_VISIBLE_DEVICES is read
    (default: this process's environment)."""

    def __init__(self, nvml: Any = None, env: Mapping[str, str] | None = None) -> None:
        self._handles: list[Any] = []
        self._reported: set[tuple[int, str, str]] = set()
        visible_devices = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            self._nvml = nvml
            self._handles = visible_handles(nvml, visible_devices)
        except Exception as e:  # NVMLError_LibraryNotFound on CPU machines, ImportError without the package
            log.debug("NVML unavailable: %s", type(e).__name__)

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def _query(self, i: int, metric: str, fn, handle) -> Any:
        try:
            return fn(handle)
        except Exception as e:  # NVMLError_GpuIsLost, NVMLError_NotSupported, ...: skip the value, keep training
            key = (i, metric, type(e).__name__)
            if key not in self._reported:
                self._reported.add(key)
                log.warning("GPU telemetry: gpu%d %s unavailable (%s: %s); left out of the metrics", i, metric,
                            type(e).__name__, e)
            return None

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, h in enumerate(self._handles):
            mem = self._query(i, "memory", self._nvml.nvmlDeviceGetMemoryInfo, h)
            if mem is not None:
                out[f"gpu{i}/mem_used_gib"] = mem.used / 2**30
            util = self._query(i, "utilisation", self._nvml.nvmlDeviceGetUtilizationRates, h)
            if util is not None:
                out[f"gpu{i}/util_pct"] = float(util.gpu)
        return out
