"""`p2o bench scaling`: strong / weak scaling of a Megatron-Core training step on whatever is present.

    p2o bench scaling                                  # CPU: 1 and 2 gloo ranks, tiny-qwen3, data parallel
    p2o bench scaling --ranks 1 2 4 8 --model Qwen3-0.6B --parallel tp --csv scaling.csv   # a GPU node

For each rank count N, one spawned job of N ranks (`p2o.plan.validate.run_step`: gloo on CPU, NCCL on
GPUs) runs a warm-up step, an instrumented step and `--steps` timed steps of a random-weight model of the
given shape; the median timed step is reported.

- strong scaling: the global batch (`--micro-batches` x `--micro-batch` sequences) is fixed and split over
  the DP ranks; efficiency(N) = t(1) / (N x t(N)) for DP; for TP / PP the batch is the same on every rank
  and efficiency(N) = t(1) / (N x t(N)) as well (N ranks doing one rank's work).
- weak scaling (DP only): every rank keeps the per-rank batch; efficiency(N) = t(1) / t(N).

CSV rows: benchmark, mode, parallel, ranks, tp, pp, dp, model, seq, global_seqs, step_s, tokens_per_s,
tokens_per_s_per_rank, efficiency, peak_mib (largest rank), device, commit, timestamp.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import platform
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

FIELDS = ("benchmark", "mode", "parallel", "ranks", "tp", "pp", "dp", "model", "seq", "global_seqs", "step_s",
          "tokens_per_s", "tokens_per_s_per_rank", "efficiency", "peak_mib", "device", "commit", "timestamp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-qwen3", help="preset name or HF config.json (random weights)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to run (first = baseline)")
    parser.add_argument("--parallel", choices=("dp", "tp", "pp"), default="dp", help="how N ranks split the step")
    parser.add_argument("--modes", nargs="+", choices=("strong", "weak"), default=["strong", "weak"])
    parser.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per micro-batch")
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per step (global, strong mode)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per job (median reported)")
    parser.add_argument("--csv", default="scaling.csv", help="CSV file to append to")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def spec_for(parallel: str, mode: str, ranks: int, args: argparse.Namespace):
    """The StepSpec of N ranks, or None when the combination is not meaningful (weak TP / PP)."""
    from p2o.plan.validate import StepSpec

    tp, pp, dp = {"dp": (1, 1, ranks), "tp": (ranks, 1, 1), "pp": (1, ranks, 1)}[parallel]
    if mode == "weak" and parallel != "dp":
        return None
    if mode == "strong" and parallel == "dp":
        if args.micro_batches % ranks:
            raise ValueError(f"--micro-batches {args.micro_batches} must be divisible by every --ranks value ({ranks})")
        mbs = args.micro_batches // ranks
    else:
        mbs = args.micro_batches
    return StepSpec(tp, pp, dp, seq=args.seq, micro_batch=args.micro_batch, micro_batches=mbs, timed_steps=args.steps)


def efficiency(mode: str, ranks: int, t1: float, tn: float) -> float:
    return t1 / tn if mode == "weak" else t1 / (ranks * tn)


def main(args: argparse.Namespace) -> int:
    from p2o.plan.presets import PlanError, load_model_shape
    from p2o.plan.validate import run_step

    try:
        shape = load_model_shape(args.model)
    except PlanError as e:
        print(f"p2o bench scaling: {e}")
        return 2
    device, commit = device_name(), git_commit()
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    rows = []
    measured_by_spec: dict = {}  # strong and weak share their 1-rank job
    for mode in args.modes:
        base = None
        for n in args.ranks:
            try:
                spec = spec_for(args.parallel, mode, n, args)
            except ValueError as e:
                print(f"p2o bench scaling: {e}")
                return 2
            if spec is None:
                continue
            if spec not in measured_by_spec:
                measured_by_spec[spec] = run_step(shape, spec)
            measured = measured_by_spec[spec]
            step_s = max(m["step_s"] for m in measured)
            global_seqs = spec.micro_batch * spec.micro_batches * spec.dp
            tokens = global_seqs * spec.seq
            base = step_s if base is None else base
            rows.append(dict(benchmark="scaling", mode=mode, parallel=args.parallel, ranks=n, tp=spec.tp, pp=spec.pp,
                             dp=spec.dp, model=shape.name, seq=spec.seq, global_seqs=global_seqs,
                             step_s=round(step_s, 5), tokens_per_s=round(tokens / step_s, 1),
                             tokens_per_s_per_rank=round(tokens / step_s / n, 1),
                             efficiency=round(efficiency(mode, n / args.ranks[0], base, step_s), 4),
                             peak_mib=round(max(m["peak"] for m in measured) / 2**20, 2),
                             device=device, commit=commit, timestamp=stamp))
    path = Path(args.csv)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"{'mode':7s} {'par':4s} {'ranks':>5s} {'seqs':>5s} {'step s':>9s} {'tok/s':>10s} {'tok/s/rank':>10s} "
          f"{'eff':>6s} {'peak MiB':>9s}")
    for r in rows:
        print(f"{r['mode']:7s} {r['parallel']:4s} {r['ranks']:5d} {r['global_seqs']:5d} {r['step_s']:9.4f} "
              f"{r['tokens_per_s']:10.1f} {r['tokens_per_s_per_rank']:10.1f} {r['efficiency']:6.1%} {r['peak_mib']:9.1f}")
    print(f"device: {device}; appended {len(rows)} rows to {path}")
    return 0
