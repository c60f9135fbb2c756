"""Run directories and tables from fixed verdicts (hand-computed numbers), reading back, and comparisons."""
from __future__ import annotations

import csv
import json

import pytest

from p2o.eval.benchmarks import get_spec
from p2o.eval.compare import compare_runs, comparison_markdown
from p2o.eval.harness import EvalSettings, ProblemResult, summarise
from p2o.eval.results import load_finished, read_run, write_run

SETTINGS = EvalSettings(samples=4, temperature=0.6, pass_ks=(1, 2, 4))


def _problem(bench: str, pid: str, verdicts: list[bool]) -> ProblemResult:
    n = len(verdicts)
    return ProblemResult(benchmark=bench, id=pid, answer="1", n=n, correct=sum(verdicts), score=sum(verdicts) / n,
                         verdicts=verdicts, extracted=["1" if v else "2" for v in verdicts],
                         response_tokens=[10] * n, finish_reasons=["stop"] * n, responses=["r"] * n)


def _results(aime: list[list[bool]], math500: list[bool]):
    a = summarise(get_spec("aime24"), "sampled", [_problem("aime24", f"a{i}", v) for i, v in enumerate(aime)], SETTINGS)
    m = summarise(get_spec("math500"), "greedy", [_problem("math500", f"m{i}", [v]) for i, v in enumerate(math500)],
                  SETTINGS)
    return [a, m]


def test_tables_from_fixed_verdicts(tmp_path):
    # AIME24 (sampled, n=4): 4, 2 and 0 correct -> avg 50.0, pass@2 = (1 + 5/6 + 0)/3 = 61.1, pass@4 = 66.7
    # MATH500 (greedy): 3 of 4 -> 75.0; Avg = (50.0 + 75.0) / 2 = 62.5
    results = _results([[True] * 4, [True, False, True, False], [False] * 4], [True, False, True, True])
    out = write_run(tmp_path / "run", results, "base", {"model": "m"})
    md = (out / "summary.md").read_text()
    assert "| Model | AIME24 | MATH500 | Avg |" in md
    assert "| base | 50.0 | 75.0 | 62.5 |" in md
    assert "| AIME24 | sampled | 3 | 4 | 0.6 | 50.0 | 50.0 | 61.1 | 66.7 | 10 |" in md
    assert "| MATH500 | greedy | 4 | 1 | 0 | 75.0 | 75.0 |  |  | 10 |" in md
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["benchmark"] for r in rows] == ["aime24", "math500", "average"]
    assert float(rows[0]["pass@2"]) == pytest.approx(100 * (1 + 5 / 6) / 3, abs=1e-3)
    assert float(rows[1]["score"]) == 75.0 and rows[1]["pass@4"] == ""
    assert float(rows[2]["score"]) == 62.5
    run = json.loads((out / "run.json").read_text())
    assert run["average"] == 0.625 and run["model"] == "m"
    lines = (out / "problems" / "aime24.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["verdicts"] == [True, False, True, False]
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temp files


def test_read_back_and_compare(tmp_path):
    a = write_run(tmp_path / "a", _results([[True] * 4, [False] * 4], [True, False, True, True]), "grpo", {})
    b = write_run(tmp_path / "b", _results([[True] * 4, [True, True, False, False]], [True, True, True, True]), "p2o", {})
    rec = read_run(a)
    assert rec.label == "grpo" and rec.scores["aime24"] == {"a0": 1.0, "a1": 0.0}
    c = compare_runs([rec, read_run(b)], samples=500, seed=0)
    assert c.benchmarks == ["aime24", "math500"]
    assert c.scores == [[50.0, 75.0], [75.0, 100.0]]
    delta, lo, hi = c.ci[0]
    assert delta == pytest.approx(25.0) and lo <= delta <= hi
    assert compare_runs([rec, read_run(b)], samples=500, seed=0).ci == c.ci  # seeded
    md = comparison_markdown(c)
    assert "| AIME24 | 2 | 50.0 | 75.0 | +25.0 |" in md
    assert "| MATH500 | 4 | 75.0 | 100.0 | +25.0 |" in md
    assert f"| **Avg** | 6 | 62.5 | 87.5 | +25.0 [{lo:+.1f}, {hi:+.1f}] |" in md


def test_compare_pairs_on_shared_problems(tmp_path):
    a = write_run(tmp_path / "a", _results([[True] * 4, [False] * 4], [True, False]), "a", {})
    b = write_run(tmp_path / "b", _results([[True] * 4], [False, False, True]), "b", {})
    c = compare_runs([read_run(a), read_run(b)], samples=10)
    assert c.shared_problems == [1, 2] and c.scores == [[100.0, 50.0], [100.0, 0.0]]


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an evaluation run directory"):
        read_run(tmp_path)
    out = write_run(tmp_path / "r", _results([[True] * 4], [True]), "r", {})
    (out / "problems" / "math500.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"math500\.jsonl: line 1 is not valid JSON"):
        read_run(out)
    (out / "problems" / "math500.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="are missing"):
        read_run(out)
    (out / "run.json").write_text("[]")
    with pytest.raises(ValueError, match="corrupt run file"):
        read_run(out)
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([])


def test_load_finished_only_for_same_settings(tmp_path):
    results = _results([[True] * 4, [False] * 4], [True, False])
    info = {"model": "m", "settings": {"seed": 0, "pass_ks": (1, 2, 4)}, "limit": 0}
    write_run(tmp_path, results[:1], "r", info)
    done = load_finished(tmp_path, info)
    assert list(done) == ["aime24"]
    assert done["aime24"].problems == results[0].problems and done["aime24"].scores == results[0].scores
    assert load_finished(tmp_path, dict(info, settings={"seed": 1, "pass_ks": (1, 2, 4)})) == {}
    assert load_finished(tmp_path / "none", info) == {}
