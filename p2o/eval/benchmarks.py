"""Benchmark registry: the six math benchmarks of the P2O paper, read from local files in their public formats.

Each benchmark is a `BenchmarkSpec`: a name, the public release it comes from, the field mapping from that
release's records to `Problem` (candidate keys, first present wins), and its full size, which decides the
protocol (the paper: fewer than 100 problems -> mean over 16 samples at T = 0.6; otherwise greedy).

Files are found as `<data_dir>/<name>.{jsonl,json,parquet}` or as a folder `<data_dir>/<name>/` holding such
files (read in sorted order and concatenated, e.g. the two AIME 2025 halves), or given explicitly.

A name outside the registry given with its own file(s) is a *local* benchmark (`local_spec`): records in
P2O's problem format (id, question or problem, answer), its protocol decided by its own size.

    problems = load_benchmark("math500", data_dir="benchmarks/")
    spec = get_spec("aime24"); spec.protocol()  # -> "sampled"
    hard = load_benchmark("hard", files=["hard_seed0.jsonl"]); local_spec("hard", len(hard))
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2o.data.loaders import DataError, read_rows
from p2o.data.problem import Problem

EXTENSIONS = (".jsonl", ".json", ".parquet")
SAMPLED_BELOW = 100
"""Benchmarks with fewer problems than this are scored by sampling (avg@16); larger ones greedily."""


class BenchmarkError(ValueError):
    """A benchmark problem: unknown name, missing or corrupt file, or a record that does not fit the mapping."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: where it comes from and how its records map onto `Problem`."""

    name: str
    """Registry key (also the default file stem)."""
    title: str
    """Column title in tables (as the paper writes it)."""
    release: str
    """The public release the field mapping follows (Hugging Face dataset id and subset)."""
    size: int
    """Number of problems in the full public release (decides the protocol)."""
    question_keys: tuple[str, ...]
    """Candidate fields for the problem text; the first present in a record is used."""
    answer_keys: tuple[str, ...]
    """Candidate fields for the gold answer (a list value is joined with ', ')."""
    id_keys: tuple[str, ...] = ()
    """Candidate fields for a stable id (none present: '<name>-<row index>')."""
    meta_keys: tuple[str, ...] = ()
    """Scalar fields copied into `Problem.meta` when present (e.g. MATH-500 subject and level)."""
    strip_dollars: bool = False
    """Gold answers are wrapped in $...$ in the release (OlympiadBench); strip them."""

    def protocol(self, sampled_below: int = SAMPLED_BELOW) -> str:
        """'sampled' (mean over several samples) for small benchmarks, 'greedy' otherwise."""
        return "sampled" if self.size < sampled_below else "greedy"


BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in (
    BenchmarkSpec("aime24", "AIME24", "Maxwell-Jia/AIME_2024 (ID, Problem, Solution, Answer)", 30,
                  question_keys=("Problem", "problem", "question"), answer_keys=("Answer", "answer"),
                  id_keys=("ID", "id")),
    BenchmarkSpec("aime25", "AIME25", "opencompass/AIME2025 (question, answer; files aime2025-I/-II) "
                  "or yentinglin/aime_2025 (problem, answer)", 30,
                  question_keys=("question", "problem"), answer_keys=("answer",), id_keys=("id",)),
    BenchmarkSpec("amc23", "AMC23", "math-ai/amc23 (id, question, answer)", 40,
                  question_keys=("question", "problem"), answer_keys=("answer",), id_keys=("id",)),
    BenchmarkSpec("math500", "MATH500", "HuggingFaceH4/MATH-500 test.jsonl "
                  "(problem, solution, answer, subject, level, unique_id)", 500,
                  question_keys=("problem",), answer_keys=("answer",), id_keys=("unique_id",),
                  meta_keys=("subject", "level")),
    BenchmarkSpec("minerva", "Minerva", "math-ai/minervamath (question, answer)", 272,
                  question_keys=("question", "problem"), answer_keys=("answer",), id_keys=("id", "idx"),
                  meta_keys=("type",)),
    BenchmarkSpec("olympiadbench", "Olympiad", "Hothan/OlympiadBench, subset OE_TO_maths_en_COMP "
                  "(id, question, final_answer: list, ...)", 675,
                  question_keys=("question",), answer_keys=("final_answer",), id_keys=("id",),
                  meta_keys=("subfield", "answer_type", "unit"), strip_dollars=True),
)}

PAPER_ORDER = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
"""Column order of the paper's Table 1; the average is the unweighted mean over these six."""


def get_spec(name: str) -> BenchmarkSpec:
    """The registered benchmark `name`; an unknown name is an error listing the known ones."""
    key = name.strip().lower()
    if key not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


LOCAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A local benchmark's name: also its results file stem (problems/<name>.jsonl), so no path characters."""


def is_registered(name: str) -> bool:
    return name.strip().lower() in BENCHMARKS


