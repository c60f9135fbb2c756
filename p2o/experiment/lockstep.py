"""The lock-step protocol between `p2o bench vs-trl` and its side processes (ours and TRL's).

A side is a child process that loads everything, prints a `ready` record, then reads one command per line
on stdin: `step I` runs optimizer step I on problems [8 I, 8 I + 8) and prints a `step` record; `quit`
ends it. Records are single stdout lines `@@P2O {json}` so that library output on stdout is never
mistaken for one. This file is imported by the TRL side too, so it uses the standard library only.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO

MARKER = "@@P2O "


def emit(record: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """Print one protocol record and flush."""
    out.write(MARKER + json.dumps(record) + "\n")
    out.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The record on a stdout line, or None for any other output."""
    if not line.startswith(MARKER):
        return None
    return json.loads(line[len(MARKER):])


def commands(inp: TextIO = sys.stdin) -> Iterator[int]:
    """Step indices read from stdin until `quit` or end of input; bad lines raise ValueError."""
    for line in inp:
        words = line.split()
        if not words:
            continue
        if words == ["quit"]:
            return
        if len(words) != 2 or words[0] != "step" or not words[1].isdigit():
            raise ValueError(f"lock-step command: got {line.strip()!r}; expected 'step N' or 'quit'")
        yield int(words[1])
