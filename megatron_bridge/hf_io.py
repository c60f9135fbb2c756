"""Streaming access to HF safetensors checkpoints (single file or sharded with `model.safetensors.index.json`).

`HFCheckpoint` opens shards lazily and reads one tensor at a time; `ShardedSafetensorsWriter` buffers at most
`max_shard_bytes` before writing a shard, then writes the index. The output directory is built under a temporary
name and renamed into place when `close()` succeeds, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not match the model; the message names the tensor and the file."""


def read_config(model_dir: str | os.PathLike) -> dict:
    """config.json of an HF model directory (or a path to a config.json itself) as a dict."""
    path = Path(model_dir)
    if not (path.is_file() and path.suffix == ".json"):
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected an HF model directory with config.json)")
    return json.loads(path.read_text())


class HFCheckpoint:
    """Lazy tensor access by HF name over the safetensors files of `model_dir`."""

    def __init__(self, model_dir: str | os.PathLike):
        self.dir = Path(model_dir)
        index = self.dir / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.weight_map: dict[str, str] = dict(weight_map)
        elif (self.dir / SINGLE).is_file():
            with safe_open(self.dir / SINGLE, framework="pt") as f:
                self.weight_map = {k: SINGLE for k in f.keys()}
        else:
            raise FileNotFoundError(f"{self.dir}: no {SINGLE} or {INDEX}")
        self._open: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _handle(self, file: str):
        if file not in self._open:
            path = self.dir / file
            if not path.is_file():
                raise CheckpointError(f"{path}: listed in {INDEX} but missing")
            self._open[file] = safe_open(path, framework="pt")
        return self._open[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(self.weight_map[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name`; CheckpointError naming it when the checkpoint lacks it."""
        if name not in self.weight_map:
            raise CheckpointError(f"tensor '{name}' is missing from the HF checkpoint {self.dir}")
        return self._handle(self.weight_map[name]).get_tensor(name)

    def close(self) -> None:
        self._open.clear()


class ShardedSafetensorsWriter:
    """Writes named tensors into `model-0000i-of-0000n.safetensors` shards + index under `out_dir`, atomically."""

    def __init__(self, out_dir: str | os.PathLike, max_shard_bytes: int = 2 * 1024**3):
        self.out = Path(out_dir)
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._buffer or any(name in s for s in self._shards):
            raise ValueError(f"tensor '{name}' written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.detach().contiguous().cpu()
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def add_all(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in items:
            self.add(name, tensor)

    def _flush(self) -> None:
        if not self._buffer:
            return
        save_file(self._buffer, str(self.tmp / f"shard-{len(self._shards):05d}.safetensors"), metadata={"format": "pt"})
        self._shards.append(list(self._buffer))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self, extra_files: Optional[dict[str, str]] = None) -> Path:
        """Write the last shard, name the shards, write the index (+ extra text files), rename into place."""
        self._flush()
        n = len(self._shards)
        weight_map = {}
        for i, names in enumerate(self._shards):
            final = SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.rename(self.tmp / f"shard-{i:05d}.safetensors", self.tmp / final)
            weight_map.update({k: final for k in names})
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        for fname, text in (extra_files or {}).items():
            (self.tmp / fname).write_text(text)
        if self.out.exists():
            shutil.rmtree(self.out)
        os.rename(self.tmp, self.out)
        return self.out
