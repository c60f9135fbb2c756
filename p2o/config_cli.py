"""`p2o config show --config X [key=value ...]`: print the resolved, validated configuration."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"], help="show: print the resolved config as YAML")
    parser.add_argument("--config", default=None, help="YAML file (defaults only when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. rollout.n=8")


def main(args: argparse.Namespace) -> int:
    from p2o.config import ConfigError, load_config, to_yaml

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"p2o config: {e}", file=sys.stderr)
        return 2
    print(to_yaml(cfg), end="")
    return 0
