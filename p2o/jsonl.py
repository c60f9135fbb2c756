"""JSON Lines files, split on "\\n" only, decoded strictly line by line.

`json.dumps(..., ensure_ascii=False)` (how P2O writes rollouts, metrics and results) leaves U+2028, U+2029 and
U+0085 unescaped inside strings, and `str.splitlines()` treats them as line ends: a model's text holding one
would split a record in two. These readers split on "\\n" alone, and decode each line as UTF-8 on its own,
so a bad byte is reported with its file and line (not as a bare UnicodeDecodeError).

    for lineno, record in iter_jsonl(path): ...          # ValueError at the first bad line
    records = read_jsonl(path)
    for line in scan_jsonl(path): line.lineno, line.record, line.error   # every line, errors included
    write_jsonl(path, records)                           # atomically (p2o.atomic), one `encode_line` per record
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2o.atomic import atomic_write


@dataclass
class JsonlLine:
    """One non-blank line: its decoded `record`, or `error` (why it could not be decoded; record is None)."""

    lineno: int
    record: Any = None
    error: str = ""


def decode_line(raw: bytes) -> Any:
    """One line's record; ValueError saying what is wrong (bad UTF-8, bad JSON). NaN/Infinity literals (which
    Python's json writes) are accepted; readers of untrusted data check their values."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e})") from None


def scan_jsonl(path: str | Path) -> Iterator[JsonlLine]:
    """Every non-blank line of a JSON Lines file, in order, decoded or with its error (never raises on content)."""
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield JsonlLine(lineno, decode_line(raw))
            except ValueError as e:
                yield JsonlLine(lineno, None, str(e))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, decoded record) for every non-blank line; ValueError names the file and line."""
    for line in scan_jsonl(path):
        if line.error:
            raise ValueError(f"{path}: line {line.lineno} is {line.error}")
        yield line.lineno, line.record


def read_jsonl(path: str | Path) -> list[Any]:
    """Every record of a JSON Lines file, in order."""
    return [record for _, record in iter_jsonl(path)]


def encode_line(record: Any) -> str:
    """One record as a JSON Lines line (UTF-8 text, non-ASCII kept, "\\n"-terminated)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Replace `path` with one line per record, atomically (the old file stays if a record fails to encode);
    returns the number of records written."""
    n = 0
    with atomic_write(path, "w") as f:
        for record in records:
            f.write(encode_line(record))
            n += 1
    return n
