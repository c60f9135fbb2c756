"""`p2o convert`: megatron_bridge's conversions (hf-to-megatron, megatron-to-hf, parity) plus `export`, which
reads a training run's directory (its checkpoints and config belong to the trainer, p2o.train.checkpoint).

    p2o convert export --run-dir runs/x [--step 30] [--out runs/x/hf_export] [--tp 1 --pp 1]
"""
from __future__ import annotations

import argparse
import sys

from megatron_bridge import cli as bridge_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = bridge_cli.add_arguments(parser)
    e = sub.add_parser("export", help="a training run's checkpoint -> HF model dir (safetensors, config, tokenizer)")
    e.add_argument("--run-dir", required=True, help="the run directory (logging.run_dir of a `p2o train` run)")
    e.add_argument("--step", type=int, default=None, help="checkpoint of this global step (default: the newest)")
    e.add_argument("--out", default=None, help="output HF directory (default: <run-dir>/hf_export)")
    e.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks doing the conversion")
    e.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks doing the conversion")


def main(args: argparse.Namespace) -> int:
    if args.convert_command != "export":
        return bridge_cli.main(args)
    if args.tp < 1 or args.pp < 1:
        print(f"p2o convert export: --tp and --pp must be >= 1 (got {args.tp}, {args.pp})", file=sys.stderr)
        return 2
    from p2o.config import ConfigError
    from p2o.train.checkpoint import CheckpointError, export_checkpoint

    try:
        out = export_checkpoint(args.run_dir, args.out, args.step, args.tp, args.pp)
    except (CheckpointError, ConfigError, FileNotFoundError) as err:
        print(f"p2o convert export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
