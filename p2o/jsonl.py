"""JSON Lines files, split on "\\n" only.

`json.dumps(..., ensure_ascii=False)` (how P2O writes rollouts, metrics and results) leaves U+2028, U+2029 and
U+0085 unescaped inside strings, and `str.splitlines()` treats them as line ends: a model's text holding one
would split a record in two. These readers split on "\\n" alone.

    for lineno, record in iter_jsonl(path): ...
    records = read_jsonl(path)
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, decoded record) for every non-blank line; ValueError names the file and line."""
    with Path(path).open(encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from e


def read_jsonl(path: str | Path) -> list[Any]:
    """Every record of a JSON Lines file, in order."""
    return [record for _, record in iter_jsonl(path)]
