"""jsonl/json/parquet loaders: field mapping, nested keys, clear errors, deterministic order."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p2o.config import load_config
from p2o.data import Problem, load_train_problems
from p2o.data.loaders import DataError, epoch_order, load_problems, write_jsonl


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_mapping_and_nested_keys(tmp_path):
    f = _write_jsonl(tmp_path / "d.jsonl", [
        {"problem": "1+1?", "reward_model": {"ground_truth": "2"}, "uid": "a", "level": 3},
        {"problem": "2+2?", "reward_model": {"ground_truth": "4"}, "uid": "b", "level": 1},
    ])
    ps = load_problems(f, "problem", "reward_model.ground_truth", "uid")
    assert [p.id for p in ps] == ["a", "b"] and ps[1].answer == "4" and ps[0].meta["level"] == 3


def test_parquet_and_list_answers(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": ["q1", "q2"], "final_answer": [["7"], ["8"]]}), f)
    ps = load_problems(f, answer_key="final_answer[0]")  # a list element is named explicitly
    assert [p.answer for p in ps] == ["7", "8"] and ps[0].id == "d-0"
    with pytest.raises(DataError, match=r"row 1 field 'final_answer'.*got list.*final_answer\[0\]|<key>\[0\]"):
        load_problems(f, answer_key="final_answer")


def test_round_trip_jsonl(tmp_path):
    ps = [Problem("x", "What?", "3", "s", {"k": 1})]
    write_jsonl(tmp_path / "o.jsonl", ps)
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert Problem.from_dict(rows[0]) == ps[0]


@pytest.mark.parametrize("content,match", [
    ("", "empty"),
    ('{"question": "q"}\n', "no field 'answer'.*data.answer_key"),
    ('{"question": "q", "answer": ""}\n', "field 'answer'.*is empty"),
    ('{"question": "q", "answer": "1"}\nnot json\n', "line 2 is not valid JSON"),
    ('[1, 2]\n', "row 1 is a list"),
])
def test_errors_name_file_row_field(tmp_path, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=match):
        load_problems(f)


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_problems(tmp_path / "none.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported extension"):
        load_problems(tmp_path / "x.csv")


def test_corrupt_parquet(tmp_path):
    f = tmp_path / "c.parquet"
    f.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable parquet"):
        load_problems(f)


def test_duplicate_ids(tmp_path):
    f = _write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "1", "id": 1}, {"question": "b", "answer": "2", "id": 1}])
    with pytest.raises(DataError, match="duplicate id '1' in rows 1 and 2"):
        load_problems(f, id_key="id")


def test_epoch_order_deterministic_permutation():
    a = epoch_order(100, seed=3, epoch=0)
    assert sorted(a) == list(range(100)) and a == epoch_order(100, 3, 0) and a != epoch_order(100, 3, 1)


def test_load_train_problems_from_config(tmp_path):
    f = _write_jsonl(tmp_path / "d.jsonl", [{"q": f"{i}?", "a": str(i)} for i in range(5)])
    cfg = load_config(None, [f"data.source={f}", "data.question_key=q", "data.answer_key=a", "data.max_problems=3"])
    assert [p.answer for p in load_train_problems(cfg.data)] == ["0", "1", "2"]
