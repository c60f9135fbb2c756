"""`p2o config show|check --config X [key=value ...]`: the resolved configuration, or the dry run's plan.

    p2o config show --config configs/demo_cpu.yaml rollout.n=8    # the resolved, validated config as YAML
    p2o config check --config configs/qwen3_4b_p2o_deepmath.yaml  # every check + the plan (= p2o train --dry-run)

Both exit 0 when the config is good and 2 with an error naming the key(s) when it is not.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (("show", "print the resolved, validated config as YAML"),
                            ("check", "run every validation, print the derived limits and the plan (no model)")):
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=None, help="YAML file (defaults only when omitted)")
        p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. rollout.n=8")


def main(args: argparse.Namespace) -> int:
    from p2o.config import ConfigError, load_config, to_yaml

    if args.action == "check":
        from p2o.dry_run import dry_run
        return dry_run(args.config, list(args.overrides), prog="p2o config check")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"p2o config: {e}", file=sys.stderr)
        return 2
    print(to_yaml(cfg), end="")
    return 0
