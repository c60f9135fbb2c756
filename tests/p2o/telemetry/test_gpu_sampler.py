"""GPU telemetry (p2o.telemetry.gpu) against `FakeNVML`, a stand-in for pynvml (NVML needs a driver): devices
follow CUDA_VISIBLE_DEVICES (indices, UUIDs, UUID prefixes, CUDA's stop at the first invalid entry), and a failing
query leaves its value out of the sample without raising, logged once."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from p2o.telemetry.gpu import GPUSampler


class FakeNVML:
    """The pynvml calls GPUSampler makes, over a list of devices (uuid, used bytes, utilisation or an exception)."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's names)
        pass

    class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
        pass

    class NVMLError_NotFound(NVMLError):  # noqa: N801
        pass

    def __init__(self, devices: list[dict], init_error: Exception | None = None):
        self.devices, self.init_error, self.initialised = devices, init_error, False

    def nvmlInit(self):  # noqa: N802
        if self.init_error:
            raise self.init_error
        self.initialised = True

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        if not 0 <= i < len(self.devices):
            raise self.NVMLError("Invalid Argument")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):  # noqa: N802
        for i, d in enumerate(self.devices):
            if d["uuid"] == uuid:
                return i
        raise self.NVMLError_NotFound("Not Found")

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return self.devices[h]["uuid"]

    def _get(self, h, key):
        value = self.devices[h][key]
        if isinstance(value, Exception):
            raise value
        return value

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        return SimpleNamespace(used=self._get(h, "used"), total=80 << 30)

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        return SimpleNamespace(gpu=self._get(h, "util"), memory=0)


def node(n: int = 4) -> FakeNVML:
    return FakeNVML([{"uuid": f"GPU-{i}{i}{i}0-aaaa-{i}", "used": (i + 1) << 30, "util": 10 * i} for i in range(n)])


def mem_by_gpu(sample: dict) -> list[float]:
    return [sample[f"gpu{i}/mem_used_gib"] for i in range(len(sample) // 2)]


def test_all_devices_without_cuda_visible_devices():
    s = GPUSampler(node(), env={})
    assert s.available and mem_by_gpu(s.sample()) == [1, 2, 3, 4]
    assert s.sample()["gpu3/util_pct"] == 30.0


@pytest.mark.parametrize("visible, expected", [
    ("2,0", [3, 1]),                              # CUDA's order, not NVML's
    ("3", [4]),
    ("GPU-2220-aaaa-2,GPU-0000-aaaa-0", [3, 1]),  # full UUIDs
    ("GPU-111,GPU-333", [2, 4]),                  # unique prefixes
    ("1,7,0", [2]),                               # CUDA stops at the first entry naming no device
    ("0,GPU-9,1", [1]),
    ("", []),
    ("-1", []),
])
def test_devices_follow_cuda_visible_devices(visible, expected):
    s = GPUSampler(node(), env={"CUDA_VISIBLE_DEVICES": visible})
    assert mem_by_gpu(s.sample()) == expected
    assert s.available is bool(expected)


def test_failing_queries_are_left_out_logged_once_and_never_raise(caplog):
    nvml = node(3)
    nvml.devices[0]["util"] = FakeNVML.NVMLError_NotSupported("Not Supported")  # e.g. a MIG slice
    nvml.devices[2]["used"] = FakeNVML.NVMLError_GpuIsLost("GPU is lost")
    nvml.devices[2]["util"] = FakeNVML.NVMLError_GpuIsLost("GPU is lost")
    s = GPUSampler(nvml, env={})
    with caplog.at_level(logging.WARNING, logger="p2o.telemetry.gpu"):
        first, second = s.sample(), s.sample()
    assert first == second == {"gpu0/mem_used_gib": 1.0, "gpu1/mem_used_gib": 2.0, "gpu1/util_pct": 10.0}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and any("gpu0 utilisation" in w and "NotSupported" in w for w in warnings)
    assert any("gpu2 memory" in w and "GpuIsLost" in w for w in warnings)


def test_no_nvml_means_no_metrics():
    s = GPUSampler(FakeNVML([], init_error=FakeNVML.NVMLError("NVML Shared Library Not Found")), env={})
    assert not s.available and s.sample() == {}
