"""Atomic writes: the destination holds the old content or the new one, and no temp file is left behind."""
from __future__ import annotations

import csv
import json
import os
import stat

import pytest

from p2o.atomic import atomic_path, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text
from p2o.jsonl import read_jsonl, write_jsonl


def _only(tmp_path, name):
    """The folder holds exactly `name` (no temp files)."""
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_writes_replace_the_content(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"a": "é"}, indent=2)
    assert json.loads(p.read_text(encoding="utf-8")) == {"a": "é"} and p.read_text().endswith("}\n")
    atomic_write_text(p, "x")
    assert p.read_text() == "x"
    atomic_write_bytes(p, b"\x00\xff")
    assert p.read_bytes() == b"\x00\xff"
    _only(p.parent, "f.json")


def test_a_failure_mid_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(p, "w", newline="") as f:
            csv.writer(f).writerow(["new", "half"])
            f.flush()
            raise RuntimeError("disk on fire")
    assert p.read_text() == "old\n"
    _only(tmp_path, "f.csv")


def test_an_unserialisable_object_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.json"
    atomic_write_json(p, [1])
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()})
    assert json.loads(p.read_text()) == [1]
    _only(tmp_path, "f.json")


def test_a_jsonl_record_that_fails_to_encode_keeps_the_old_file(tmp_path):
    p = tmp_path / "r.jsonl"
    assert write_jsonl(p, [{"t": "a\u2028b"}, {"t": "c"}]) == 2
    assert read_jsonl(p) == [{"t": "a\u2028b"}, {"t": "c"}]

    def records():
        yield {"t": "new"}
        yield {"t": object()}

    with pytest.raises(TypeError):
        write_jsonl(p, records())
    assert read_jsonl(p) == [{"t": "a\u2028b"}, {"t": "c"}]
    _only(tmp_path, "r.jsonl")


def test_atomic_path_removes_the_temp_on_error_and_respects_the_umask(tmp_path):
    p = tmp_path / "t.bin"
    with pytest.raises(OSError):
        with atomic_path(p) as tmp:
            assert tmp.parent == tmp_path and tmp.exists()
            tmp.write_bytes(b"partial")
            raise OSError("writer died")
    assert list(tmp_path.iterdir()) == []
    old = os.umask(0o022)
    try:
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"ok")
    finally:
        os.umask(old)
    assert p.read_bytes() == b"ok" and stat.S_IMODE(p.stat().st_mode) == 0o644


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "f", "a"):
            pass
