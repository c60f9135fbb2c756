"""`p2o data prepare`: DeepScaleR / DeepMath-103K from local files in their public formats, decontamination."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p2o.cli import main
from p2o.data.decontaminate import NgramIndex, contamination_report, tokens
from p2o.data.loaders import DataError
from p2o.data.prepare import PrepareOptions, Row, balance_answer_types, classify_answer_type, content_hash, prepare

BENCHMARKS = Path(__file__).resolve().parents[2] / "data" / "benchmarks"
MATH500_Q = json.loads((BENCHMARKS / "math500.jsonl").read_text().splitlines()[0])["problem"]


def _deepscaler(path: Path) -> Path:
    """agentica-org/DeepScaleR-Preview-Dataset layout: a JSON list of {problem, answer, solution}."""
    rows = [{"problem": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1), "solution": "..."} for i in range(20)]
    rows += [{"problem": "  what is 3 PLUS   4? ", "answer": "7", "solution": ""},      # duplicate of row 3
             {"problem": "What is 5 plus 6?", "answer": "11", "solution": ""},           # exact duplicate
             {"problem": "Half of one?", "answer": "\\dfrac{1}{2}", "solution": ""},     # normalised answer
             {"problem": "Half as a percent?", "answer": "50\\%", "solution": ""},       # % kept raw
             {"problem": "No answer here", "answer": "", "solution": ""}]                # dropped (empty)
    rows += [{"problem": "In a contest: " + MATH500_Q + " Show your work.", "answer": "3", "solution": ""},
             {"problem": "Please compute $\\binom{10}{3}$ by hand.", "answer": "120", "solution": ""}]
    path.write_text(json.dumps(rows))
    return path


def _deepmath(path: Path) -> Path:
    """zwhe99/DeepMath-103K layout (parquet): question, final_answer, difficulty, topic, r1_solution_1..3."""
    rows = []

    def add(n, difficulty, answer, kind):
        for i in range(n):
            rows.append({"question": f"Level {difficulty} {kind} problem number {i}: find the value.",
                         "final_answer": answer(i), "difficulty": difficulty, "topic": "Mathematics -> Algebra",
                         "r1_solution_1": "...", "r1_solution_2": "...", "r1_solution_3": "..."})

    add(10, 6.0, str, "easy")                                   # below --min-difficulty 7
    add(144, 7.0, str, "numeric")
    add(16, 7.0, lambda i: f"x^2+{i}", "symbolic")              # answer type 'other'
    add(5, 7.0, lambda i: "", "empty")                          # dropped before balancing
    add(36, 8.0, str, "numeric")
    add(4, 8.0, lambda i: f"y+{i}", "symbolic")
    add(40, 8.0, lambda i: "Yes" if i % 2 else "No", "yesno")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_deepscaler_splits_dedup_normalisation(tmp_path):
    src = _deepscaler(tmp_path / "deepscaler.json")
    m = prepare(PrepareOptions("deepscaler", tmp_path / "out", [src], seed=42, sizes=(4, 8), dev_size=3))
    assert m["counts"] == {"read": 27, "dropped_empty": 1, "dropped_duplicates": 2, "pool": 21}
    dev, t4, t8 = (_read(tmp_path / "out" / f) for f in ("dev_3.parquet", "train_4.parquet", "train_8.parquet"))
    assert (len(dev), len(t4), len(t8)) == (3, 4, 8)
    assert t4 == t8[:4]  # nested subsets
    assert not {r["id"] for r in dev} & {r["id"] for r in t8}
    assert set(t8[0]) == {"id", "question", "answer", "answer_raw", "source"} and t8[0]["source"] == "deepscaler"
    # every row keeps its release position as id; normalised answers keep the raw form beside them
    full = m["counts"]["pool"] + 3
    m2 = prepare(PrepareOptions("deepscaler", tmp_path / "all", [src], seed=42, sizes=(full - 3,), dev_size=3))
    rows = {r["id"]: r for f in ("dev_3.parquet", f"train_{full - 3}.parquet") for r in _read(tmp_path / "all" / f)}
    assert rows["deepscaler-22"]["answer"] == "\\frac{1}{2}" and rows["deepscaler-22"]["answer_raw"] == "\\dfrac{1}{2}"
    assert rows["deepscaler-23"]["answer"] == "50\\%"
    assert "deepscaler-20" not in rows and "deepscaler-21" not in rows  # duplicates of rows 3 and 5
    assert m2["filters"]["answer_normaliser"] == "p2o.reward.normalize.normalize"
    # manifest: input hash, per-split content hashes that match the files, nothing left half-written
    assert m["source"]["files"][0]["sha256"] and m["seed"] == 42
    assert m["splits"]["train_4"]["content_sha256"] == content_hash(
        [Row(r["id"], r["question"], r["answer"], r["answer_raw"]) for r in t4])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == m
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_deterministic_for_a_seed(tmp_path):
    src = _deepscaler(tmp_path / "deepscaler.json")
    a = prepare(PrepareOptions("deepscaler", tmp_path / "a", [src], seed=1, sizes=(5,), dev_size=2))
    b = prepare(PrepareOptions("deepscaler", tmp_path / "b", [src], seed=1, sizes=(5,), dev_size=2))
    c = prepare(PrepareOptions("deepscaler", tmp_path / "c", [src], seed=2, sizes=(5,), dev_size=2))
    assert a == b and a["content_sha256"] != c["content_sha256"]


def test_deepmath_difficulty_and_answer_type_balance(tmp_path):
    src = _deepmath(tmp_path / "train-00000-of-00001.parquet")
    m = prepare(PrepareOptions("deepmath", tmp_path / "out", [src], seed=42, sizes=(50, 100), dev_size=10))
    # hand-computed with the authors' rule:
    #   level 7: 144 numeric + 16 other; weights 12 : 4; target int(160 * 0.95) = 152 -> numeric 114 (sampled), other 16
    #   level 8: 36 numeric + 4 other + 40 yes/no; weights 6 : 2; target 76 -> numeric 57 (all 36), other 19 (all 4);
    #            yes/no cap int(76 * 0.05 / 0.95) = 4
    #   global yes/no cap int(174 * 0.05) = 8 >= 4: nothing more dropped
    assert m["counts"] == {"read": 255, "dropped_empty": 5, "after_difficulty": 240, "dropped_duplicates": 0,
                           "after_balance": 174, "pool": 164}
    rows = _read(tmp_path / "out" / "train_100.parquet") + _read(tmp_path / "out" / "dev_10.parquet")
    assert all(r["difficulty"] >= 7 for r in rows) and rows[0]["topic"] == "Mathematics -> Algebra"
    assert {r["answer_type"] for r in rows} <= {"numeric", "other", "yes_no"}
    assert m["filters"]["min_difficulty"] == 7.0


def test_balance_counts_and_yes_no_cap():
    def rows(n, difficulty, answer):
        return [Row(f"r{difficulty}-{answer(0)}-{i}", "q", answer(i), answer(i), {"difficulty": difficulty})
                for i in range(n)]

    kept = balance_answer_types(rows(144, 7.0, str) + rows(16, 7.0, lambda i: f"x+{i}")
                                + rows(36, 8.0, str) + rows(4, 8.0, lambda i: f"y+{i}")
                                + rows(40, 8.0, lambda i: "yes"), seed=0)
    types = Counter(classify_answer_type(r.answer_raw) for r in kept)
    assert types == {"numeric": 150, "other": 20, "yes_no": 4}
    # a level that is mostly yes/no: numeric quota int(int(119 * 0.95) * 1) = 113 (all 19 kept); the yes/no cap
    # uses the quota, not what was kept (as the authors' script does): int(113 * 0.05 / 0.95) = 5;
    # then the global cap int(24 * 0.05) = 1
    kept = balance_answer_types(rows(19, 9.0, str) + rows(100, 9.0, lambda i: "No"), seed=0)
    assert Counter(classify_answer_type(r.answer_raw) for r in kept) == {"numeric": 19, "yes_no": 1}
    assert balance_answer_types(rows(19, 9.0, str) + rows(100, 9.0, lambda i: "No"), seed=0) == kept  # seeded


def test_classify_answer_type():
    assert [classify_answer_type(a) for a in ("", "Yes", "(B)", "-3/4", "12%", "5 cm", "2π", "[0, 1)", "x+1",
                                              "the set of all even integers")] == [
        "empty", "yes_no", "multiple_choice", "numeric", "percentage", "numeric_with_unit", "mathematical_symbol",
        "interval_set", "other", "text_answer"]


def test_decontamination_report_and_drop(tmp_path):
    src = _deepscaler(tmp_path / "deepscaler.json")
    m = prepare(PrepareOptions("deepscaler", tmp_path / "out", [src], seed=0, sizes=(4,), dev_size=2,
                               benchmark_dir=BENCHMARKS))
    report = json.loads((tmp_path / "out" / "decontamination.json").read_text())
    assert report["flagged"]["math500"] == ["deepscaler-25"]   # shares 13-grams with a MATH-500 problem
    assert report["flagged"]["aime25"] == ["deepscaler-26"]    # contains a short AIME25 problem whole
    assert report["flagged_total"] == 2 and report["dropped"] is False
    assert m["decontamination"]["flagged_counts"]["math500"] == 1
    m = prepare(PrepareOptions("deepscaler", tmp_path / "drop", [src], seed=0, sizes=(4,), dev_size=2,
                               benchmark_dir=BENCHMARKS, drop_contaminated=True))
    assert m["counts"]["dropped_contaminated"] == 2 and m["counts"]["pool"] == 20


def test_ngram_index_thresholds():
    bench = {"b": ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen", "tiny question"]}
    index = NgramIndex.build(bench, n=13)
    assert index.matches("x one two three four five six seven eight nine ten eleven twelve thirteen y") == {"b": [0]}
    assert index.matches("one two three four five six seven eight nine ten eleven twelve") == {}  # 12 words only
    assert index.matches("A Tiny   Question!") == {"b": [1]}
    assert tokens("Let $\\frac{a}{b}$ be") == ["let", "frac", "a", "b", "be"]
    r = contamination_report([("t1", "tiny question here"), ("t2", "unrelated")], bench)
    assert r.flagged == {"b": ["t1"]} and r.flagged_ids == {"t1"}


# ----------------------------------------------------------------------------- errors and the CLI
def test_errors(tmp_path):
    deepmath = _deepmath(tmp_path / "dm.parquet")
    with pytest.raises(DataError, match="lack 'problem'/'answer' .*agentica-org/DeepScaleR-Preview-Dataset"):
        prepare(PrepareOptions("deepscaler", tmp_path / "o", [deepmath]))
    with pytest.raises(DataError, match="fewer than --dev-size 500 \\+ largest of --sizes 10000"):
        prepare(PrepareOptions("deepmath", tmp_path / "o", [deepmath]))
    with pytest.raises(DataError, match="unknown dataset 'gsm8k'"):
        prepare(PrepareOptions("gsm8k", tmp_path / "o", [deepmath]))
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        prepare(PrepareOptions("deepscaler", tmp_path / "o", [tmp_path / "bad.jsonl"]))
    with pytest.raises(DataError, match="no benchmark files found"):
        prepare(PrepareOptions("deepmath", tmp_path / "o", [deepmath], sizes=(10,), dev_size=5,
                               benchmark_dir=tmp_path / "empty"))


def test_hub_needs_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without the package
    with pytest.raises(DataError, match="no --input files given and the `datasets` package is not installed; "
                                        "download zwhe99/DeepMath-103K"):
        prepare(PrepareOptions("deepmath", tmp_path / "o"))


def test_cli(tmp_path, capsys):
    src = _deepscaler(tmp_path / "deepscaler.json")
    out = tmp_path / "out"
    assert main(["data", "prepare", "deepscaler", "--input", str(tmp_path / "deep*.json"), "--out", str(out),
                 "--sizes", "4,8", "--dev-size", "3", "--seed", "42"]) == 0
    assert "dev_3 3, train_4 4, train_8 8" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["source"]["files"][0]["path"] == str(src)
    assert main(["data", "prepare", "deepscaler", "--input", str(tmp_path / "nothing*.json"), "--out", str(out)]) == 2
    assert "no file matches" in capsys.readouterr().err
