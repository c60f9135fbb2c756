"""Evaluation run directories: per-problem results (jsonl), summary tables (Markdown + CSV), and reading back.

Layout of a run directory (every file written atomically: temp file + rename):

    run.json                 model, settings, per-benchmark protocol and scores, the average
    problems/<bench>.jsonl   one `ProblemResult` per line (verdicts, extracted answers, lengths, responses)
    summary.md               the paper-style row (one column per benchmark + Avg) and a detailed table
    summary.csv              one row per benchmark (+ an 'average' row); scores in percent

Scores in tables are percentages with one decimal, as the paper reports them; "Avg" is the unweighted
mean of the benchmark scores (avg@16 for the small benchmarks, greedy accuracy for the others).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2o.atomic import atomic_write_json, atomic_write_text
from p2o.eval.harness import BenchmarkResult, ProblemResult
from p2o.jsonl import iter_jsonl, read_jsonl, write_jsonl

RUN_FILE = "run.json"
PROBLEMS_DIR = "problems"


def average(results: list[BenchmarkResult]) -> float:
    """Unweighted mean of the benchmark scores (fraction)."""
    return sum(r.scores["avg"] for r in results) / len(results) if results else float("nan")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def pass_keys(results: list[BenchmarkResult]) -> list[str]:
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.scores if k.startswith("pass@") and k not in keys]
    return sorted(keys, key=lambda k: int(k.split("@")[1]))


def summary_markdown(results: list[BenchmarkResult], label: str) -> str:
    """The paper-style row plus a per-benchmark table with protocol, pass@k, lengths and times."""
    head = [r.title for r in results] + ["Avg"]
    lines = [f"# Evaluation: {label}", "",
             "| Model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|",
             f"| {label} | " + " | ".join(_pct(r.scores["avg"]) for r in results) + f" | {_pct(average(results))} |",
             "", "Scores in %. Benchmarks scored by sampling report avg@n (mean accuracy over n responses at the "
             "given temperature); greedy ones report the accuracy of one greedy response.", ""]
    ks = pass_keys(results)
    cols = ["Benchmark", "Protocol", "Problems", "n", "T", "Score"] + ks + ["Mean tokens", "Time (s)"]
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in results:
        cells = [r.title, r.protocol, str(len(r.problems)), str(r.samples), f"{r.temperature:g}", _pct(r.scores["avg"])]
        cells += [_pct(r.scores[k]) if k in r.scores else "" for k in ks]
        cells += [f"{r.mean_response_tokens:.0f}", f"{r.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(results: list[BenchmarkResult]) -> str:
    """One row per benchmark and an 'average' row; scores in percent."""
    ks = pass_keys(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["benchmark", "title", "protocol", "problems", "samples", "temperature", "score"] + ks
               + ["mean_response_tokens", "seconds"])
    for r in results:
        w.writerow([r.name, r.title, r.protocol, len(r.problems), r.samples, r.temperature,
                    round(100 * r.scores["avg"], 4)]
                   + [round(100 * r.scores[k], 4) if k in r.scores else "" for k in ks]
                   + [round(r.mean_response_tokens, 2), round(r.seconds, 3)])
    w.writerow(["average", "Avg", "", sum(len(r.problems) for r in results), "", "", round(100 * average(results), 4)]
               + [""] * len(ks) + ["", ""])
    return buf.getvalue()


def write_run(out_dir: str | Path, results: list[BenchmarkResult], label: str, info: dict[str, Any]) -> Path:
    """Write a run directory (see the module docstring); `info` (model, settings, ...) goes into run.json."""
    out = Path(out_dir).expanduser()
    for r in results:
        write_jsonl(out / PROBLEMS_DIR / f"{r.name}.jsonl", (p.to_dict() for p in r.problems))
    run = dict(info, label=label, average=average(results), benchmarks=[
        {"name": r.name, "title": r.title, "protocol": r.protocol, "samples": r.samples,
         "temperature": r.temperature, "problems": len(r.problems), "scores": r.scores, "seconds": r.seconds,
         "mean_response_tokens": r.mean_response_tokens, "file": f"{PROBLEMS_DIR}/{r.name}.jsonl"}
        for r in results])
    atomic_write_text(out / "summary.md", summary_markdown(results, label))
    atomic_write_text(out / "summary.csv", summary_csv(results))
    atomic_write_json(out / RUN_FILE, run, indent=2)
    return out


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def load_finished(out_dir: str | Path, info: dict[str, Any]) -> dict[str, BenchmarkResult]:
    """Benchmarks already finished in `out_dir` by a run with the same `info` (model, settings, limit).

    Used to resume an interrupted evaluation: `write_run` is called after every benchmark, so what is in
    run.json is complete. A run with different settings, or none at all, gives {}.
    """
    run_file = Path(out_dir).expanduser() / RUN_FILE
    if not run_file.is_file():
        return {}
    run = json.loads(run_file.read_text(encoding="utf-8"))
    if any(run.get(k) != v for k, v in _jsonable(info).items()):
        return {}
    done = {}
    for b in run.get("benchmarks", []):
        problems = [ProblemResult.from_dict(r) for r in read_jsonl(run_file.parent / b["file"])]
        done[b["name"]] = BenchmarkResult(name=b["name"], title=b["title"], protocol=b["protocol"],
                                          samples=b["samples"], temperature=b["temperature"], problems=problems,
                                          scores=b["scores"], seconds=b["seconds"],
                                          mean_response_tokens=b["mean_response_tokens"])
    return done


@dataclass
class RunRecord:
    """A run directory read back: its label, run.json, and per-problem scores per benchmark."""

    path: Path
    label: str
    info: dict[str, Any]
    titles: dict[str, str]
    scores: dict[str, dict[str, float]]
    """benchmark -> problem id -> per-problem score (correct / n)."""


def read_run(path: str | Path) -> RunRecord:
    """Read a run directory written by `write_run`; errors name the missing or corrupt file."""
    root = Path(path).expanduser()
    run_file = root / RUN_FILE
    if not run_file.is_file():
        raise FileNotFoundError(f"{root}: not an evaluation run directory (no {RUN_FILE}); run `p2o eval` first")
    try:
        info = json.loads(run_file.read_text(encoding="utf-8"))
        benches = info["benchmarks"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{run_file}: corrupt run file ({e})") from e
    scores: dict[str, dict[str, float]] = {}
    titles: dict[str, str] = {}
    for b in benches:
        f = root / b["file"]
        per: dict[str, float] = {}
        if not f.exists():
            raise FileNotFoundError(f"{f}: per-problem results listed in {run_file} are missing")
        for lineno, record in iter_jsonl(f):
            try:
                p = ProblemResult.from_dict(record)
            except TypeError as e:
                raise ValueError(f"{f}: line {lineno} is not a valid problem result ({e})") from e
            per[p.id] = p.score
        scores[b["name"]] = per
        titles[b["name"]] = b.get("title", b["name"])
    return RunRecord(path=root, label=str(info.get("label") or root.name), info=info, titles=titles, scores=scores)
