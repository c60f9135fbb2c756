"""Training-set preparation for DeepScaleR and DeepMath-103K, as the P2O authors built theirs.

    p2o data prepare deepscaler --input deepscaler.json --out data/deepscaler --seed 42
    p2o data prepare deepmath --input 'deepmath/train-*.parquet' --out data/deepmath --seed 42 \\
        --decontaminate-against benchmarks/ --drop-contaminated

Pipeline (counts of every step go into the manifest):
1. read the public release: local .parquet/.jsonl/.json files (`--input`, globs allowed), or the Hugging
   Face hub through `datasets` when it is installed and reachable (no `--input`);
2. map fields (DeepScaleR: problem/answer; DeepMath-103K: question/final_answer/difficulty/topic), drop rows
   with an empty question or answer;
3. deduplicate on the normalised question text (NFKC, lower case, whitespace collapsed), first row wins;
4. DeepMath only: keep difficulty >= `--min-difficulty` (7, the paper; applied before step 3), then balance
   answer types as the authors' script does (per difficulty level: drop empty answers, cap yes/no at 5 %,
   sample every other answer type proportionally to count^0.5; then a global yes/no cap);
5. normalise gold answers with the verifier's normaliser (`p2o.reward.normalize`), keeping the raw answer;
6. optionally report (and with `--drop-contaminated` remove) rows sharing a 13-gram with the evaluation
   benchmarks (`p2o.data.decontaminate`);
7. shuffle with `--seed`, hold out `--dev-size` (500) rows as the dev set, and take nested training subsets
   of `--sizes` (5000, 10000) from the rest (the 5k set is the first half of the 10k set).

Outputs in `--out`: `dev_<n>.parquet`, `train_<n>.parquet` per size, `decontamination.json` when checked,
and `manifest.json` (source, revision, input hashes, filters, counts, seed, per-split content hashes),
all written atomically. Columns: id, question, answer, answer_raw, source, plus difficulty/topic/answer_type
for DeepMath; `id` is '<dataset>-<row of the release>', stable across seeds.

Departures from the authors' scripts: they shuffle with `datasets`' own RNG and draw the 5k and 10k
subsets independently; here one seeded numpy permutation gives the dev set and nested subsets, and
duplicates are removed (the authors did not deduplicate).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import random
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2o.atomic import atomic_path, atomic_write_json
from p2o.data.loaders import DataError, read_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    """A public training-set release and its field mapping."""

    name: str
    hub_id: str
    question_key: str
    answer_key: str
    extra_keys: tuple[str, ...] = ()


SOURCES: dict[str, SourceSpec] = {
    "deepscaler": SourceSpec("deepscaler", "agentica-org/DeepScaleR-Preview-Dataset", "problem", "answer"),
    "deepmath": SourceSpec("deepmath", "zwhe99/DeepMath-103K", "question", "final_answer", ("difficulty", "topic")),
}


@dataclass
class Row:
    """One training problem on its way through the pipeline."""

    id: str
    question: str
    answer: str
    answer_raw: str
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading
def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by `--input` (globs expanded, sorted); a pattern matching nothing is an error."""
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(Path(pattern).expanduser()))) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise DataError(f"--input {pattern}: no file matches")
        paths += [Path(m).expanduser() for m in matched]
    return paths


def read_release(spec: SourceSpec, inputs: list[Path]) -> list[dict]:
    """Records of the release from local files, in file then row order."""
    records: list[dict] = []
    for path in inputs:
        records += [r for _, r in read_rows(path)]
    return records


