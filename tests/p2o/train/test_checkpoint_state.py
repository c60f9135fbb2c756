"""Loop state: RNG capture/restore through JSON, and the complete-or-absent checkpoint directory."""
from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest
import torch

from p2o.train import checkpoint as ckpt


def test_rng_round_trip_through_json():
    random.seed(5)
    torch.manual_seed(5)
    st = ckpt.LoopState()
    st.capture_rng()
    expected = (random.random(), torch.rand(3))
    restored = ckpt.LoopState(**json.loads(json.dumps(asdict(st))))
    random.seed(99)
    torch.manual_seed(99)
    restored.restore_rng()
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])


def test_only_complete_checkpoints_count(tmp_path):
    st = ckpt.LoopState(epoch=1, global_step=4, assignment={"p": ["z"]})
    ckpt.staging_dir(tmp_path, 4).mkdir(parents=True)
    path = ckpt.commit(tmp_path, 4, st, keep_last=2)
    ckpt.staging_dir(tmp_path, 8).mkdir()  # a save killed before its commit
    assert ckpt.latest_checkpoint(tmp_path) == path and ckpt.load_state(path) == st
    for step in (8, 12):
        ckpt.staging_dir(tmp_path, step).mkdir(exist_ok=True)
        ckpt.commit(tmp_path, step, st, keep_last=2)
    assert sorted(p.name for p in ckpt.checkpoint_root(tmp_path).glob("step_*")) == ["step_000008", "step_000012"]
    with pytest.raises(ckpt.CheckpointError, match="COMPLETE"):
        ckpt.load_state(ckpt.staging_dir(tmp_path, 16))


def _saved(tmp_path, step: int, st=None):
    tmp = ckpt.staging_dir(tmp_path, step)
    (tmp / "policy").mkdir(parents=True)
    (tmp / "policy" / "shard.bin").write_bytes(b"x" * 100)
    return ckpt.commit(tmp_path, step, st or ckpt.LoopState(global_step=step), keep_last=5)


@pytest.mark.parametrize("damage, match", [
    (lambda p: (p / "state.json").write_bytes(b""), "state.json: .*bytes, the manifest says"),
    (lambda p: (p / "state.json").write_bytes((p / "state.json").read_bytes()[:-5]), "state.json: .*truncated"),
    (lambda p: (p / "policy" / "shard.bin").write_bytes(b"x" * 10), "shard.bin: 10 bytes, the manifest says 100"),
    (lambda p: (p / "policy" / "shard.bin").unlink(), "shard.bin: missing"),
    (lambda p: (p / "state.json").write_bytes((p / "state.json").read_bytes().replace(b'"epoch": 0', b'"epoch": 9')),
     "state.json: checksum mismatch"),
])
def test_damaged_checkpoints_name_the_file(tmp_path, damage, match):
    path = _saved(tmp_path, 3)
    damage(path)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load_state(path)


def test_state_json_without_manifest_still_names_the_file(tmp_path):
    path = _saved(tmp_path, 3)
    (path / ckpt.MANIFEST).unlink()  # a checkpoint written before manifests existed
    (path / "state.json").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"state.json: empty file \(0 bytes\)"):
        ckpt.load_state(path)
    (path / "state.json").write_bytes(b'{"epoch": 1, "glob')
    with pytest.raises(ckpt.CheckpointError, match="state.json: not valid JSON"):
        ckpt.load_state(path)


def test_resume_candidates_name_the_key(tmp_path):
    first, second = _saved(tmp_path, 2), _saved(tmp_path, 4)
    assert ckpt.resume_candidates("auto", tmp_path) == ([second, first], False)
    assert ckpt.resume_candidates("none", tmp_path) == ([], False)
    assert ckpt.resume_candidates(str(first), tmp_path) == ([first], True)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint.resume: got 'autoo'; expected 'auto', 'none'"):
        ckpt.resume_candidates("autoo", tmp_path)


def test_failed_save_removes_staging_and_reports_a_full_disk(tmp_path, monkeypatch):
    import errno
    import shutil as sh

    _saved(tmp_path, 2)
    with pytest.raises(RuntimeError, match="boom"), ckpt.saving(tmp_path, 4, is_rank0=True) as tmp:
        tmp.mkdir()
        raise RuntimeError("boom")  # not a space problem: re-raised as it is
    assert not ckpt.staging_dir(tmp_path, 4).exists()
    with pytest.raises(ckpt.CheckpointError, match=r"no space left on .* need ~0 MB.*partial checkpoint was removed"), \
            ckpt.saving(tmp_path, 4, is_rank0=True) as tmp:
        tmp.mkdir()
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not ckpt.staging_dir(tmp_path, 4).exists()
    # torch's zip writer reports a full disk without errno: the free space decides
    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage._replace(free=1024))
    with pytest.raises(ckpt.CheckpointError, match="no space left on"), ckpt.saving(tmp_path, 6, True) as tmp:
        tmp.mkdir()
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")


def test_metrics_truncated_to_the_checkpoint_and_dropped_records_kept(tmp_path):
    from p2o.telemetry.metrics import DROPPED_FILE, MetricsLogger, metrics_size, read_metrics, truncate_metrics

    with MetricsLogger(tmp_path) as m:
        m.log({"loss": 1.0}, step=1)
        m.log({"hard_count": 3}, step=1, kind="epoch")
        size = metrics_size(tmp_path)
        m.log({"loss": 0.5}, step=2)
    (tmp_path / "metrics.jsonl").open("a").write('{"kind": "step", "step": 3, "lo')  # torn by a kill
    assert truncate_metrics(tmp_path, 1, size) == 2
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path)] == [("step", 1), ("epoch", 1)]
    assert (tmp_path / DROPPED_FILE).read_text().count("\n") == 2
    assert truncate_metrics(tmp_path, 0, 0) == 2 and list(read_metrics(tmp_path)) == []  # fresh start
