"""Metric sinks: jsonl always, TensorBoard and W&B when enabled. One record per call, flat keys.

    with MetricsLogger(run_dir, tensorboard=False, wandb=False) as m:
        m.log({"reward/mean": 0.3, "time/step_s": 1.2}, step=5, kind="step")
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2o.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
DROPPED_FILE = "metrics.dropped.jsonl"
"""Records a resume cut from metrics.jsonl (work that is redone after the checkpoint)."""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


class MetricsLogger:
    """Appends `{"kind", "step", "time", **metrics}` lines to run_dir/metrics.jsonl (flushed every record)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False, wandb: bool = False,
                 run_name: str | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                log.warning("logging.tensorboard=true but tensorboard is not installed (pip install p2o[logging])")
        if wandb:
            try:
                import wandb as wb
                self._wandb = wb.init(project=os.environ.get("WANDB_PROJECT", "p2o"), name=run_name,
                                      dir=str(run_dir), resume="allow")
            except ImportError:
                log.warning("logging.wandb=true but wandb is not installed (pip install p2o[logging])")

    def log(self, metrics: dict[str, Any], step: int, kind: str = "step") -> None:
        record = {"kind": kind, "step": step, "time": time.time(), **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numeric = {f"{kind}/{k}": v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(run_dir: str | Path, kind: str | None = None) -> Iterator[dict]:
    """Records of a run's metrics.jsonl (optionally of one kind); a torn last line is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or rec.get("kind") == kind:
                yield rec


def metrics_size(run_dir: str | Path) -> int:
    """Bytes in run_dir/metrics.jsonl (0 when absent); records are flushed one by one, so this is exact."""
    path = Path(run_dir) / METRICS_FILE
    return path.stat().st_size if path.is_file() else 0


def truncate_metrics(run_dir: str | Path, keep_until_step: int, size_bytes: int = -1) -> int:
    """Cut metrics.jsonl back to what it held at a checkpoint, so a resumed run writes no duplicate records.

    `size_bytes >= 0` (the size recorded in the checkpoint) keeps exactly that prefix; otherwise records
    with `step <= keep_until_step` are kept. A fresh start after a kill before any checkpoint is
    `truncate_metrics(run_dir, 0, 0)`. Dropped records (and a torn last line) are appended to
    metrics.dropped.jsonl, not lost. Returns the number of lines dropped.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if 0 <= size_bytes <= len(data) and (size_bytes == 0 or data[size_bytes - 1:size_bytes] == b"\n"):
        kept, dropped = data[:size_bytes], data[size_bytes:]
    else:
        keep, drop = [], []
        for line in data.splitlines(keepends=True):
            try:
                rec = json.loads(line)
                ok = line.endswith(b"\n") and isinstance(rec, dict) and rec.get("step", 0) <= keep_until_step
            except ValueError:
                ok = False
            (keep if ok else drop).append(line)
        kept, dropped = b"".join(keep), b"".join(drop)
    if not dropped:
        return 0
    if not dropped.endswith(b"\n"):
        dropped += b"\n"
    n = dropped.count(b"\n")
    with (path.parent / DROPPED_FILE).open("ab") as f:
        f.write(dropped)
    atomic_write_bytes(path, kept)
    log.warning("metrics.jsonl: %d record(s) written after the resumed point (step %d) moved to %s", n,
                keep_until_step, DROPPED_FILE)
    return n
