"""`p2o verify --jsonl IN [--out OUT]`: verdicts for (response, answer) pairs.

Each input line is a JSON object with string fields "response" and "answer" (other fields are ignored).
Each output line is `{"correct": bool, "extracted": str|null, "reason": str}`, in input order, written to
OUT (atomically: temp file + rename) or to stdout. A malformed line stops the run before any scoring with
an error naming the line number and the problem; the exit status is then 2. A summary (count, accuracy,
reasons) goes to stderr.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

from p2o.config import RewardConfig


class InputError(ValueError):
    """A malformed input line; the message names the file, the line number and the field."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = RewardConfig()
    parser.add_argument("--jsonl", required=True, help='input: one {"response": ..., "answer": ...} per line')
    parser.add_argument("--out", default=None, help="output jsonl (default: stdout)")
    parser.add_argument("--fallback", default=d.fallback, choices=("none", "last_number", "answer_is"),
                        help="extraction when no \\boxed{} is present (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=d.workers, help="worker processes (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=d.timeout_s,
                        help="hard time bound per pair in seconds (default: %(default)s)")
    parser.add_argument("--max-answer-chars", type=int, default=d.max_answer_chars,
                        help="longer extracted answers are rejected (default: %(default)s)")


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(response, answer) pairs of a jsonl file; raises InputError naming the first malformed line."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object with 'response' and 'answer'")
            for key in ("response", "answer"):
                if key not in row:
                    raise InputError(f"{path}:{lineno}: missing field '{key}'")
                if not isinstance(row[key], str):
                    raise InputError(f"{path}:{lineno}: field '{key}' must be a string, "
                                     f"got {type(row[key]).__name__}")
            pairs.append((row["response"], row["answer"]))
    return pairs


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(args: argparse.Namespace) -> int:
    from p2o.reward.verifier import Verifier

    path = Path(args.jsonl)
    if not path.is_file():
        print(f"p2o verify: --jsonl: no such file: {path}", file=sys.stderr)
        return 2
    try:
        pairs = read_pairs(path)
    except InputError as e:
        print(f"p2o verify: {e}", file=sys.stderr)
        return 2
    cfg = RewardConfig(fallback=args.fallback, workers=args.workers, timeout_s=args.timeout_s,
                       max_answer_chars=args.max_answer_chars)
    try:
        verifier = Verifier(cfg)
    except ValueError as e:
        print(f"p2o verify: {e}", file=sys.stderr)
        return 2
    with verifier:
        verdicts = verifier.score_many(pairs)
    text = "".join(json.dumps(v.to_dict(), ensure_ascii=False) + "\n" for v in verdicts)
    if args.out:
        write_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    reasons = collections.Counter(v.reason for v in verdicts)
    acc = sum(v.correct for v in verdicts) / max(1, len(verdicts))
    print(f"p2o verify: {len(verdicts)} pairs, accuracy {acc:.4f}, reasons "
          + ", ".join(f"{k}={n}" for k, n in reasons.most_common()), file=sys.stderr)
    return 0
