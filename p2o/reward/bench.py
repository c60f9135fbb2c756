"""`p2o bench verifier`: verdicts/s of the answer verifier, single process and pooled.

    p2o bench verifier [--n 10000] [--workers 2] [--out verifier_bench.csv]

Protocol: `--n` (response, gold) pairs are drawn (seeded) from the labelled pair set and perturbed
(response wording, whitespace around the box, and a share with the gold/prediction swapped), so every
mode scores the same multiset of pairs. Modes:

- ``single``: `grade` in this process, one pair after another (no time bound; the floor cost of a verdict);
- ``pooled``: `Verifier.score_many` over `--workers` worker processes with the hard timeout (includes
  JSON transport, chunking and the per-pair deadline handling; excludes worker start-up, which is
  reported separately as ``startup``).

Prints a table and writes CSV rows (benchmark, mode, workers, pairs, seconds, verdicts_per_s,
verdicts_per_cpu_s (single mode: verdicts per second of this process's CPU time, insensitive to other load),
accuracy, machine, load_avg_1m, commit, timestamp).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from p2o.config import RewardConfig
from p2o.jsonl import read_jsonl

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "tests" / "data" / "verifier_pairs.jsonl"
_WRAPPERS = ["{r}", "{r}\n", "  {r}  ", "Let me reconsider.\n{r}", "{r}\n\nI hope this helps!"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=10_000, help="pairs to score per mode (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0))),
                        help="worker processes for the pooled mode (default: CPUs available)")
    parser.add_argument("--timeout-s", type=float, default=RewardConfig().timeout_s, help="per-pair bound")
    parser.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="labelled pairs to draw from (jsonl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="single,pooled", help="comma list of: single, pooled")
    parser.add_argument("--out", default=None, help="CSV output path")


def make_pairs(source: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """n perturbed (response, gold) pairs drawn from a labelled pair file."""
    rows = read_jsonl(source)
    if not rows:
        raise ValueError(f"{source}: no pairs")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.choice(rows)
        response = rng.choice(_WRAPPERS).format(r=r["response"])
        out.append((response, r["answer"]))
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(pairs: list[tuple[str, str]], modes: list[str], workers: int, timeout_s: float) -> list[dict]:
    """One result row per mode (plus a `startup` row for the pool)."""
    from p2o.reward.grade import grade
    from p2o.reward.verifier import Verifier

    rows = []
    if "single" in modes:
        t, c = time.perf_counter(), time.process_time()
        correct = sum(grade(r, a).correct for r, a in pairs)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        rows.append({"mode": "single", "workers": 1, "pairs": len(pairs), "seconds": dt,
                     "verdicts_per_s": len(pairs) / dt, "accuracy": correct / len(pairs),
                     "verdicts_per_cpu_s": len(pairs) / max(cpu, 1e-9)})
    if "pooled" in modes:
        t = time.perf_counter()
        with Verifier(RewardConfig(workers=workers, timeout_s=timeout_s)) as v:
            v.score_many([("\\boxed{1}", "1")] * workers * 2)  # wait until every worker is up
            startup = time.perf_counter() - t
            t = time.perf_counter()
            verdicts = v.score_many(pairs)
            dt = time.perf_counter() - t
        rows.append({"mode": "startup", "workers": workers, "pairs": 0, "seconds": startup, "verdicts_per_s": 0.0,
                     "accuracy": 0.0})
        rows.append({"mode": "pooled", "workers": workers, "pairs": len(pairs), "seconds": dt,
                     "verdicts_per_s": len(pairs) / dt, "accuracy": sum(x.correct for x in verdicts) / len(pairs)})
    return rows


def main(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("single", "pooled")]
    if bad:
        print(f"p2o bench verifier: --modes: unknown {bad}; expected single, pooled")
        return 2
    source = Path(args.pairs)
    if not source.is_file():
        print(f"p2o bench verifier: --pairs: no such file: {source}")
        return 2
    pairs = make_pairs(source, args.n, args.seed)
    rows = run(pairs, modes, args.workers, args.timeout_s)
    machine = f"{platform.machine()} {len(os.sched_getaffinity(0))}-core CPU"
    load = os.getloadavg()[0]  # other work on the machine skews wall-clock rates; recorded with them
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    commit = _commit()
    print(f"{machine}, load average {load:.2f}")
    print(f"{'mode':8s} {'workers':>7s} {'pairs':>7s} {'seconds':>9s} {'verdicts/s':>11s} {'per CPU-s':>10s} "
          f"{'accuracy':>9s}")
    for r in rows:
        per_cpu = f"{r['verdicts_per_cpu_s']:10.1f}" if "verdicts_per_cpu_s" in r else f"{'':10s}"
        print(f"{r['mode']:8s} {r['workers']:7d} {r['pairs']:7d} {r['seconds']:9.2f} {r['verdicts_per_s']:11.1f} "
              f"{per_cpu} {r['accuracy']:9.4f}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fields = ["benchmark", "mode", "workers", "pairs", "seconds", "verdicts_per_s", "verdicts_per_cpu_s",
                  "accuracy", "machine", "load_avg_1m", "commit", "timestamp"]
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in rows:
                w.writerow({"benchmark": "verifier", "verdicts_per_cpu_s": "", **r, "machine": machine,
                            "load_avg_1m": f"{load:.2f}", "commit": commit, "timestamp": stamp})
        print(f"wrote {out}")
    return 0
