"""Streaming access to HF safetensors checkpoints (single file or sharded with `model.safetensors.index.json`).

Reading: `HFCheckpoint` parses each shard's header once and reads one tensor at a time with plain file reads
(no mmap, so a converted model's pages never sit in this process's RSS).

Writing: `StreamingSafetensorsWriter` is given the plan up front (names, shapes, dtypes in arrival order), so it
can lay out the shards and write each file's header first; every tensor's bytes then go straight to disk as they
arrive, and nothing is buffered. The output directory is built under `<out>.tmp` and renamed into place by
`close()`, so a crash never leaves a half-written checkpoint.

safetensors layout: u64 little-endian header size N, N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]},
"__metadata__": {...}} padded with spaces to 8 bytes, then the tensor bytes (offsets relative to the data start).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


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


def read_header(path: Path) -> tuple[dict, int]:
    """(header dict without __metadata__, byte offset of the data section) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    return header, 8 + n


class HFCheckpoint:
    """Tensor access by HF name over the safetensors files of `model_dir`, one tensor read at a time."""

    def __init__(self, model_dir: str | os.PathLike):
        self.dir = Path(model_dir)
        index = self.dir / INDEX
        if index.is_file():
            self.weight_map: dict[str, str] = dict(json.loads(index.read_text())["weight_map"])
        elif (self.dir / SINGLE).is_file():
            self.weight_map = {k: SINGLE for k in read_header(self.dir / SINGLE)[0]}
        else:
            raise FileNotFoundError(f"{self.dir}: no {SINGLE} or {INDEX}")
        self._headers: dict[str, tuple[dict, int]] = {}

    def names(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _entry(self, name: str) -> tuple[Path, dict, int]:
        if name not in self.weight_map:
            raise CheckpointError(f"tensor '{name}' is missing from the HF checkpoint {self.dir}")
        file = self.weight_map[name]
        path = self.dir / file
        if file not in self._headers:
            if not path.is_file():
                raise CheckpointError(f"{path}: listed in {INDEX} but missing")
            self._headers[file] = read_header(path)
        header, start = self._headers[file]
        if name not in header:
            raise CheckpointError(f"tensor '{name}' is listed in {INDEX} but missing from {path}")
        return path, header[name], start

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[1]["shape"])

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name` (a fresh CPU tensor); CheckpointError naming it when the checkpoint lacks it."""
        path, meta, start = self._entry(name)
        begin, end = meta["data_offsets"]
        dtype = DTYPES.get(meta["dtype"])
        if dtype is None:
            raise CheckpointError(f"tensor '{name}' in {path}: unsupported dtype {meta['dtype']}")
        buf = bytearray(end - begin)
        with open(path, "rb") as f:
            f.seek(start + begin)
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"tensor '{name}' in {path}: file truncated")
        if not buf:
            return torch.empty(meta["shape"], dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(meta["shape"])

    def close(self) -> None:
        self._headers.clear()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


class StreamingSafetensorsWriter:
    """Writes tensors that arrive in `plan` order into shards of at most `max_shard_bytes` (+ index), unbuffered."""

    def __init__(self, out_dir: str | os.PathLike, plan: Sequence[TensorSpec], max_shard_bytes: int = 2 * 1024**3):
        self.out = Path(out_dir)
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        names = [s.name for s in plan]
        if len(set(names)) != len(names):
            raise ValueError(f"tensor names repeat in the plan: {sorted({n for n in names if names.count(n) > 1})}")
        self.shards: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in plan:
            if self.shards[-1] and size + spec.nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(spec)
            size += spec.nbytes
        n = len(self.shards)
        self.files = [SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.total_bytes = sum(s.nbytes for s in plan)
        self._shard, self._pos, self._fh = -1, 0, None

    def _open_next(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._shard += 1
        self._pos = 0
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for spec in self.shards[self._shard]:
            header[spec.name] = {"dtype": DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                                 "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._fh = open(self.tmp / self.files[self._shard], "wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor of the plan (name, shape and dtype must match it)."""
        if self._fh is None or self._pos == len(self.shards[self._shard]):
            if self._shard + 1 >= len(self.shards):
                raise ValueError(f"tensor '{name}' is beyond the plan")
            self._open_next()
        spec = self.shards[self._shard][self._pos]
        if (name, tuple(tensor.shape), tensor.dtype) != (spec.name, spec.shape, spec.dtype):
            raise ValueError(f"tensor '{name}' {tuple(tensor.shape)} {tensor.dtype} arrived where the plan expects "
                             f"'{spec.name}' {spec.shape} {spec.dtype}")
        t = tensor.detach().to("cpu").contiguous()
        if t.numel():
            self._fh.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        self._pos += 1

    def add_all(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in items:
            self.add(name, tensor)

    def close(self, extra_files: dict[str, str] | None = None) -> Path:
        """Check every planned tensor arrived, write the index (+ extra text files), rename into place."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        written = sum(len(s) for s in self.shards[: self._shard]) + self._pos
        planned = sum(len(s) for s in self.shards)
        if written != planned:
            raise ValueError(f"only {written} of {planned} planned tensors were written to {self.out}")
        if len(self.shards) > 1:
            weight_map = {spec.name: f for f, shard in zip(self.files, self.shards, strict=True) for spec in shard}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        for fname, text in (extra_files or {}).items():
            (self.tmp / fname).write_text(text)
        if self.out.exists():
            shutil.rmtree(self.out)
        os.rename(self.tmp, self.out)
        return self.out
