"""`p2o bench loop`: plain GRPO and P2O on the same tiny setting, step-time breakdowns side by side.

Both arms are real `p2o train` runs of one config (default `configs/demo_cpu.yaml`) that differ only in
`p2o.enabled`; each runs in its own run directory under `--out`. Reported per arm: the mean seconds per step
of each phase the loop times (generate / verify / old-logprob / update / weight-sync), the step total, the
epoch-end GEPA wall time (P2O only), the run's wall time, and P2O's overhead as ratios to GRPO. Step means
skip the first `--warmup-steps` steps of each run. CSV: `loop_bench.csv` (one row per arm and quantity).

    p2o bench loop                                   # SmolLM2-135M, demo_cpu.yaml (2 epochs x 3 steps)
    p2o bench loop --set model.path=tiny-qwen3 --set train.steps_per_epoch=1
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

from p2o.atomic import atomic_write
from p2o.telemetry.metrics import read_metrics

PHASES = ["time_generate_s", "time_verify_s", "time_old_logprob_s", "time_update_s", "time_weight_sync_s",
          "time_step_s"]
ARMS = {"grpo": "p2o.enabled=false", "p2o": "p2o.enabled=true"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/demo_cpu.yaml", help="the shared setting")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for both arms (repeatable)")
    parser.add_argument("--out", default="bench_results/loop", help="output directory (run dirs + CSV)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="first steps of each run left out of the means")
    parser.add_argument("--timeout-s", type=float, default=7200.0, help="limit for one arm's run")


def run_arm(name: str, config: str, overrides: list[str], out: Path, timeout_s: float) -> tuple[Path, float]:
    """One fresh `p2o train` run; returns (run dir, wall seconds). Raises with the log path on failure."""
    run_dir = out / name
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "p2o.cli", "train", "--config", config, ARMS[name], *overrides,
           f"logging.run_dir={run_dir}", "checkpoint.resume=none", "logging.progress=false"]
    t = time.perf_counter()
    with (out / f"{name}.log").open("w") as logf:
        code = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout_s)
    wall = time.perf_counter() - t
    if code != 0:
        raise RuntimeError(f"arm '{name}' exited with code {code}; see {out / (name + '.log')}")
    return run_dir, wall


def breakdown(run_dir: Path, warmup_steps: int) -> dict[str, float]:
    """Mean seconds per step of each phase (steps after the warm-up) and the GEPA wall time of the run."""
    recs = list(read_metrics(run_dir))
    steps = [r for r in recs if r.get("kind") == "step"]
    kept = steps[warmup_steps:] or steps
    if not kept:
        raise ValueError(f"{run_dir}/metrics.jsonl: no step records")
    out = {k: statistics.fmean(r.get(k) or 0.0 for r in kept) for k in PHASES}
    out["gepa_wall_s"] = sum(r.get("gepa_wall_s") or 0.0 for r in recs if r.get("kind") == "gepa")
    out["steps"] = len(steps)
    out["templated_steps"] = sum(1 for r in steps if (r.get("templated_share") or 0) > 0)
    return out


def overhead(grpo: dict[str, float], p2o: dict[str, float]) -> dict[str, float | None]:
    """P2O / GRPO per quantity (None where GRPO's value is 0)."""
    return {k: (p2o[k] / grpo[k] if grpo.get(k) else None) for k in grpo if k in p2o}


def format_table(grpo: dict, p2o: dict, ratio: dict) -> str:
    keys = PHASES + ["gepa_wall_s", "run_wall_s"]
    lines = [f"{'seconds':22s} {'GRPO':>10s} {'P2O':>10s} {'P2O/GRPO':>9s}"]
    for k in keys:
        r = ratio.get(k)
        name = k.removeprefix("time_").removesuffix("_s") + (" /step" if k in PHASES else "")
        lines.append(f"{name:22s} {grpo.get(k, 0.0):10.3f} {p2o.get(k, 0.0):10.3f} {(f'{r:.2f}') if r else '-':>9s}")
    return "\n".join(lines)


def write_csv(path: Path, grpo: dict, p2o: dict, ratio: dict, meta: dict) -> None:
    with atomic_write(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["quantity", "grpo", "p2o", "p2o_over_grpo", *meta])
        for k in PHASES + ["gepa_wall_s", "run_wall_s", "steps", "templated_steps"]:
            r = ratio.get(k)
            w.writerow([k, round(grpo.get(k, 0.0), 4), round(p2o.get(k, 0.0), 4),
                        round(r, 4) if r is not None else "", *meta.values()])


def main(args: argparse.Namespace) -> int:
    import os

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.config).is_file():
        print(f"p2o bench loop: --config {args.config}: file not found", file=sys.stderr)
        return 2
    load = os.getloadavg()
    results = {}
    for name in ARMS:
        run_dir, wall = run_arm(name, args.config, args.set, out, args.timeout_s)
        results[name] = {**breakdown(run_dir, args.warmup_steps), "run_wall_s": wall}
    ratio = overhead(results["grpo"], results["p2o"])
    print(format_table(results["grpo"], results["p2o"], ratio))
    load_after = os.getloadavg()
    print(f"step means skip the first {args.warmup_steps} step(s); P2O steps with templated rollouts: "
          f"{results['p2o']['templated_steps']} of {results['p2o']['steps']}; load average before "
          f"{load[0]:.1f}, after {load_after[0]:.1f}")
    meta = {"config": args.config, "overrides": " ".join(args.set), "load_before": round(load[0], 2),
            "load_after": round(load_after[0], 2), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_csv(out / "loop_bench.csv", results["grpo"], results["p2o"], ratio, meta)
    print(f"CSV: {out / 'loop_bench.csv'}")
    return 0
