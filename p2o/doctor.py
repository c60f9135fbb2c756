"""`p2o doctor`: what this machine offers (Python, torch, CUDA, NCCL, Triton, Megatron, TE, vLLM, NVML) and what each enables."""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import platform
from dataclasses import asdict, dataclass


@dataclass
class Check:
    name: str
    available: bool
    detail: str
    enables: str


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _import_ok(module: str) -> tuple[bool, str]:
    try:
        importlib.import_module(module)
        return True, ""
    except Exception as e:  # a broken install (e.g. TE without CUDA libs) raises non-ImportErrors
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def run_checks() -> list[Check]:
    checks = [Check("python", True, platform.python_version(), "everything (>= 3.11 required)")]
    import torch

    cuda = torch.cuda.is_available()
    checks.append(Check("torch", True, torch.__version__, "training and generation"))
    checks.append(Check("cuda", cuda, f"{torch.cuda.device_count()} device(s): "
                        + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                        if cuda else "not available (CPU build or no driver)", "GPU training, vLLM, Triton kernels on GPU"))
    nccl = cuda and torch.distributed.is_nccl_available()
    checks.append(Check("nccl", nccl, ".".join(map(str, torch.cuda.nccl.version())) if nccl else "not available",
                        "multi-GPU tensor/pipeline/data parallelism"))
    checks.append(Check("gloo", torch.distributed.is_gloo_available(), "torch.distributed gloo backend",
                        "CPU multi-process Megatron (tests, demo)"))
    for name, dist, module, enables in [
        ("triton", "triton", "triton", "fused log-prob / GRPO loss / dual-context kernels (interpreter on CPU)"),
        ("megatron-core", "megatron-core", "megatron.core", "the policy trainer (TP/PP)"),
        ("transformer-engine", "transformer-engine", "transformer_engine", "TE layer spec, fp8 (GPU only)"),
        ("vllm", "vllm", "vllm", "colocated fast generation (GPU only)"),
        ("transformers", "transformers", "transformers", "HF engine, conversion, parity checks"),
        ("nvidia-ml-py", "nvidia-ml-py", "pynvml", "GPU telemetry"),
        ("math-verify", "math-verify", "math_verify", "verifier cross-checks (dev)"),
    ]:
        version = _version(dist)
        if version is None:
            checks.append(Check(name, False, "not installed", enables))
            continue
        ok, err = _import_ok(module)
        checks.append(Check(name, ok, version if ok else f"{version} installed but import fails: {err}", enables))
    try:
        import pynvml

        pynvml.nvmlInit()
        checks.append(Check("nvml", True, f"driver {pynvml.nvmlSystemGetDriverVersion()}", "GPU memory/utilisation metrics"))
    except Exception as e:
        checks.append(Check("nvml", False, type(e).__name__, "GPU memory/utilisation metrics"))
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    checks = run_checks()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
        return 0
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok ' if c.available else '-- '} {c.name:<{width}}  {c.detail:<48}  {c.enables}")
    return 0
