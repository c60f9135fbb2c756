"""`p2o verify` and `p2o bench verifier` through the real `p2o` entry point."""
from __future__ import annotations

import csv
import json

import pytest

from p2o.cli import main

pytestmark = pytest.mark.xdist_group("verifier_cli")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def test_verify_jsonl_to_file(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out" / "verdicts.jsonl"
    _write(src, [{"response": "so \\boxed{\\frac12}", "answer": "0.5", "extra": 1},
                 {"response": "no box 3", "answer": "3"},
                 "",  # blank lines are skipped
                 {"response": "\\boxed{(2,1)}", "answer": "(1,2)"}])
    assert main(["verify", "--jsonl", str(src), "--out", str(out), "--workers", "1"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got == [{"correct": True, "extracted": "\\frac12", "reason": "equal_symbolic"},
                   {"correct": False, "extracted": None, "reason": "no_boxed"},
                   {"correct": False, "extracted": "(2,1)", "reason": "not_equal"}]
    assert "3 pairs, accuracy 0.3333" in capsys.readouterr().err
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temp file


def test_verify_to_stdout_with_fallback(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    _write(src, [{"response": "it is 42", "answer": "42"}])
    assert main(["verify", "--jsonl", str(src), "--fallback", "last_number", "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"correct": True, "extracted": "42", "reason": "equal_string"}


@pytest.mark.parametrize("rows, message", [
    ([{"response": "\\boxed{1}", "answer": "1"}, {"response": "\\boxed{1}"}], "in.jsonl:2: missing field 'answer'"),
    ([{"answer": "1"}], "in.jsonl:1: missing field 'response'"),
    ([{"response": "\\boxed{1}", "answer": "1"}, "{not json"], "in.jsonl:2: not valid JSON"),
    ([{"response": 5, "answer": "1"}], "in.jsonl:1: field 'response' must be a string"),
    (["[1, 2]"], "in.jsonl:1: expected a JSON object"),
])
def test_malformed_lines_name_line_and_field(tmp_path, capsys, rows, message):
    src = tmp_path / "in.jsonl"
    _write(src, rows)
    assert main(["verify", "--jsonl", str(src), "--workers", "1"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    verdicts = [json.loads(line) for line in captured.out.splitlines()]
    assert len(verdicts) == len(rows)  # every line has its verdict; the malformed ones say why
    bad = [v for v in verdicts if v["reason"] == "bad_input"]
    assert len(bad) == 1 and message in bad[0]["error"] and bad[0]["correct"] is False
    assert all(v["reason"] == "equal_string" for v in verdicts if v not in bad)


def test_missing_input_file(tmp_path, capsys):
    assert main(["verify", "--jsonl", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bench_verifier_writes_csv(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert main(["bench", "verifier", "--n", "60", "--workers", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "verdicts/s" in table and "pooled" in table and "single" in table
    rows = list(csv.DictReader(out.open()))
    assert [r["mode"] for r in rows] == ["single", "startup", "pooled"]
    for r in rows:
        assert r["benchmark"] == "verifier" and r["machine"] and r["timestamp"]
    single, pooled = rows[0], rows[2]
    assert int(single["pairs"]) == int(pooled["pairs"]) == 60
    assert float(single["verdicts_per_s"]) > 0 and float(pooled["verdicts_per_s"]) > 0
    # same pairs in both modes: the same verdicts, unless a pair hit the wall-clock bound on a busy machine
    assert abs(float(single["accuracy"]) - float(pooled["accuracy"])) <= 2 / 60
