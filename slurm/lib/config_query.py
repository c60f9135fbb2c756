"""Read values from a resolved P2O run config for the Slurm scripts.

    python slurm/lib/config_query.py CONFIG [key=value ...] --get parallel.tp parallel.pp logging.run_dir

prints one value per requested key, one per line, in order (lists and mappings as JSON). With
`--yaml FILE` it also writes the resolved config there (atomically). A bad config exits 2 with the
`ConfigError` message (which names the key) on stderr, so the job fails before any component starts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides key=value")
    parser.add_argument("--get", nargs="+", default=[], metavar="KEY", help="dotted keys to print")
    parser.add_argument("--yaml", default="", metavar="FILE", help="write the resolved config here")
    args = parser.parse_args(argv)

    from p2o.config import ConfigError, load_config, to_dict, to_yaml

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"invalid run config {args.config}: {e}", file=sys.stderr)
        return 2
    if args.yaml:
        out = Path(args.yaml)
        tmp = out.with_name(out.name + f".tmp.{os.getpid()}")
        tmp.write_text(to_yaml(cfg))
        tmp.replace(out)
    values = to_dict(cfg)
    for key in args.get:
        node = values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                print(f"unknown config key '{key}'", file=sys.stderr)
                return 2
            node = node[part]
        print(json.dumps(node) if isinstance(node, (list, dict)) else node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
