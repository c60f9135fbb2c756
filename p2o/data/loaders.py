"""Problem loaders for jsonl / json / parquet with a configurable field mapping, and deterministic shuffling.

    problems = load_problems("train.parquet", question_key="problem", answer_key="answer")
    problems = load_problems("olympiad.jsonl", answer_key="final_answer[0]")     # an explicit list element
    order = epoch_order(len(problems), seed=0, epoch=3)

Strict by design: a value of the wrong type is a `DataError` naming the file, the row and the field, never
coerced. Field keys are dotted paths with optional list indices (`reward_model.ground_truth`,
`final_answer[0]`); a list is used only through an explicit index. Accepted values:

- question: a non-empty string;
- answer: a non-empty string, or an integer / finite float written in decimal (`str(7)`, `repr(0.5)`);
- id: a non-empty string or an integer (default: `<file stem>-<row - 1>`);
- no lone surrogates (invalid Unicode) in any of them.

A `.json` file holds a list of objects, or an object holding exactly one list (`{"data": [...]}`).
Decode errors name the file and the line.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from p2o import jsonl
from p2o.data.problem import Problem
from p2o.jsonl import iter_jsonl


class DataError(ValueError):
    """A data file problem; the message names the file, the row and the field."""


def _rows_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    try:
        yield from iter_jsonl(path)
    except ValueError as e:
        raise DataError(str(e)) from e


def _rows_json(path: Path) -> Iterable[tuple[int, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except (RecursionError, ValueError) as e:
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"rows": [...]}: exactly one list
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: a JSON object holding {len(lists)} lists ({', '.join(map(repr, lists))}); "
                            f"expected a list of objects, or an object holding exactly one list")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or an object holding one)")
    return enumerate(data, 1)


def _rows_parquet(path: Path) -> Iterable[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable parquet file ({e})") from e
    return enumerate(table.to_pylist(), 1)


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(row number, record) pairs of a .jsonl/.json/.parquet file; errors name the file and row."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    readers = {".jsonl": _rows_jsonl, ".json": _rows_json, ".parquet": _rows_parquet}
    if p.suffix not in readers:
        raise DataError(f"{p}: unsupported extension '{p.suffix}' (expected .jsonl, .json or .parquet)")
    rows = list(readers[p.suffix](p))
    if not rows:
        raise DataError(f"{p}: file is empty (no records)")
    for n, r in rows:
        if not isinstance(r, dict):
            raise DataError(f"{p}: row {n} is a {type(r).__name__}, expected an object")
    return rows


_PART = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _field(record: dict, key: str) -> Any:
    """Value of `key`: 'a.b' reads a nested field, 'a[0]' an element of a list (KeyError when absent)."""
    value: Any = record
    for part in key.split("."):
        m = _PART.match(part)
        if m is None:
            raise KeyError(key)
        name, indices = m.group(1), m.group(2)
        if not isinstance(value, dict) or name not in value:
            raise KeyError(key)
        value = value[name]
        for index in re.findall(r"\d+", indices):
            if not isinstance(value, list) or int(index) >= len(value):
                raise KeyError(key)
            value = value[int(index)]
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _text(where: str, name: str, value: Any) -> str:
    """The field's text under the module's rules (see the docstring); DataError naming `where` otherwise."""
    if isinstance(value, str):
        text = value
    elif name in ("answer", "id") and isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif name == "answer" and isinstance(value, float) and math.isfinite(value):
        text = repr(value)
    else:
        kinds = {"question": "a string", "answer": "a string or a finite number", "id": "a string or an integer"}
        hint = f" (a list: name one element, e.g. data.{name}_key='<key>[0]')" if isinstance(value, list) else ""
        raise DataError(f"{where}: expected {kinds[name]}, got {_describe(value)}{hint}")
    if not text.strip():
        raise DataError(f"{where} is empty")
    m = _LONE_SURROGATE.search(text)
    if m:
        raise DataError(f"{where}: invalid Unicode (lone surrogate U+{ord(m.group()):04X} at character {m.start()})")
    return text


def load_problems(path: str | Path, question_key: str = "question", answer_key: str = "answer",
                  id_key: str = "", source: str | None = None, max_problems: int = 0) -> list[Problem]:
    """Problems from a file with the given field mapping (nested keys as 'reward_model.ground_truth',
    list elements as 'final_answer[0]'); see the module docstring for the accepted values."""
    p = Path(path).expanduser()
    problems: list[Problem] = []
    rows_of: dict[str, int] = {}
    for n, record in read_rows(p):
        values = {}
        for name, key in (("question", question_key), ("answer", answer_key), ("id", id_key)):
            if name == "id" and not key:
                values["id"] = f"{p.stem}-{n - 1}"
                continue
            try:
                value = _field(record, key)
            except KeyError:
                raise DataError(f"{p}: row {n} has no field '{key}' (data.{name}_key); fields present: "
                                f"{', '.join(sorted(map(str, record)))}") from None
            if value is None:
                raise DataError(f"{p}: row {n} field '{key}' (data.{name}_key) is empty (null)")
            values[name] = _text(f"{p}: row {n} field '{key}' (data.{name}_key)", name, value)
        meta = {k: v for k, v in record.items() if k not in (question_key, answer_key, id_key)
                and isinstance(v, (str, int, float, bool))
                and not (isinstance(v, float) and not math.isfinite(v))
                and not (isinstance(v, str) and _LONE_SURROGATE.search(v))}
        if values["id"] in rows_of:
            raise DataError(f"{p}: duplicate id '{values['id']}' in rows {rows_of[values['id']]} and {n} "
                            f"(data.id_key = '{id_key}')")
        rows_of[values["id"]] = n
        problems.append(Problem(id=values["id"], question=values["question"], answer=values["answer"],
                                source=source or p.stem, meta=meta))
        if max_problems and len(problems) >= max_problems:
            break
    return problems


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Deterministic permutation of range(n) for an epoch (independent of the global RNG)."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def write_jsonl(path: str | Path, problems: Iterable[Problem]) -> None:
    """Write problems as JSON Lines, atomically."""
    jsonl.write_jsonl(path, (q.to_dict() for q in problems))
