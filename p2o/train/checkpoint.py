"""Run checkpoints: one directory per save, complete or absent.

    run_dir/checkpoints/step_000012/
        policy/        the backend's model + optimizer state (Megatron dist-checkpoint)
        state.json     loop state: epoch/step counters, policy version, RNG states, data position,
                       hard store, template assignment, GEPA job reference
        COMPLETE       written last

A save goes to `step_N.tmp/` and is renamed into place only after every rank has written its part, so a
kill at any moment leaves either the previous complete checkpoint or the new one. `latest_checkpoint`
ignores anything without COMPLETE.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


@dataclass
class LoopState:
    """Everything besides model/optimizer that a resumed run needs to continue exactly."""

    epoch: int = 0
    step_in_epoch: int = 0
    """Steps of `epoch` already done."""
    global_step: int = 0
    policy_version: int = 0
    epoch_done: bool = False
    """The epoch's steps are done but its end (GEPA, held-out eval) is not."""
    hard_store: dict = field(default_factory=dict)
    """Hard samples mined so far in `epoch` (HardStore.to_dict())."""
    prev_hard: list[str] = field(default_factory=list)
    """Problem ids that were hard in the previous epoch (they get templates when assigned)."""
    assignment: dict[str, list[str]] = field(default_factory=dict)
    """problem id -> K templates, from the last finished GEPA round."""
    assignment_version: int = -1
    """Policy version the assignment was computed for (-1: none)."""
    gepa_job: dict | None = None
    """Pending GEPA job: {"job_id", "epoch", "policy_version", "hard_ids"}."""
    python_rng: Any = None
    torch_rng: list[int] | None = None

    def capture_rng(self) -> None:
        version, internal, gauss = random.getstate()
        self.python_rng = list(internal), version, gauss
        self.torch_rng = torch.get_rng_state().tolist()

    def restore_rng(self) -> None:
        if self.python_rng is not None:
            internal, version, gauss = self.python_rng
            random.setstate((version, tuple(internal), gauss))
        if self.torch_rng is not None:
            torch.set_rng_state(torch.tensor(self.torch_rng, dtype=torch.uint8))


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def staging_dir(run_dir: str | Path, global_step: int) -> Path:
    """Where all ranks write a save before it is committed (same path on every rank)."""
    return checkpoint_root(run_dir) / f"step_{global_step:06d}.tmp"


def commit(run_dir: str | Path, global_step: int, state: LoopState, keep_last: int) -> Path:
    """Rank 0, after every rank has written policy/: write state.json + COMPLETE, rename, prune old saves."""
    tmp = staging_dir(run_dir, global_step)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    (tmp / COMPLETE).write_text("ok\n")
    final = checkpoint_root(run_dir) / f"step_{global_step:06d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    complete = sorted(p for p in checkpoint_root(run_dir).glob("step_*") if (p / COMPLETE).is_file())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", final)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp") and (p / COMPLETE).is_file())
    return complete[-1] if complete else None


def load_state(path: str | Path) -> LoopState:
    p = Path(path)
    if not (p / COMPLETE).is_file():
        raise FileNotFoundError(f"{p}: not a complete checkpoint (no {COMPLETE} marker)")
    return LoopState(**json.loads((p / "state.json").read_text()))
