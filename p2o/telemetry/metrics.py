"""Metric sinks: jsonl always, TensorBoard and W&B when enabled. One record per call, flat keys.

    with MetricsLogger(run_dir, tensorboard=False, wandb=False, config=to_dict(cfg)) as m:
        m.log({"reward_mean": 0.3, "time_step_s": 1.2}, step=5, kind="step")

TensorBoard and W&B receive the same scalars, named `{kind}/{key}` (kind: step | epoch | gepa), at the run's
global step. TensorBoard writes run_dir/tensorboard/; a resume (`truncate`) reopens it with `purge_step` so the
records redone after the checkpoint replace the abandoned attempt's. W&B: the run id is kept in
run_dir/wandb_run_id, so every attempt of a run (requeues, `checkpoint.resume`) continues the same W&B run
(`resume="allow"`); its config is the resolved run config. W&B ignores a step below the last one it recorded:
the records a resume redoes keep the abandoned attempt's values there (metrics.jsonl and TensorBoard are exact).
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from p2o.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
DROPPED_FILE = "metrics.dropped.jsonl"
"""Records a resume cut from metrics.jsonl (work that is redone after the checkpoint)."""
WANDB_ID_FILE = "wandb_run_id"
"""The run's W&B run id (one line), written by its first attempt and reused by every later one."""
TENSORBOARD_DIR = "tensorboard"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def wandb_run_id(run_dir: str | Path) -> str:
    """The run's W&B id from run_dir/wandb_run_id, created (random, 16 hex digits, atomically) on first use."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            if not run_id.isalnum() or len(run_id) > 64:
                raise ValueError(f"{path}: got {run_id!r}; expected a W&B run id (letters and digits, <= 64)")
            return run_id
    run_id = secrets.token_hex(8)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n")
    tmp.replace(path)
    return run_id


class MetricsLogger:
    """Appends `{"kind", "step", "time", **metrics}` lines to run_dir/metrics.jsonl (flushed every record), and the
    numeric values to TensorBoard / W&B when enabled (`config`: the resolved run config, recorded by W&B)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False, wandb: bool = False,
                 run_name: str | None = None, config: Mapping[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = self._wandb = None
        self._wandb_step = -1
        if tensorboard:
            self._tb = self._tensorboard_writer()
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                log.warning("logging.wandb=true but wandb is not installed (pip install p2o[logging])")
            else:
                self._wandb = wb.init(project=os.environ.get("WANDB_PROJECT", "p2o"), name=run_name,
                                      id=wandb_run_id(self.run_dir), resume="allow", dir=str(self.run_dir))
                if config is not None:  # a resumed run may carry changed overrides
                    self._wandb.config.update(dict(config), allow_val_change=True)
                self._wandb_step = getattr(self._wandb, "step", 0)  # a resumed run's next step
                log.info("W&B run %s (id %s)", getattr(self._wandb, "name", run_name), self._wandb.id)

    def _tensorboard_writer(self, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("logging.tensorboard=true but tensorboard is not installed (pip install p2o[logging])")
            return None
        return SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)

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
            if step < self._wandb_step:
                log.debug("W&B: step %d is below the run's last step %d (redone after a resume): not sent", step,
                          self._wandb_step)
            else:
                self._wandb.log(numeric, step=step)
                self._wandb_step = step

    def truncate(self, step: int, size_bytes: int = -1) -> int:
        """Back to a checkpoint at `step` (see `truncate_metrics`): metrics.jsonl cut, TensorBoard reopened to
        purge the events after `step`; the W&B run continues. Returns the number of records dropped."""
        self._file.close()
        try:
            dropped = truncate_metrics(self.run_dir, step, size_bytes)
        finally:
            self._file = self.path.open("a", encoding="utf-8")
        if self._tb is not None:
            self._tb.close()
            self._tb = self._tensorboard_writer(purge_step=step + 1)
        return dropped

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