def read_hub(spec: SourceSpec, revision: str | None) -> list[dict]:
    """Records from the Hugging Face hub via `datasets` (train split); clear errors when it is not possible."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(f"{spec.name}: no --input files given and the `datasets` package is not installed; "
                        f"download {spec.hub_id} (parquet or json) and pass the files with --input") from None
    try:
        ds = datasets.load_dataset(spec.hub_id, split="train", revision=revision)
    except Exception as e:  # network, auth and format errors all end here
        raise DataError(f"{spec.name}: could not load {spec.hub_id} from the hub ({e}); "
                        f"pass local files with --input instead") from e
    return [dict(r) for r in ds]


def to_rows(spec: SourceSpec, records: list[dict], counts: dict[str, int]) -> list[Row]:
    """Map release records to rows; rows with an empty question or answer are dropped and counted."""
    if records and (spec.question_key not in records[0] or spec.answer_key not in records[0]):
        raise DataError(f"{spec.name}: records lack '{spec.question_key}'/'{spec.answer_key}' "
                        f"(the {spec.hub_id} format); fields present: {', '.join(sorted(records[0]))}")
    rows = []
    for i, r in enumerate(records):
        q, a = r.get(spec.question_key), r.get(spec.answer_key)
        if q is None or a is None or not str(q).strip() or not str(a).strip():
            counts["dropped_empty"] += 1
            continue
        extra = {k: r.get(k) for k in spec.extra_keys}
        rows.append(Row(id=f"{spec.name}-{i}", question=str(q).strip(), answer=str(a).strip(),
                        answer_raw=str(a).strip(), extra=extra))
    return rows


# ----------------------------------------------------------------------------- filters
def normalise_question(text: str) -> str:
    """Key for deduplication: NFKC, lower case, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def deduplicate(rows: list[Row]) -> list[Row]:
    """Keep the first row of every normalised question."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = normalise_question(r.question)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def answer_normaliser() -> tuple[str, Callable[[str], str]]:
    """(name, function) of the verifier's answer normaliser; answers whose %/degree sign it would drop stay raw."""
    from p2o.reward.normalize import normalize

    def norm(answer: str) -> str:
        n = normalize(answer)
        return answer if (n.percent or n.degrees or not n.text) else n.text

    return "p2o.reward.normalize.normalize", norm


def classify_answer_type(answer: Any) -> str:
    """The authors' answer-type classes (scripts/data_process/DeepMath-103K.py), rule for rule."""
    if answer is None or answer == "":
        return "empty"
    s = str(answer).strip()
    if s.lower() in ("yes", "no", "true", "false"):
        return "yes_no"
    if re.match(r"^[A-Za-z]$", s) or re.match(r"^\([A-Za-z]\)$", s):
        return "multiple_choice"
    if re.match(r"^-?\d+$", s) or re.match(r"^-?\d+\.\d+$", s) or re.match(r"^-?\d+/\d+$", s):
        return "numeric"
    if re.match(r"^-?\d+\.?\d*%$", s):
        return "percentage"
    if re.match(r"^-?\d+\.?\d*\s*[a-zA-Z]+$", s):
        return "numeric_with_unit"
    if any(c in s for c in "√π∞∑∫"):
        return "mathematical_symbol"
    if re.match(r"^[\[\(]-?.*,.*[\]\)]$", s):
        return "interval_set"
    if len(s.split()) > 5:
        return "text_answer"
    return "other"


def balance_answer_types(rows: list[Row], seed: int, yes_no_ratio: float = 0.05, power: float = 0.5) -> list[Row]:
    """Answer-type balancing as the authors did it, per difficulty level, then a global yes/no cap.

    Per level: empty answers are dropped; every non-yes/no type t gets int(w_t / sum(w) * (1 - r) * N) rows
    with w_t = count_t^power and N the non-empty rows of the level; yes/no gets at most
    int(others * r / (1 - r)). Types with fewer rows than their quota keep all of them. Order: shuffled.
    """
    rng = random.Random(seed)
    by_level: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        by_level[r.extra.get("difficulty", 0)].append(r)
    kept: list[Row] = []
    for level in sorted(by_level, key=lambda x: float(x or 0)):
        typed: dict[str, list[Row]] = defaultdict(list)
        for r in by_level[level]:
            t = classify_answer_type(r.answer_raw)
            if t != "empty":
                typed[t].append(r)
        total = sum(len(v) for v in typed.values())
        if not total:
            continue
        weights = {t: len(v) ** power for t, v in typed.items() if t != "yes_no"}
        quota = {t: int(w / sum(weights.values()) * int(total * (1 - yes_no_ratio))) for t, w in weights.items()}
        if "yes_no" in typed:
            quota["yes_no"] = min(len(typed["yes_no"]), int(sum(quota.values()) * yes_no_ratio / (1 - yes_no_ratio)))
        for t, q in quota.items():
            kept += typed[t] if q >= len(typed[t]) else rng.sample(typed[t], q)
    rng.shuffle(kept)
    yes_no = [r for r in kept if classify_answer_type(r.answer_raw) == "yes_no"]
    cap = int(len(kept) * yes_no_ratio)
    if len(yes_no) > cap:
        drop = {id(r) for r in yes_no} - {id(r) for r in rng.sample(yes_no, cap)}
        kept = [r for r in kept if id(r) not in drop]
    return kept


# ----------------------------------------------------------------------------- writing
def _table(rows: list[Row], source: str):
    import pyarrow as pa

    cols: dict[str, list] = {"id": [r.id for r in rows], "question": [r.question for r in rows],
                             "answer": [r.answer for r in rows], "answer_raw": [r.answer_raw for r in rows],
                             "source": [source] * len(rows)}
    for key in sorted({k for r in rows for k in r.extra}):
        values = [r.extra.get(key) for r in rows]
        cols[key] = [None if v is None else (float(v) if key == "difficulty" else str(v)) for v in values]
    return pa.table(cols)


