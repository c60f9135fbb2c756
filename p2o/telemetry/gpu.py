"""GPU memory and utilisation via NVML (nvidia-ml-py); an empty dict where NVML is absent (CPU machines)."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class GPUSampler:
    """`sample()` -> {"gpu{i}/mem_used_gib", "gpu{i}/util_pct", ...} for every visible GPU, or {} without NVML."""

    def __init__(self) -> None:
        self._handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as e:  # NVMLError_LibraryNotFound on CPU machines, ImportError without the package
            log.debug("NVML unavailable: %s", type(e).__name__)

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, h in enumerate(self._handles):
            mem = self._nvml.nvmlDeviceGetMemoryInfo(h)
            util = self._nvml.nvmlDeviceGetUtilizationRates(h)
            out[f"gpu{i}/mem_used_gib"] = mem.used / 2**30
            out[f"gpu{i}/util_pct"] = float(util.gpu)
        return out
