"""`p2o experiment NAME ...`: multi-run experiments. Each experiment module provides `add_arguments(parser)`
and `main(args) -> int` and is imported only when run.

    p2o experiment arithmetic --out runs/arithmetic      # GRPO K=4, GRPO K=8, P2O Self-Ref K=4 (resumable)
    p2o experiment pass-rate --levels 0                  # is there any GRPO signal before training?
    p2o experiment lr-study --out runs/lr_study          # plain GRPO at 1e-6, 1e-5, 3e-5, 1e-4 (resumable)
"""
from __future__ import annotations

import argparse
import importlib

# name -> (module, one-line help)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "arithmetic": ("p2o.experiment.arithmetic",
                   "GRPO (K=4), GRPO 2x rollouts (K=8) and P2O Self-Ref (K=4) on the same arithmetic problems"),
    "lr-study": ("p2o.experiment.lr_study",
                 "plain GRPO at several learning rates on one arithmetic setting (resumable; table and curves)"),
    "pass-rate": ("p2o.experiment.pass_rate",
                  "the initial policy's plain pass rate (greedy, sampled, groups with signal) for a task setting"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="NAME", required=True)
    for name, (module, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)


def main(args: argparse.Namespace) -> int:
    return int(importlib.import_module(EXPERIMENTS[args.experiment][0]).main(args) or 0)