def content_hash(rows: list[Row]) -> str:
    """sha256 over the rows as canonical JSON lines (independent of the parquet writer's version)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.id, r.question, r.answer, r.answer_raw, r.extra], sort_keys=True,
                            ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_parquet(path: Path, rows: list[Row], source: str) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(_table(rows, source), tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data, indent=2)


# ----------------------------------------------------------------------------- pipeline
@dataclass
class PrepareOptions:
    """Everything `prepare` needs; the CLI fills it from flags."""

    dataset: str
    out: Path
    inputs: list[Path] = field(default_factory=list)
    revision: str | None = None
    seed: int = 42
    sizes: tuple[int, ...] = (5000, 10000)
    dev_size: int = 500
    min_difficulty: float = 7.0
    balance: bool = True
    normalise_answers: bool = True
    benchmark_dir: Path | None = None
    benchmarks: str = "all"
    ngram: int = 13
    drop_contaminated: bool = False


def _benchmark_questions(opts: PrepareOptions) -> dict[str, list[str]]:
    from p2o.eval.benchmarks import find_files, load_benchmark, parse_names

    out = {}
    for name in parse_names(opts.benchmarks):
        try:
            find_files(name, opts.benchmark_dir)
        except ValueError:
            log.warning("decontamination: no files for benchmark '%s' under %s; skipped", name, opts.benchmark_dir)
            continue
        out[name] = [p.question for p in load_benchmark(name, opts.benchmark_dir)]
    if not out:
        raise DataError(f"--decontaminate-against {opts.benchmark_dir}: no benchmark files found "
                        f"(expected e.g. math500.jsonl; see docs/evaluation.md)")
    return out


def prepare(opts: PrepareOptions) -> dict[str, Any]:
    """Run the pipeline of the module docstring; returns the manifest (also written to out/manifest.json)."""
    if opts.dataset not in SOURCES:
        raise DataError(f"unknown dataset '{opts.dataset}'; expected one of {', '.join(SOURCES)}")
    spec = SOURCES[opts.dataset]
    if opts.dev_size < 0 or any(s < 1 for s in opts.sizes):
        raise DataError(f"--dev-size must be >= 0 and --sizes positive; got {opts.dev_size} and {opts.sizes}")
    counts: Counter = Counter()
    if opts.inputs:
        records = read_release(spec, opts.inputs)
        source = {"kind": "files", "release": spec.hub_id, "revision": opts.revision,
                  "files": [{"path": str(p), "sha256": file_sha256(p)} for p in opts.inputs]}
    else:
        records = read_hub(spec, opts.revision)
        source = {"kind": "hub", "release": spec.hub_id, "revision": opts.revision}
    counts["read"] = len(records)
    rows = to_rows(spec, records, counts)
    filters: dict[str, Any] = {"drop_empty": True}
    if spec.name == "deepmath":
        for r in rows:
            try:
                r.extra["difficulty"] = float(r.extra["difficulty"])
            except (TypeError, ValueError):
                raise DataError(f"{r.id}: difficulty {r.extra.get('difficulty')!r} is not a number") from None
        rows = [r for r in rows if r.extra["difficulty"] >= opts.min_difficulty]
        counts["after_difficulty"] = len(rows)
        filters["min_difficulty"] = opts.min_difficulty
    n = len(rows)
    rows = deduplicate(rows)
    counts["dropped_duplicates"] = n - len(rows)
    filters["dedup"] = "normalised question (NFKC, lower case, whitespace collapsed)"
    if spec.name == "deepmath" and opts.balance:
        rows = balance_answer_types(rows, opts.seed)
        for r in rows:
            r.extra["answer_type"] = classify_answer_type(r.answer_raw)
        counts["after_balance"] = len(rows)
        filters["balance"] = {"yes_no_ratio": 0.05, "power": 0.5, "per": "difficulty level"}
    if opts.normalise_answers:
        name, norm = answer_normaliser()
        for r in rows:
            r.answer = norm(r.answer_raw)
        filters["answer_normaliser"] = name
    else:
        filters["answer_normaliser"] = "none"
    decontam = None
    if opts.benchmark_dir is not None:
        from p2o.data.decontaminate import contamination_report

        report = contamination_report([(r.id, r.question) for r in rows], _benchmark_questions(opts), opts.ngram)
        decontam = report.to_dict()
        decontam["dropped"] = opts.drop_contaminated
        write_json(opts.out / "decontamination.json", decontam)
        if opts.drop_contaminated:
            bad = report.flagged_ids
            rows = [r for r in rows if r.id not in bad]
            counts["dropped_contaminated"] = len(bad)
        filters["decontamination"] = {"ngram": opts.ngram, "benchmarks": list(report.benchmarks),
                                      "flagged": len(report.flagged_ids), "dropped": opts.drop_contaminated}
    need = opts.dev_size + max(opts.sizes)
    if len(rows) < need:
        raise DataError(f"{spec.name}: {len(rows)} rows after filtering, fewer than --dev-size {opts.dev_size} + "
                        f"largest of --sizes {max(opts.sizes)} = {need}; lower --sizes or --dev-size")
    order = np.random.default_rng(opts.seed).permutation(len(rows))
    rows = [rows[i] for i in order]
    dev, pool = rows[:opts.dev_size], rows[opts.dev_size:]
    counts["pool"] = len(pool)
    splits = {f"dev_{opts.dev_size}": dev} if opts.dev_size else {}
    for size in sorted(opts.sizes):
        splits[f"train_{size}"] = pool[:size]
    manifest: dict[str, Any] = {
        "dataset": spec.name, "source": source, "seed": opts.seed, "filters": filters, "counts": dict(counts),
        "splits": {}, "decontamination": decontam and {k: v for k, v in decontam.items() if k != "flagged"}}
    for name, split in splits.items():
        write_parquet(opts.out / f"{name}.parquet", split, spec.name)
        manifest["splits"][name] = {"file": f"{name}.parquet", "rows": len(split), "content_sha256": content_hash(split)}
    manifest["content_sha256"] = hashlib.sha256("".join(
        s["content_sha256"] for s in manifest["splits"].values()).encode()).hexdigest()
    write_json(opts.out / "manifest.json", manifest)
    return manifest


# ----------------------------------------------------------------------------- CLI (`p2o data prepare`)
def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=sorted(SOURCES), help="which public release to prepare")
    parser.add_argument("--input", nargs="+", default=[], metavar="FILE",
                        help="local release files (.parquet/.jsonl/.json, globs allowed); none: the hub via `datasets`")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--revision", default=None, help="release revision (hub commit or a label for local files)")
    parser.add_argument("--seed", type=int, default=42, help="shuffle/split/balance seed (the authors used 42)")
    parser.add_argument("--sizes", default="5000,10000", help="comma-separated training subset sizes (nested)")
    parser.add_argument("--dev-size", type=int, default=500, help="held-out dev set size")
    parser.add_argument("--min-difficulty", type=float, default=7.0, help="deepmath: keep difficulty >= this")
    parser.add_argument("--no-balance", action="store_true", help="deepmath: skip answer-type balancing")
    parser.add_argument("--raw-answers", action="store_true", help="keep gold answers as released (no normalisation)")
    parser.add_argument("--decontaminate-against", default=None, metavar="DIR",
                        help="benchmark folder (as for `p2o eval --data-dir`): write an n-gram overlap report")
    parser.add_argument("--benchmarks", default="all", help="benchmarks to check against (comma list or 'all')")
    parser.add_argument("--ngram", type=int, default=13, help="n-gram size for the overlap check")
    parser.add_argument("--drop-contaminated", action="store_true", help="remove the flagged rows")


def prepare_main(args: argparse.Namespace) -> int:
    try:
        sizes = tuple(int(s) for s in str(args.sizes).split(",") if s.strip())
        opts = PrepareOptions(
            dataset=args.dataset, out=Path(args.out).expanduser(), inputs=expand_inputs(args.input),
            revision=args.revision, seed=args.seed, sizes=sizes, dev_size=args.dev_size,
            min_difficulty=args.min_difficulty, balance=not args.no_balance, normalise_answers=not args.raw_answers,
            benchmark_dir=Path(args.decontaminate_against) if args.decontaminate_against else None,
            benchmarks=args.benchmarks, ngram=args.ngram, drop_contaminated=args.drop_contaminated)
        manifest = prepare(opts)
    except (DataError, ValueError) as e:
        print(f"p2o data prepare: {e}", file=sys.stderr)
        return 2
    print(f"{manifest['dataset']}: " + ", ".join(f"{k} {v['rows']}" for k, v in manifest["splits"].items())
          + f" -> {opts.out}")
    print("counts: " + json.dumps(manifest["counts"]))
    if manifest.get("decontamination"):
        print("decontamination: " + json.dumps(manifest["decontamination"]["flagged_counts"]))
    return 0
