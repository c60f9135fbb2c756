"""Where a run's records go: metrics.jsonl (and TensorBoard / W&B), the log line per step, progress bars, GPU
samples and the saved rollouts. Rank 0 writes; on the other ranks every call is a no-op."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from p2o.config import RunConfig
from p2o.train.rows import TrainRow

log = logging.getLogger(__name__)

SHOWN = ("reward_mean", "hard_count", "templated_share", "mask_rate", "loss", "time_step_s", "heldout_greedy",
         "pool_size", "assigned")
"""The metrics repeated in the log line (all of them go to metrics.jsonl)."""
ROLLOUT_KEYS = ("problem_id", "group", "template", "reward", "verdict_reason", "advantage", "finish_reason",
                "policy_version", "text")
"""The fields of a row kept in rollouts/step_N.jsonl."""


class MetricsSink(Protocol):
    def log(self, metrics: dict[str, Any], step: int, kind: str = "step") -> None:
        """Record `metrics` at `step`; `kind` is "step", "epoch" or "gepa"."""

    def truncate(self, step: int, size_bytes: int = -1) -> None:
        """Cut the records back to a checkpoint: its recorded size in bytes, else its step."""

    def size_bytes(self) -> int:
        """The size of metrics.jsonl now (kept in a checkpoint for `truncate`)."""

    def progress(self, desc: str, total: int) -> Any:
        """A tqdm-like progress bar for a phase (the caller closes it)."""

    def gpu(self) -> dict[str, float]:
        """This moment's GPU telemetry (empty without GPUs)."""

    def save_rollouts(self, rows: list[TrainRow], step: int) -> None:
        """Keep the step's rollouts (when `logging.save_rollouts`)."""


class RunMetrics:
    """`MetricsSink` of a training run: rank 0 owns the `MetricsLogger` (metrics.jsonl + TensorBoard/W&B) and the
    GPU sampler; the others pass None and record nothing."""

    def __init__(self, cfg: RunConfig, run_dir: Path, logger: Any | None = None, gpu: Any | None = None):
        self.cfg, self.run_dir, self.logger, self.gpu_sampler = cfg, run_dir, logger, gpu

    def log(self, metrics: dict[str, Any], step: int, kind: str = "step") -> None:
        if self.logger is None:
            return
        self.logger.log(metrics, step, kind)
        shown = {k: metrics[k] for k in SHOWN if isinstance(metrics.get(k), (int, float))}
        where = f"epoch {metrics['epoch']}" if kind != "step" and "epoch" in metrics else f"{kind} {step}"
        log.info("%s: %s", where, " ".join(f"{k}={v:.4g}" for k, v in shown.items()))

    def truncate(self, step: int, size_bytes: int = -1) -> None:
        """See `p2o.telemetry.metrics.MetricsLogger.truncate`: metrics.jsonl cut back to the checkpoint."""
        if self.logger is None:
            return
        self.logger.truncate(step, size_bytes)  # TensorBoard purges the redone steps; the W&B run continues

    def size_bytes(self) -> int:
        from p2o.telemetry.metrics import metrics_size

        return metrics_size(self.run_dir) if self.logger is not None else 0

    def progress(self, desc: str, total: int) -> Any:
        from p2o.telemetry.progress import make_bar

        return make_bar(desc, total, self.logger is not None and self.cfg.logging.progress)

    def gpu(self) -> dict[str, float]:
        return self.gpu_sampler.sample() if self.gpu_sampler is not None else {}

    def save_rollouts(self, rows: list[TrainRow], step: int) -> None:
        """rollouts/step_N.jsonl: problem, template, reward, verdict, text of every rollout."""
        if self.logger is None or not self.cfg.logging.save_rollouts:
            return
        from p2o.jsonl import write_jsonl

        write_jsonl(self.run_dir / "rollouts" / f"step_{step:06d}.jsonl",
                    ({k: getattr(r, k) for k in ROLLOUT_KEYS} for r in rows))

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