def local_spec(name: str, size: int) -> BenchmarkSpec:
    """A benchmark outside the registry, read from the user's file(s) in P2O's problem format (the training
    data's records: id, question or problem, answer); `size` (its problem count) decides its protocol."""
    if not LOCAL_NAME.fullmatch(name):
        raise BenchmarkError(f"benchmark name '{name}': a local benchmark's name must match {LOCAL_NAME.pattern} "
                             "(it names the results file)")
    return BenchmarkSpec(name, name, "a local file in P2O's problem format (id, question or problem, answer)", size,
                         question_keys=("question", "problem"), answer_keys=("answer",), id_keys=("id",))


def parse_names(text: str, local: tuple[str, ...] = ()) -> list[str]:
    """'aime24,math500' or 'all' -> validated names (order kept, duplicates dropped): registry names, or names
    in `local` (local benchmarks given with their own files)."""
    names = list(PAPER_ORDER) if text.strip().lower() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise BenchmarkError("no benchmark named; give a comma-separated list or 'all'")
    return list(dict.fromkeys(n if n in local and not is_registered(n) else get_spec(n).name for n in names))


def find_files(name: str, data_dir: str | Path) -> list[Path]:
    """The files of benchmark `name` under `data_dir` (see the module docstring for the layout)."""
    root = Path(data_dir).expanduser()
    for ext in EXTENSIONS:
        if (root / f"{name}{ext}").is_file():
            return [root / f"{name}{ext}"]
    folder = root / name
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in EXTENSIONS)
        if files:
            return files
        raise BenchmarkError(f"benchmark '{name}': folder {folder} holds no {'/'.join(EXTENSIONS)} files")
    expected = ", ".join(str(root / f"{name}{e}") for e in EXTENSIONS)
    raise BenchmarkError(f"benchmark '{name}': no data file found; expected one of {expected} "
                         f"or a folder {folder}/ (see docs/evaluation.md for where to obtain it)")


def _first(record: dict, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        if k in record:
            return k, record[k]
    return None, None


def answer_text(value: Any, strip_dollars: bool = False) -> str:
    """A gold answer as text: integral floats lose their '.0' (AMC 23 stores 27.0), lists are joined."""
    if isinstance(value, (list, tuple)):
        return ", ".join(answer_text(v, strip_dollars) for v in value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if strip_dollars and len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def problems_from_records(spec: BenchmarkSpec, rows: list[tuple[int, dict]], path: Path) -> list[Problem]:
    """Map (row number, record) pairs of one file to problems; errors name the file, row and field."""
    problems = []
    for n, record in rows:
        qkey, question = _first(record, spec.question_keys)
        akey, answer = _first(record, spec.answer_keys)
        for what, key, keys, value in (("question", qkey, spec.question_keys, question),
                                       ("answer", akey, spec.answer_keys, answer)):
            if key is None:
                raise BenchmarkError(
                    f"{path}: row {n} has no {what} field for benchmark '{spec.name}' (expected one of "
                    f"{', '.join(keys)}; fields present: {', '.join(sorted(map(str, record)))}). "
                    f"Expected format: {spec.release}")
            if value is None or (isinstance(value, (list, str)) and not value) or answer_text(value) == "":
                raise BenchmarkError(f"{path}: row {n} field '{key}' ({what}) is empty")
        ikey, ident = _first(record, spec.id_keys)
        meta = {k: record[k] for k in spec.meta_keys if isinstance(record.get(k), (str, int, float, bool))}
        meta["file"], meta["row"] = path.name, n
        problems.append(Problem(id=str(ident) if ikey is not None else "", question=str(question).strip(),
                                answer=answer_text(answer, spec.strip_dollars), source=spec.name, meta=meta))
    return problems


def load_benchmark(name: str, data_dir: str | Path | None = None, files: list[str | Path] | None = None,
                   limit: int = 0) -> list[Problem]:
    """Problems of benchmark `name` from `files` (or those found under `data_dir`), with unique ids; a name
    outside the registry with `files` is a local benchmark (`local_spec`).

    Rows without an id field get '<name>-<index>'; `limit` > 0 keeps the first `limit` problems.
    Raises `BenchmarkError` for an unknown name, missing/corrupt files or records that do not fit.
    """
    spec = local_spec(name, 0) if files and not is_registered(name) else get_spec(name)
    if files:
        paths = [Path(f).expanduser() for f in files]
    elif data_dir is not None:
        paths = find_files(spec.name, data_dir)
    else:
        raise BenchmarkError(f"benchmark '{spec.name}': give a data directory or the file(s) to read")
    problems: list[Problem] = []
    for path in paths:
        try:
            rows = read_rows(path)
        except DataError as e:
            raise BenchmarkError(f"benchmark '{spec.name}': {e}") from e
        problems.extend(problems_from_records(spec, rows, path))
    for i, p in enumerate(problems):
        if not p.id:
            problems[i] = Problem(id=f"{spec.name}-{i}", question=p.question, answer=p.answer, source=p.source,
                                  meta=p.meta)
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BenchmarkError(f"benchmark '{spec.name}': duplicate problem id '{dup}' in {', '.join(map(str, paths))}")
    return problems[:limit] if limit > 0 else problems

