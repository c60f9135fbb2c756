"""`p2o` command line.

Each subcommand lives in its component's own module, which provides

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def main(args: argparse.Namespace) -> int

and is imported only when that subcommand runs, so `p2o --help` and `p2o verify` never import torch or
Megatron. `p2o bench NAME` dispatches the same way through `BENCHMARKS`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from p2o import __version__
from p2o.logs import configure_logging

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("p2o.train.cli", "run P2O / GRPO training from a YAML config"),
    "eval": ("p2o.eval.cli", "evaluate a checkpoint on math benchmarks; `eval compare` runs side by side"),
    "serve": ("p2o.rollout.cli", "serve a model behind the OpenAI-compatible gateway"),
    "gepa-serve": ("p2o.gepa.service.cli", "run the GEPA prompt-evolution service (CPU nodes)"),
    "convert": ("p2o.convert_cli", "HF <-> Megatron-Core checkpoints, logit parity checks, a run's HF export"),
    "bench": ("p2o.bench", "benchmarks that print a table and write CSV"),
    "plan": ("p2o.plan.cli", "memory / throughput planner for TP x PP x DP layouts"),
    "doctor": ("p2o.doctor", "report the software and hardware this machine offers"),
    "data": ("p2o.data.cli", "generate or prepare datasets"),
    "verify": ("p2o.reward.cli", "verify (response, answer) pairs from a jsonl file"),
    "config": ("p2o.config_cli", "show the resolved configuration, or check it and print the run's plan"),
    "report": ("p2o.telemetry.cli", "write the run report (report.html + plots) for a run directory"),
    "experiment": ("p2o.experiment.cli", "multi-run experiments (e.g. arithmetic: GRPO vs P2O)"),
}


def _load(module: str):
    """Import a subcommand module; None when it is not part of this installation."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            return None
        raise


def _find_command(argv: list[str]) -> str | None:
    """The subcommand in argv, skipping the value of the top-level --log-level option."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--log-level":
            skip = True
        elif not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2o", description="P2O: joint policy and prompt optimisation for RLVR.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party set-up logs and warnings (Megatron, vLLM, transformers) and progress "
                             "bars in non-terminal logs; quiet by default")
    parser.add_argument("--version", action="version", version=f"p2o {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            mod = _load(module)
            if mod is not None:
                mod.add_arguments(p)
            else:
                p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _find_command(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    configure_logging(level, verbose=bool(getattr(args, "verbose", False)))  # before any library import
    if args.command is None:
        parser.print_help()
        return 2
    mod = _load(COMMANDS[args.command][0])
    if mod is None:
        print(f"p2o {args.command}: not available in this version of P2O.", file=sys.stderr)
        return 3
    try:
        return int(mod.main(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
