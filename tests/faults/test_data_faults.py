"""Hostile data files (JSON Lines, JSON, parquet) for the problem loaders, hostile lines for `p2o verify`,
hostile strings for the verifier, and config values that must be refused naming their key."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p2o.data.loaders import DataError, load_problems

REPO = Path(__file__).resolve().parents[2]


def jsonl(path: Path, *lines: bytes | str | dict) -> Path:
    out = b""
    for x in lines:
        out += (json.dumps(x).encode() if isinstance(x, dict) else x if isinstance(x, bytes) else x.encode()) + b"\n"
    path.write_bytes(out)
    return path


GOOD = {"question": "1+1?", "answer": "2"}


# ---------------------------------------------------------------------------------------------- loaders
@pytest.mark.parametrize("bad, match", [
    ({"question": "q", "answer": ["2", "3"]}, r"row 2 field 'answer' \(data.answer_key\): expected a string or a "
                                               r"finite number, got list .*\[0\]"),
    ({"question": "q", "answer": {"value": 2}}, r"row 2 field 'answer'.*got dict"),
    ({"question": "q", "answer": True}, r"row 2 field 'answer'.*got bool"),
    ({"question": ["q"], "answer": "2"}, r"row 2 field 'question'.*expected a string, got list"),
    ({"question": 12, "answer": "2"}, r"row 2 field 'question'.*got int"),
    ({"question": "q", "answer": None}, r"row 2 field 'answer'.*empty \(null\)"),
    ({"question": "  ", "answer": "2"}, r"row 2 field 'question'.*is empty"),
    ({"question": "q \ud800", "answer": "2"}, r"row 2 field 'question'.*invalid Unicode \(lone surrogate U\+D800"),
    ({"question": "q", "answer": "\udc80"}, r"row 2 field 'answer'.*lone surrogate U\+DC80"),
])
def test_wrong_types_and_invalid_text_name_file_row_and_field(tmp_path, bad, match):
    f = jsonl(tmp_path / "train.jsonl", GOOD, bad)
    with pytest.raises(DataError, match=match) as e:
        load_problems(f)
    assert str(f) in str(e.value)


def test_nan_answers_and_ids_are_refused(tmp_path):
    f = jsonl(tmp_path / "nan.jsonl", GOOD, '{"question": "q", "answer": NaN}')
    with pytest.raises(DataError, match=r"nan.jsonl: row 2 field 'answer'.*got float nan"):
        load_problems(f)
    f = jsonl(tmp_path / "ids.jsonl", {**GOOD, "id": 1}, {**GOOD, "id": True})
    with pytest.raises(DataError, match=r"row 2 field 'id'.*expected a string or an integer, got bool"):
        load_problems(f, id_key="id")
    assert [p.answer for p in load_problems(jsonl(tmp_path / "num.jsonl", {"question": "q", "answer": 7},
                                                  {"question": "r", "answer": 0.5}))] == ["7", "0.5"]


def test_decode_errors_name_file_and_line(tmp_path):
    f = jsonl(tmp_path / "bytes.jsonl", GOOD, GOOD, b'{"question": "caf\xe9", "answer": "1"}')
    with pytest.raises(DataError, match=r"bytes.jsonl: line 3 is not valid UTF-8"):
        load_problems(f)
    f = tmp_path / "bytes.json"
    f.write_bytes(b'[\n{"question": "a", "answer": "1"},\n{"question": "\xff", "answer": "1"}\n]')
    with pytest.raises(DataError, match=r"bytes.json: line 3 is not valid UTF-8"):
        load_problems(f)
    f = jsonl(tmp_path / "deep.jsonl", GOOD, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"deep.jsonl: line 2 is not valid JSON"):
        load_problems(f)


def test_a_json_object_must_hold_exactly_one_list(tmp_path):
    f = tmp_path / "two.json"
    f.write_text(json.dumps({"train": [GOOD], "test": [GOOD]}))
    with pytest.raises(DataError, match=r"two.json: a JSON object holding 2 lists \('train', 'test'\)"):
        load_problems(f)
    f.write_text(json.dumps({"data": [GOOD, GOOD], "version": 3}))
    assert len(load_problems(f)) == 2


def test_hostile_parquet(tmp_path):
    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "answer": [1.5, math.nan]}), f)
    with pytest.raises(DataError, match=r"p.parquet: row 2 field 'answer'.*got float nan"):
        load_problems(f)
    pq.write_table(pa.table({"question": ["a", "b"], "answer": [["1"], ["2", "3"]]}), f)
    with pytest.raises(DataError, match=r"row 1 field 'answer'.*got list"):
        load_problems(f)
    assert [p.answer for p in load_problems(f, answer_key="answer[0]")] == ["1", "2"]
    pq.write_table(pa.table({"question": ["a", "b"], "answer": [{"v": "1"}, {"v": "2"}]}), f)
    with pytest.raises(DataError, match=r"row 1 field 'answer'.*got dict"):
        load_problems(f)
    assert [p.answer for p in load_problems(f, answer_key="answer.v")] == ["1", "2"]
    f.write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_problems(f)


def test_a_too_long_problem_names_its_id(tiny_model_dir):
    from transformers import AutoTokenizer

    from p2o.config import load_config
    from p2o.data.problem import Problem
    from p2o.train.rows import plan_requests

    cfg = load_config(None, ["rollout.max_prompt_tokens=64"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    problems = [Problem("short-1", "1+1?", "2"), Problem("long-7", "word " * 500, "1", source="train")]
    with pytest.raises(ValueError, match=r"problem 'long-7' \(source train\): its prompt has \d+ tokens > "
                                         r"rollout.max_prompt_tokens = 64"):
        plan_requests(cfg, tok, problems, {}, step=1)


# ---------------------------------------------------------------------------------------------- p2o verify
def test_verify_gives_every_line_a_verdict_and_streams(tmp_path):
    src = jsonl(tmp_path / "in.jsonl",
                {"response": "\\boxed{2}", "answer": "2"},
                b'{"response": "\\\\boxed{3} \\ud800", "answer": "3"}',  # a lone surrogate (JSON escape)
                b'{"response": "\xff\xfe", "answer": "3"}',                  # not UTF-8
                "[" * 50_000 + "]" * 50_000,                                # pathological nesting
                {"response": "\\boxed{x²}", "answer": "x^2"},               # superscript digits
                {"response": 5, "answer": "5"},
                "",
                {"response": "\\boxed{4}", "answer": "5"})
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-m", "p2o.cli", "verify", "--jsonl", str(src), "--out", str(out),
                        "--workers", "1"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 2, r.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["reason"] for g in got] == ["equal_string", "bad_input", "bad_input", "bad_input", "equal_symbolic",
                                          "bad_input", "not_equal"]
    assert "lone surrogate U+D800" in got[1]["error"] and "in.jsonl:2" in got[1]["error"]
    assert "not valid UTF-8" in got[2]["error"] and "not valid JSON" in got[3]["error"]
    assert "must be a string" in got[5]["error"]
    assert "4 malformed line(s)" in r.stderr


def test_verify_writes_verdicts_before_the_input_is_finished(tmp_path):
    """Streaming: the first chunk's verdicts are on stdout while the rest is still being scored."""
    rows = [{"response": f"\\boxed{{{i}}}", "answer": str(i)} for i in range(4000)]
    src = jsonl(tmp_path / "big.jsonl", *rows)
    proc = subprocess.Popen([sys.executable, "-m", "p2o.cli", "verify", "--jsonl", str(src), "--workers", "1",
                             "--chunk", "16"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        first = proc.stdout.readline()
        assert json.loads(first)["correct"] is True
        assert proc.poll() is None  # still running: the verdicts came as they were decided
    finally:
        proc.kill()
        proc.wait()


def test_the_verifier_never_raises_on_hostile_strings():
    from p2o.config import RewardConfig
    from p2o.reward import Verifier

    hostile = ["\\boxed{\ud800}", "\\boxed{²³}", "\\boxed{①}", "\\boxed{" + "{" * 5000 + "}", "\\boxed{10⁻³}",
               "\x00\\boxed{1}", "\\boxed{" + "9" * 5000 + "}", "\\boxed{₁₂}"]
    with Verifier(RewardConfig(workers=1, timeout_s=5.0)) as v:
        verdicts = v.score_many([(h, "1") for h in hostile] + [("\\boxed{10⁻³}", "0.001")])
    assert len(verdicts) == len(hostile) + 1
    assert all(x.reason != "internal_error" for x in verdicts), verdicts
    assert verdicts[-1].correct


# ---------------------------------------------------------------------------------------------- config fuzz
@pytest.mark.slow  # one `p2o train` subprocess per case
def test_run_config_problems_stop_p2o_train_before_any_work(tmp_path):
    t0 = time.monotonic()
    for overrides, key in ((["checkpoint.resume=autoo"], "checkpoint.resume"),
                           ([f"logging.run_dir={tmp_path / 'file' / 'run'}"], "logging.run_dir")):
        (tmp_path / "file").write_text("")
        r = subprocess.run([sys.executable, "-m", "p2o.cli", "train", "--config", "configs/demo_cpu.yaml",
                            f"logging.run_dir={tmp_path / 'ok'}", *overrides], capture_output=True, text=True,
                           timeout=120, cwd=REPO)
        assert r.returncode == 2 and key in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60  # refused before any model was built


def _float_keys() -> list[str]:
    import dataclasses

    from p2o.config import RunConfig

    keys = []
    for section in dataclasses.fields(RunConfig):
        value = getattr(RunConfig(), section.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(value) if str(f.type) == "float"]
    return keys


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_naming_the_key(value):
    from p2o.config import ConfigError, load_config

    accepted = []
    for key in _float_keys():
        try:
            load_config(None, [f"{key}={value}"])
            accepted.append(key)
        except ConfigError as e:
            assert key in str(e)
    assert not accepted, f"{value} accepted for {accepted}"
