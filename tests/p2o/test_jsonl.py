"""JSON Lines reading splits on "\\n" only: model text may hold U+2028 / U+2029 / U+0085, which json.dumps with
ensure_ascii=False leaves unescaped and str.splitlines() would treat as line ends (a report once crashed on one)."""
from __future__ import annotations

import json

import pytest

from p2o.jsonl import iter_jsonl, read_jsonl
from p2o.telemetry.report import _read_rollouts

TEXTS = ["plain", "a\u2028b", "c\u2029d", "e\x85f", "g\x0bh\x0ci\x1cj", "\\boxed{4}\r"]


def test_line_separators_inside_strings_stay_in_their_record(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"i": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(TEXTS))
                    + "\n", encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()) > len(TEXTS) + 1  # the trap this module avoids
    assert [r["text"] for r in read_jsonl(path)] == TEXTS
    assert [n for n, _ in iter_jsonl(path)] == list(range(1, len(TEXTS) + 1))


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)


def test_report_reads_rollouts_with_line_separators(tmp_path):
    (tmp_path / "rollouts").mkdir()
    rows = [{"problem_id": "p0", "template": "Think\u2028step", "reward": 1.0, "text": "x\u2028y\x85z"}]
    (tmp_path / "rollouts" / "step_000001.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert _read_rollouts(tmp_path, [{"step": 1, "epoch": 0}]) == [
        {"step": 1, "epoch": 0, "problem_id": "p0", "template": "Think\u2028step", "reward": 1.0}]
