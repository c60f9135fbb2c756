"""`p2o report RUN_DIR [--baseline RUN_DIR]`: (re)write the run report."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds metrics.jsonl)")
    parser.add_argument("--baseline", default=None, help="a baseline run (e.g. plain GRPO) to plot alongside")


def main(args: argparse.Namespace) -> int:
    from p2o.telemetry.report import write_report

    try:
        path = write_report(args.run_dir, args.baseline)
    except FileNotFoundError as e:
        print(f"p2o report: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
