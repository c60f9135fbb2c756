"""Problem loaders for jsonl / json / parquet with a configurable field mapping, and deterministic shuffling.

    problems = load_problems("train.parquet", question_key="problem", answer_key="answer")
    order = epoch_order(len(problems), seed=0, epoch=3)
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if isinstance(data, dict):  # {"data": [...]} or {"rows": [...]}
        data = next((v for v in data.values() if isinstance(v, list)), None)
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


def _field(record: dict, key: str) -> Any:
    """Value of `key`, where 'a.b' reads a nested field and a list value yields its first element."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    if isinstance(value, list) and value:
        value = value[0]
    return value


def load_problems(path: str | Path, question_key: str = "question", answer_key: str = "answer",
                  id_key: str = "", source: str | None = None, max_problems: int = 0) -> list[Problem]:
    """Problems from a file with the given field mapping (nested keys as 'reward_model.ground_truth')."""
    p = Path(path).expanduser()
    problems: list[Problem] = []
    for n, record in read_rows(p):
        values = {}
        for name, key in (("question", question_key), ("answer", answer_key), ("id", id_key)):
            if name == "id" and not key:
                values["id"] = f"{p.stem}-{n - 1}"
                continue
            try:
                values[name] = _field(record, key)
            except KeyError:
                raise DataError(f"{p}: row {n} has no field '{key}' (data.{name}_key); fields present: "
                                f"{', '.join(sorted(record))}") from None
            if values[name] is None or str(values[name]).strip() == "":
                raise DataError(f"{p}: row {n} field '{key}' (data.{name}_key) is empty")
        meta = {k: v for k, v in record.items() if k not in (question_key, answer_key, id_key)
                and isinstance(v, (str, int, float, bool))}
        problems.append(Problem(id=str(values["id"]), question=str(values["question"]), answer=str(values["answer"]),
                                source=source or p.stem, meta=meta))
        if max_problems and len(problems) >= max_problems:
            break
    ids = [q.id for q in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{p}: duplicate id '{dup}' (data.id_key = '{id_key}')")
    return problems


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Deterministic permutation of range(n) for an epoch (independent of the global RNG)."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def write_jsonl(path: str | Path, problems: Iterable[Problem]) -> None:
    """Write problems as jsonl atomically (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for q in problems:
            f.write(json.dumps(q.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(p)
