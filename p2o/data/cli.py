"""`p2o data`: generate the synthetic arithmetic set, inspect a data file, prepare public datasets."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    g = sub.add_parser("arithmetic", help="write synthetic arithmetic problems as jsonl")
    g.add_argument("--n", type=int, default=256, help="number of problems")
    g.add_argument("--levels", default="1,2,3", help="comma-separated difficulty levels (1..5)")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--out", default="-", help="output .jsonl ('-' for stdout)")
    s = sub.add_parser("show", help="load a data file with a field mapping and print the first problems")
    s.add_argument("path")
    s.add_argument("--question-key", default="question")
    s.add_argument("--answer-key", default="answer")
    s.add_argument("--id-key", default="")
    s.add_argument("--limit", type=int, default=5)
    p = sub.add_parser("prepare", help="prepare DeepScaleR / DeepMath-103K training sets (parquet + manifest)")
    try:
        from p2o.data.prepare import add_prepare_arguments
    except ImportError:
        p.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_prepare_arguments(p)


def main(args: argparse.Namespace) -> int:
    from p2o.data import arithmetic, loaders

    if args.data_command == "arithmetic":
        try:
            levels = [int(x) for x in args.levels.split(",") if x.strip()]
            problems = arithmetic.generate(args.n, levels, seed=args.seed)
        except ValueError as e:
            print(f"p2o data arithmetic: {e}", file=sys.stderr)
            return 2
        if args.out == "-":
            for q in problems:
                print(json.dumps(q.to_dict(), ensure_ascii=False))
        else:
            loaders.write_jsonl(args.out, problems)
            print(f"wrote {len(problems)} problems to {args.out}")
        return 0
    if args.data_command == "show":
        try:
            problems = loaders.load_problems(args.path, args.question_key, args.answer_key, args.id_key)
        except loaders.DataError as e:
            print(f"p2o data show: {e}", file=sys.stderr)
            return 2
        print(f"{len(problems)} problems in {args.path}")
        for q in problems[: args.limit]:
            print(json.dumps(q.to_dict(), ensure_ascii=False))
        return 0
    try:
        from p2o.data.prepare import prepare_main
    except ImportError:
        print("p2o data prepare: not available in this version of P2O.", file=sys.stderr)
        return 3
    return prepare_main(args)
