"""Kernel microbenchmarks: `p2o bench kernels [--cpu] [--out kernels_bench.csv]` or `python -m kernels.bench.run`.

GPU mode (default; needs CUDA). For each LM head in `MODELS` and T in --tokens, every provider in
`providers.PROVIDERS` is timed in three modes with `triton.testing.do_bench` (median, p20, p80 in ms; L2
flushed between repetitions):

    forward   the loss closure with autograd recording (as in training)
    backward  loss.backward(retain_graph=True) on a recorded graph
    full      forward + backward

TFLOP/s follow Liger's accounting for streaming kernels: forward 2*T*H*V, backward 6*T*H*V (logit
recompute included), full 8*T*H*V (x2 for the dual-context pass), applied to every provider so rows
compare times. `frac_gemm` divides by the measured bf16 GEMM ceiling (`gemm` provider, h @ W^T at the
same shape). `peak_extra_bytes` is the allocator's peak during one full step minus what was allocated
before it, and `naive_logits_bytes` = 4*T*V (the fp32 logits the fused kernels never hold).

CPU mode (--cpu): small shapes, the chunked torch fallback vs materialised logits, `full` mode only by default;
times are CPU time (all threads); peak extra memory is counted by `p2o.plan.measure.TensorMemoryTracker`
(live tensor bytes, like torch.cuda.max_memory_allocated).

Every row is printed in a table and appended to --out as CSV with device name, date and git commit.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from kernels.bench.providers import PROVIDERS, make_case, try_setup

log = logging.getLogger(__name__)

# LM heads (H, V): Qwen3-4B and Qwen3-8B share the 151936-token vocabulary.
MODELS: dict[str, tuple[int, int]] = {"qwen3-4b": (2560, 151936), "qwen3-8b": (4096, 151936)}
GPU_TOKENS = (4096, 16384, 32768)
GPU_PROVIDERS = ("gemm", "fused", "eager", "compile", "liger", "cce", "single", "dual", "dual-kl", "two-single",
                 "grpo-fused", "grpo-eager")
# CPU mode: (T, H, V) small enough for a laptop, large enough that logits dominate memory.
CPU_CASES = ((512, 256, 32768), (2048, 256, 32768))
CPU_PROVIDERS = ("fused", "eager", "single", "dual", "dual-kl", "two-single", "grpo-fused", "grpo-eager")
MODES = ("forward", "backward", "full")
FLOP_FACTOR = {"forward": 2, "backward": 6, "full": 8}
FIELDS = ["kernel", "provider", "mode", "model", "T", "H", "V", "dtype", "ms_median", "ms_p20", "ms_p80", "tflops",
          "frac_gemm", "peak_extra_bytes", "naive_logits_bytes", "status", "device", "date", "commit", "torch", "triton"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu", action="store_true", help="CPU mode: peak memory of the torch fallback vs naive")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="LM heads (GPU mode)")
    parser.add_argument("--tokens", nargs="+", type=int, default=None, help="T values (GPU default 4096 16384 32768)")
    parser.add_argument("--providers", nargs="+", default=None, choices=list(PROVIDERS), help="providers to run")
    parser.add_argument("--modes", nargs="+", default=None, choices=list(MODES),
                        help="timed modes (default: all three on GPU, full only with --cpu)")
    parser.add_argument("--rep-ms", type=int, default=200, help="do_bench repetition budget per measurement (ms)")
    parser.add_argument("--out", default="kernels_bench.csv", help="CSV file to append rows to")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _env(device: str) -> dict:
    import triton
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {"device": name, "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": _commit(), "torch": torch.__version__, "triton": triton.__version__}


def _zero_grads(leaves) -> None:
    for t in leaves:
        t.grad = None


# ----------------------------------------------------------------------------- timing
def _time_gpu(fn, rep_ms: int, leaves) -> tuple[float, float, float]:
    from triton.testing import do_bench
    med, p20, p80 = do_bench(fn, warmup=25, rep=rep_ms, grad_to_none=leaves, quantiles=[0.5, 0.2, 0.8])
    return med, p20, p80


def _time_cpu(fn, leaves, reps: int = 2) -> tuple[float, float, float]:
    """CPU time (process_time: all threads, ms), which a shared, oversubscribed machine distorts far less than
    wall time."""
    times = []
    for _ in range(reps + 1):
        _zero_grads(leaves)
        t0 = time.process_time()
        fn()
        times.append((time.process_time() - t0) * 1e3)
    times = sorted(times[1:])  # first run is warm-up
    return statistics.median(times), times[0], times[-1]


def _mode_fn(loss_fn, mode: str, leaves):
    if mode == "forward":
        return loss_fn
    if mode == "full":
        return lambda: loss_fn().backward()
    loss = loss_fn()  # backward: re-run backward on one recorded graph
    return lambda: loss.backward(retain_graph=True)


def _peak_extra_gpu(loss_fn, leaves) -> int:
    _zero_grads(leaves)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss_fn().backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _peak_extra_cpu(loss_fn, leaves) -> int:
    from p2o.plan.measure import TensorMemoryTracker
    _zero_grads(leaves)
    with TensorMemoryTracker() as mem:
        loss_fn().backward()
    return mem.peak_bytes


# ----------------------------------------------------------------------------- driver
def run_case(model: str, T: int, H: int, V: int, device: str, dtype: torch.dtype, providers, modes, rep_ms: int,
             env: dict, gemm_tflops: float | None) -> tuple[list[dict], float | None]:
    rows = []
    case = make_case(T, H, V, device, dtype)
    base = 2.0 * T * H * V
    for name in providers:
        kernel, _, mult = PROVIDERS[name]
        row0 = dict(kernel=kernel, provider=name, model=model, T=T, H=H, V=V, dtype=str(dtype).replace("torch.", ""),
                    naive_logits_bytes=4 * T * V * mult, **env)
        loss_fn, why = try_setup(name, case)
        if loss_fn is None:
            rows.append(dict(row0, mode="-", status=why))
            continue
        for mode in modes if name != "gemm" else ("forward",):
            row = dict(row0, mode=mode)
            try:
                fn = _mode_fn(loss_fn, mode, case.leaves)
                if device == "cuda":
                    med, p20, p80 = _time_gpu(fn, rep_ms, case.leaves)
                else:
                    med, p20, p80 = _time_cpu(fn, case.leaves)
                tflops = FLOP_FACTOR[mode] * mult * base / 2 / (med * 1e-3) / 1e12
                if name == "gemm":
                    gemm_tflops = base / (med * 1e-3) / 1e12
                    tflops = gemm_tflops
                row.update(ms_median=round(med, 4), ms_p20=round(p20, 4), ms_p80=round(p80, 4),
                           tflops=round(tflops, 2), status="ok")
                if gemm_tflops:
                    row["frac_gemm"] = round(tflops / gemm_tflops, 3)
                if mode == "full":
                    peak = (_peak_extra_gpu if device == "cuda" else _peak_extra_cpu)(loss_fn, case.leaves)
                    row["peak_extra_bytes"] = peak
            except torch.OutOfMemoryError:
                row["status"] = "oom"
            except Exception as e:  # a baseline's own failure is a result, not a crash of the benchmark
                log.warning("%s %s T=%d: %s", name, mode, T, e)
                row["status"] = f"error: {type(e).__name__}"
            finally:
                _zero_grads(case.leaves)
                if device == "cuda":
                    torch.cuda.empty_cache()
            log.info("%s %s T=%d: %s ms, peak extra %s B, %s", name, mode, T, row.get("ms_median"),
                     row.get("peak_extra_bytes", "-"), row.get("status"))
            rows.append(row)
    return rows, gemm_tflops


def _print_table(rows: list[dict]) -> None:
    cols = ["kernel", "provider", "mode", "T", "H", "V", "ms_median", "tflops", "frac_gemm", "peak_extra_bytes",
            "naive_logits_bytes", "status"]
    print(" | ".join(f"{c:>12s}" for c in cols))
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c, "")
            if c.endswith("bytes") and isinstance(v, int):
                v = f"{v / 2**20:.1f} MiB"
            vals.append(f"{str(v):>12s}")
        print(" | ".join(vals))


def _append_csv(path: str, rows: list[dict]) -> None:
    new = not Path(path).exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})


def main(args: argparse.Namespace) -> int:
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("p2o bench kernels: no CUDA device; run with --cpu for the CPU memory comparison", file=sys.stderr)
        return 2
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        log.warning("TRITON_INTERPRET=1: the 'fused' providers will run the (slow) interpreter, not the torch path")
    env = _env(device)
    providers = args.providers or (GPU_PROVIDERS if device == "cuda" else CPU_PROVIDERS)
    modes = args.modes or (MODES if device == "cuda" else ("full",))
    all_rows = []
    if device == "cuda":
        for model in args.models:
            H, V = MODELS[model]
            for T in args.tokens or GPU_TOKENS:
                rows, _ = run_case(model, T, H, V, device, torch.bfloat16, providers, modes, args.rep_ms, env, None)
                all_rows += rows
    else:
        cases = [(T, H, V) for T, H, V in CPU_CASES if not args.tokens or T in args.tokens]
        for T, H, V in cases:
            rows, _ = run_case("cpu-small", T, H, V, device, torch.float32, providers, modes, args.rep_ms, env, None)
            all_rows += rows
    _print_table(all_rows)
    _append_csv(args.out, all_rows)
    print(f"\n{len(all_rows)} rows appended to {args.out} ({env['device']}, {env['date']}, commit {env['commit']})")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(prog="python -m kernels.bench.run", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
