"""Sharded safetensors writing/reading."""
from __future__ import annotations

import json

import pytest
import torch

from megatron_bridge.hf_io import INDEX, CheckpointError, HFCheckpoint, ShardedSafetensorsWriter


def test_sharded_round_trip(tmp_path):
    tensors = {f"w{i}": torch.randn(10, 10) for i in range(5)}  # 400 bytes each
    w = ShardedSafetensorsWriter(tmp_path / "out", max_shard_bytes=900)
    w.add_all(tensors.items())
    out = w.close(extra_files={"config.json": "{}"})
    index = json.loads((out / INDEX).read_text())
    assert len(set(index["weight_map"].values())) == 3 and index["metadata"]["total_size"] == 2000
    assert not (tmp_path / "out.tmp").exists()
    ck = HFCheckpoint(out)
    assert sorted(ck.names()) == sorted(tensors)
    assert all(ck.get(k).equal(v) for k, v in tensors.items())
    with pytest.raises(CheckpointError, match="'nope'"):
        ck.get("nope")


def test_single_file_and_duplicate_names(tmp_path):
    w = ShardedSafetensorsWriter(tmp_path / "one")
    w.add("a", torch.ones(2))
    with pytest.raises(ValueError, match="'a'"):
        w.add("a", torch.ones(2))
    out = w.close()
    assert (out / "model.safetensors").is_file() and not (out / INDEX).exists()
    assert HFCheckpoint(out).get("a").equal(torch.ones(2))
