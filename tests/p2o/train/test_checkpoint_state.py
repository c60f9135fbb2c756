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
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        ckpt.load_state(ckpt.staging_dir(tmp_path, 16))
