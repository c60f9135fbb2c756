"""Benchmark registry and loaders: each public format, field mapping, protocol choice, and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p2o.eval.benchmarks import (
    BENCHMARKS,
    PAPER_ORDER,
    BenchmarkError,
    answer_text,
    find_files,
    get_spec,
    load_benchmark,
    local_spec,
    parse_names,
)

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "benchmarks"

# (benchmark, expected ids, expected gold answers) for the fixture files in their public formats
EXPECTED = {
    "aime24": (["2024-I-1", "2024-I-2", "2024-II-1"], ["1", "16", "80"]),
    "aime25": (["aime25-0", "aime25-1", "aime25-2"], ["70", "13", "120"]),  # two files, no id field
    "amc23": (["0", "1", "2"], ["1", "8", "12.5"]),  # floats in the release: 1.0 -> "1"
    "math500": (["test/precalculus/807.json", "test/algebra/2042.json", "test/prealgebra/1302.json",
                 "test/algebra/1.json"], ["\\left( 3, \\frac{\\pi}{2} \\right)", "26000", "11\\sqrt2", "4"]),
    "minerva": (["minerva-0", "minerva-1"], ["1.6", "3e8"]),
    "olympiadbench": (["2231", "2232"], ["25", "-2, 2"]),  # final_answer lists, $...$ stripped
}


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_loads_public_format(name):
    problems = load_benchmark(name, FIXTURES)
    ids, answers = EXPECTED[name]
    assert [p.id for p in problems] == ids
    assert [p.answer for p in problems] == answers
    assert all(p.question and p.source == name for p in problems)


def test_math500_meta_and_question_text():
    p = load_benchmark("math500", FIXTURES)[1]
    assert p.question == "What is the value of $513^2 - 487^2$?"
    assert p.meta["subject"] == "Algebra" and p.meta["level"] == 1


def test_parquet_release_and_explicit_files(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "aime24.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "aime24.parquet")
    problems = load_benchmark("aime24", tmp_path)
    assert [p.answer for p in problems] == ["1", "16", "80"]
    assert load_benchmark("AIME24", files=[tmp_path / "aime24.parquet"], limit=2)[1].id == "2024-I-2"


def test_yentinglin_aime25_layout(tmp_path):
    (tmp_path / "aime25.jsonl").write_text(json.dumps({"id": 0, "problem": "Compute $1+1$.", "answer": "2",
                                                       "solution": "", "url": "", "year": 2025}) + "\n")
    [p] = load_benchmark("aime25", tmp_path)
    assert (p.id, p.question, p.answer) == ("0", "Compute $1+1$.", "2")


def test_protocol_follows_release_size():
    assert [get_spec(n).protocol() for n in PAPER_ORDER] == ["sampled"] * 3 + ["greedy"] * 3
    assert get_spec("math500").protocol(sampled_below=1000) == "sampled"


def test_answer_text():
    assert answer_text(27.0) == "27" and answer_text(0.5) == "0.5" and answer_text(7) == "7"
    assert answer_text(["$\\frac{1}{2}$"], strip_dollars=True) == "\\frac{1}{2}"


def test_parse_names():
    assert parse_names("all") == list(PAPER_ORDER)
    assert parse_names("math500, AIME24,math500") == ["math500", "aime24"]
    assert set(BENCHMARKS) == set(PAPER_ORDER)


# ----------------------------------------------------------------------------- errors
def test_unknown_benchmark_lists_known_names():
    with pytest.raises(BenchmarkError, match="unknown benchmark 'gsm8k'; known: aime24, aime25"):
        load_benchmark("gsm8k", FIXTURES)
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        parse_names("aime24,nope")


def test_missing_file_names_expected_paths(tmp_path):
    with pytest.raises(BenchmarkError, match=r"benchmark 'math500': no data file found; expected one of .*math500\.jsonl"):
        load_benchmark("math500", tmp_path)
    (tmp_path / "minerva").mkdir()
    with pytest.raises(BenchmarkError, match="holds no"):
        find_files("minerva", tmp_path)
    with pytest.raises(BenchmarkError, match="file not found"):
        load_benchmark("minerva", files=[tmp_path / "nope.jsonl"])


def test_corrupt_files(tmp_path):
    (tmp_path / "amc23.jsonl").write_text('{"question": "1+1?", "answer": 2}\n{"question": "broken\n')
    with pytest.raises(BenchmarkError, match=r"amc23\.jsonl: line 2 is not valid JSON"):
        load_benchmark("amc23", tmp_path)
    (tmp_path / "aime24.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(BenchmarkError, match="not a readable parquet file"):
        load_benchmark("aime24", tmp_path)
    (tmp_path / "minerva.jsonl").write_text("")
    with pytest.raises(BenchmarkError, match="empty"):
        load_benchmark("minerva", tmp_path)


def test_field_mapping_errors(tmp_path):
    # MATH-500 records given in the AIME 2024 layout: the error names the row, the expected and present fields
    (tmp_path / "math500.jsonl").write_text(json.dumps({"ID": "x", "Problem": "1+1?", "Answer": 2}) + "\n")
    with pytest.raises(BenchmarkError, match=r"row 1 has no question field .*expected one of problem; "
                                             r"fields present: Answer, ID, Problem"):
        load_benchmark("math500", tmp_path)
    (tmp_path / "minerva.jsonl").write_text(json.dumps({"question": "q", "answer": ""}) + "\n")
    with pytest.raises(BenchmarkError, match=r"row 1 field 'answer' \(answer\) is empty"):
        load_benchmark("minerva", tmp_path)
    (tmp_path / "olympiadbench.jsonl").write_text(json.dumps({"id": 1, "question": "q", "final_answer": []}) + "\n")
    with pytest.raises(BenchmarkError, match="'final_answer' \\(answer\\) is empty"):
        load_benchmark("olympiadbench", tmp_path)
    dup = json.dumps({"id": 3, "question": "q", "answer": "1"})
    (tmp_path / "amc23.jsonl").write_text(dup + "\n" + dup + "\n")
    with pytest.raises(BenchmarkError, match="duplicate problem id '3'"):
        load_benchmark("amc23", tmp_path)


# ----------------------------------------------------------------------------- local benchmarks
def _write_problems(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"arith-{i}", "question": f"What is {i} + 1?", "answer": str(i + 1),
                                        "source": "arithmetic"}) + "\n" for i in range(n)))
    return path


def test_local_benchmark_reads_p2o_problem_records(tmp_path):
    problems = load_benchmark("hard", files=[_write_problems(tmp_path / "hard.jsonl", 3)])
    assert [(p.id, p.question, p.answer, p.source) for p in problems] == [
        ("arith-0", "What is 0 + 1?", "1", "hard"), ("arith-1", "What is 1 + 1?", "2", "hard"),
        ("arith-2", "What is 2 + 1?", "3", "hard")]
    # its protocol follows its own size, like a registered benchmark's follows its public release
    assert local_spec("hard", 3).protocol() == "sampled" and local_spec("hard", 100).protocol() == "greedy"
    assert parse_names("hard, math500", local=("hard",)) == ["hard", "math500"]
    with pytest.raises(BenchmarkError, match="unknown benchmark 'hard'"):
        parse_names("hard")  # a local name needs its file
    with pytest.raises(BenchmarkError, match="unknown benchmark 'hard'"):
        load_benchmark("hard", tmp_path)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 65])
def test_local_benchmark_names_cannot_be_paths(tmp_path, name):
    with pytest.raises(BenchmarkError, match="must match"):
        load_benchmark(name, files=[_write_problems(tmp_path / "p.jsonl", 1)])
