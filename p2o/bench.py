"""`p2o bench NAME ...`: benchmarks that print a table and write CSV.

Each benchmark module provides `add_arguments(parser)` and `main(args) -> int`, like a CLI subcommand,
and is imported only when run.
"""
from __future__ import annotations

import argparse
import sys

from p2o.cli import _load

# name -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "verifier": ("p2o.reward.bench", "verdicts/s of the answer verifier, single process and pooled"),
    "rollout": ("p2o.rollout.bench", "HF engine vs vLLM on the demo workload; HF tokens/s and gateway latency"),
    "kernels": ("kernels.bench.run", "fused log-prob / GRPO loss / dual-context kernels vs baselines"),
    "loop": ("p2o.train.bench", "plain GRPO vs P2O step-time breakdown on the same tiny setting"),
    "vs-trl": ("p2o.experiment.vs_trl", "our GRPO step vs TRL's GRPOTrainer on identical work (CPU)"),
    "scaling": ("p2o.plan.bench", "strong/weak scaling sweep on whatever devices are present"),
    "convert": ("megatron_bridge.bench", "HF <-> Megatron conversion time and peak memory"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = "\n".join(f"  {n:10s} {h}" for n, (_, h) in BENCHMARKS.items())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "benchmarks:\n" + names
    parser.add_argument("bench", choices=sorted(BENCHMARKS), metavar="NAME", help="which benchmark")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's own options")


def main(args: argparse.Namespace) -> int:
    name = args.bench
    mod = _load(BENCHMARKS[name][0])
    if mod is None:
        print(f"p2o bench {name}: not available in this version of P2O.", file=sys.stderr)
        return 3
    parser = argparse.ArgumentParser(prog=f"p2o bench {name}", description=BENCHMARKS[name][1])
    mod.add_arguments(parser)
    return int(mod.main(parser.parse_args(args.bench_args)) or 0)
