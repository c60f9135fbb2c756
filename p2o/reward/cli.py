"""`p2o verify --jsonl IN [--out OUT]`: verdicts for (response, answer) pairs, streamed as they are decided.

Each input line is a JSON object with string fields "response" and "answer" (other fields are ignored).
Each non-blank input line gets one output line, in input order: `{"correct": bool, "extracted": str|null,
"reason": str}`. A malformed line (bad UTF-8 or JSON, not an object, a missing or non-string field, invalid
Unicode such as a lone surrogate) gets `{"correct": false, "extracted": null, "reason": "bad_input",
"error": "<file>:<line>: <what is wrong>"}` and the rest of the file is scored as usual.

Verdicts are written in chunks as soon as a chunk is scored (flushed), to stdout or to `OUT.partial`,
which is renamed to OUT once the whole input is done: an interrupted run keeps every verdict already
decided. A summary (count, accuracy, reasons, malformed lines) goes to stderr. Exit status: 0, or 2 when
the input file is missing or any line was malformed (every line still has its verdict).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from p2o.config import RewardConfig
from p2o.jsonl import scan_jsonl

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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
    parser.add_argument("--chunk", type=int, default=256, help="pairs scored (and written) together (default: 256)")


def check_row(row: Any) -> tuple[str, str]:
    """(response, answer) of a decoded line; InputError saying what is wrong."""
    if not isinstance(row, dict):
        raise InputError("expected a JSON object with 'response' and 'answer'")
    for key in ("response", "answer"):
        if key not in row:
            raise InputError(f"missing field '{key}'")
        if not isinstance(row[key], str):
            raise InputError(f"field '{key}' must be a string, got {type(row[key]).__name__}")
        m = _LONE_SURROGATE.search(row[key])
        if m:
            raise InputError(f"field '{key}' is not valid Unicode (lone surrogate U+{ord(m.group()):04X} at "
                             f"character {m.start()})")
    return row["response"], row["answer"]


def read_lines(path: Path) -> Iterator[tuple[int, tuple[str, str] | None, str]]:
    """(line number, pair or None, error) for every non-blank line of `path`."""
    for line in scan_jsonl(path):
        if line.error:
            yield line.lineno, None, f"{path}:{line.lineno}: {line.error}"
            continue
        try:
            yield line.lineno, check_row(line.record), ""
        except InputError as e:
            yield line.lineno, None, f"{path}:{line.lineno}: {e}"


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(response, answer) pairs of a jsonl file; raises InputError naming the first malformed line."""
    pairs = []
    for _, pair, error in read_lines(path):
        if pair is None:
            raise InputError(error)
        pairs.append(pair)
    return pairs


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def stream_verdicts(verifier: Any, path: Path, out: IO[bytes], chunk: int) -> collections.Counter:
    """Score `path` chunk by chunk, writing each chunk's verdict lines (in input order) as soon as it is done.
    Returns counts: 'lines', 'correct', 'malformed' and one per reason."""
    from p2o.reward.verdict import BAD_INPUT

    counts: collections.Counter = collections.Counter()
    pending: list[tuple[tuple[str, str] | None, str]] = []

    def flush() -> None:
        pairs = [p for p, _ in pending if p is not None]
        verdicts = iter(verifier.score_many(pairs) if pairs else [])
        for pair, error in pending:
            if pair is None:
                record = {"correct": False, "extracted": None, "reason": BAD_INPUT, "error": error}
                counts["malformed"] += 1
            else:
                record = next(verdicts).to_dict()
            counts["lines"] += 1
            counts["correct"] += bool(record["correct"])
            counts["reason:" + record["reason"]] += 1
            out.write(_line(record))
        out.flush()
        pending.clear()

    for _, pair, error in read_lines(path):
        pending.append((pair, error))
        if error:
            print(f"p2o verify: {error}", file=sys.stderr)
        if len(pending) >= chunk:
            flush()
    flush()
    return counts


def main(args: argparse.Namespace) -> int:
    from p2o.reward.verifier import Verifier

    path = Path(args.jsonl)
    if not path.is_file():
        print(f"p2o verify: --jsonl: no such file: {path}", file=sys.stderr)
        return 2
    if args.chunk < 1:
        print(f"p2o verify: --chunk: got {args.chunk}; expected >= 1", file=sys.stderr)
        return 2
    cfg = RewardConfig(fallback=args.fallback, workers=args.workers, timeout_s=args.timeout_s,
                       max_answer_chars=args.max_answer_chars)
    try:
        verifier = Verifier(cfg)
    except ValueError as e:
        print(f"p2o verify: {e}", file=sys.stderr)
        return 2
    with verifier:
        if args.out:
            final = Path(args.out)
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(final.name + ".partial")
            with partial.open("wb") as f:
                counts = stream_verdicts(verifier, path, f, args.chunk)
                os.fsync(f.fileno())
            os.replace(partial, final)
        else:
            counts = stream_verdicts(verifier, path, sys.stdout.buffer, args.chunk)
    reasons = {k.split(":", 1)[1]: n for k, n in counts.most_common() if k.startswith("reason:")}
    acc = counts["correct"] / max(1, counts["lines"])
    print(f"p2o verify: {counts['lines']} pairs, accuracy {acc:.4f}, reasons "
          + ", ".join(f"{k}={n}" for k, n in reasons.items())
          + (f"; {counts['malformed']} malformed line(s) (bad_input verdicts with an 'error')"
             if counts["malformed"] else ""), file=sys.stderr)
    return 2 if counts["malformed"] else 0
