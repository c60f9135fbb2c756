"""Safetensors streaming reader/writer, checked against the safetensors library itself."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_bridge.hf_io import INDEX, CheckpointError, HFCheckpoint, StreamingSafetensorsWriter, TensorSpec


def specs(tensors):
    return [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]


def test_streamed_shards_read_back_by_safetensors(tmp_path):
    tensors = {f"w{i}": torch.randn(10, 10) for i in range(5)}  # 400 bytes each
    tensors["half"] = torch.randn(3, 5).to(torch.bfloat16)
    tensors["scalar_like"] = torch.tensor([7], dtype=torch.int64)
    w = StreamingSafetensorsWriter(tmp_path / "out", specs(tensors), max_shard_bytes=900)
    w.add_all(tensors.items())
    out = w.close(extra_files={"config.json": "{}"})
    index = json.loads((out / INDEX).read_text())
    assert len(set(index["weight_map"].values())) == 3 and not (tmp_path / "out.tmp").exists()
    for file in set(index["weight_map"].values()):
        for name, t in load_file(str(out / file)).items():   # the reference reader
            assert index["weight_map"][name] == file and torch.equal(t, tensors[name])
    ck = HFCheckpoint(out)
    assert sorted(ck.names()) == sorted(tensors)
    assert all(torch.equal(ck.get(k), v) and ck.shape(k) == tuple(v.shape) for k, v in tensors.items())
    with pytest.raises(CheckpointError, match="'nope'"):
        ck.get("nope")


def test_reader_on_a_safetensors_library_file(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    ref = {"a": torch.randn(4, 3), "b": torch.arange(6, dtype=torch.int32), "c": torch.randn(2).half()}
    save_file(ref, str(d / "model.safetensors"))
    ck = HFCheckpoint(d)
    assert all(torch.equal(ck.get(k), v) for k, v in ref.items())


def test_writer_rejects_out_of_plan_tensors(tmp_path):
    plan = [TensorSpec("a", (2,), torch.float32), TensorSpec("b", (3,), torch.float32)]
    w = StreamingSafetensorsWriter(tmp_path / "one", plan)
    with pytest.raises(ValueError, match="'b'"):
        w.add("b", torch.ones(3))
    w.add("a", torch.ones(2))
    with pytest.raises(ValueError, match="only 1 of 2"):
        w.close()
    with pytest.raises(ValueError, match="repeat"):
        StreamingSafetensorsWriter(tmp_path / "two", plan + plan[:1])
