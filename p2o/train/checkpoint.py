"""Run checkpoints: one directory per save, complete or absent, checked before use.

    run_dir/checkpoints/step_000012/
        policy/        the backend's model + optimizer state (Megatron dist-checkpoint)
        state.json     loop state: epoch/step counters, policy version, RNG states, data position,
                       hard store, template assignment, GEPA job reference, metrics.jsonl size at save
        MANIFEST.json  size of every file, sha256 of state.json
        COMPLETE       written last

A save goes to `step_N.tmp/` and is renamed into place only after every rank has written its part, so a
kill at any moment leaves either the previous complete checkpoint or the new one. `latest_checkpoint`
ignores anything without COMPLETE.

Before a checkpoint is used, `verify` checks it against its manifest (a truncated or missing file, a
zero-byte or edited state.json); `CheckpointError` names the file and the reason. `resume_candidates`
turns `checkpoint.resume` into the checkpoints to try (newest first for `auto`, so the loop falls back to
the previous complete one when the latest is damaged). A save that fails for lack of space is reported
as "no space left on <device> ... need ~N MB", and its staging directory is removed (`saving`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from p2o.gepa.service.client import SubmittedJob

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
MANIFEST = "MANIFEST.json"
STATE = "state.json"
LOW_SPACE_BYTES = 64 * 1024 * 1024
"""A failed save with less free space than this on its file system is reported as a full disk."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used; the message names the file (or key) and the reason."""


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
    gepa_job: SubmittedJob | None = None
    """Pending GEPA job (state.json holds it as an object, read back by `__post_init__`)."""
    python_rng: Any = None
    torch_rng: list[int] | None = None
    metrics_bytes: int = -1
    """Size of run_dir/metrics.jsonl when the checkpoint was taken (-1: unknown); a resume cuts it back to this."""

    def __post_init__(self) -> None:
        if isinstance(self.gepa_job, dict):
            self.gepa_job = SubmittedJob.from_dict(self.gepa_job)

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


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _files(root: Path) -> dict[str, int]:
    """Relative path -> size of every file under `root` (manifest and marker excluded)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, COMPLETE)}


def commit(run_dir: str | Path, global_step: int, state: LoopState, keep_last: int) -> Path:
    """Rank 0, after every rank has written policy/: write state.json, the manifest and COMPLETE, rename,
    prune old saves."""
    tmp = staging_dir(run_dir, global_step)
    tmp.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(asdict(state)).encode()
    _write(tmp / STATE, payload)
    manifest = {"files": _files(tmp), "state_sha256": hashlib.sha256(payload).hexdigest()}
    _write(tmp / MANIFEST, json.dumps(manifest, sort_keys=True).encode())
    _write(tmp / COMPLETE, b"ok\n")
    _fsync(tmp)
    final = checkpoint_root(run_dir) / f"step_{global_step:06d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync(final.parent)
    complete = sorted(p for p in checkpoint_root(run_dir).glob("step_*") if (p / COMPLETE).is_file())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", final)
    return final


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp") and (p / COMPLETE).is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def resume_candidates(mode: str, run_dir: str | Path) -> tuple[list[Path], bool]:
    """(checkpoints to try in order, explicit?) for `checkpoint.resume`; CheckpointError naming the key.

    auto: every complete checkpoint in run_dir, newest first (none: []); none: []; anything else must be
    the path of a checkpoint directory (explicit: no fallback)."""
    if mode == "none":
        return [], False
    if mode == "auto":
        return list(reversed(complete_checkpoints(run_dir))), False
    path = Path(mode).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint.resume: got {mode!r}; expected 'auto', 'none' or the path of a "
                              f"checkpoint directory (no directory {path})")
    return [path], True


def verify(path: str | Path) -> None:
    """Check a checkpoint directory against its manifest; CheckpointError naming the file and the reason."""
    p = Path(path)
    if not (p / COMPLETE).is_file():
        raise CheckpointError(f"{p}: not a complete checkpoint (no {COMPLETE} marker)")
    manifest_path = p / MANIFEST
    if not manifest_path.is_file():  # written before manifests existed: state.json is still parsed
        return
    try:
        manifest = json.loads(manifest_path.read_bytes())
        files, digest = dict(manifest["files"]), str(manifest["state_sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({type(e).__name__}: {e})") from None
    for rel, size in files.items():
        f = p / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (the manifest lists {size} bytes)")
        actual = f.stat().st_size
        if actual != size:
            raise CheckpointError(f"{f}: {actual} bytes, the manifest says {size} (truncated or overwritten)")
    state = (p / STATE).read_bytes()
    if hashlib.sha256(state).hexdigest() != digest:
        raise CheckpointError(f"{p / STATE}: checksum mismatch (modified after the checkpoint was written)")


def load_state(path: str | Path) -> LoopState:
    """The loop state of a verified checkpoint; CheckpointError naming the file (zero bytes, truncated, ...)."""
    p = Path(path)
    verify(p)
    f = p / STATE
    try:
        raw = f.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing") from None
    if not raw.strip():
        raise CheckpointError(f"{f}: empty file ({len(raw)} bytes)")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e}); truncated?") from None
    known = {x.name for x in fields(LoopState)}
    if not isinstance(data, dict) or set(data) - known or "global_step" not in data:
        got = sorted(set(data) - known) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{f}: not a loop state (unexpected content: {got})")
    try:
        return LoopState(**data)
    except ValueError as e:  # e.g. a pending GEPA job record without its fields
        raise CheckpointError(f"{f}: {e}") from None


def clean_staging(run_dir: str | Path) -> list[Path]:
    """Remove `step_*.tmp` directories left by saves that never committed (rank 0, before training)."""
    removed = []
    for tmp in checkpoint_root(run_dir).glob("step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d unfinished checkpoint save(s): %s", len(removed), ", ".join(p.name for p in removed))
    return removed


# ---------------------------------------------------------------------------------------------- disk full
def _tree_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def device_of(path: Path) -> tuple[str, str]:
    """(device, mount point) of the file system holding `path` (from /proc/self/mounts when available)."""
    target = path.resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        dev = target.stat().st_dev
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [(parts[0], parts[1].replace("\\040", " ")) for parts in (line.split() for line in f)
                      if len(parts) >= 2]
    except OSError:
        return "?", str(target)
    best = ("?", str(target))
    for device, mount in mounts:
        inside = str(target) == mount or str(target).startswith(mount.rstrip("/") + "/")
        with contextlib.suppress(OSError):
            if inside and os.stat(mount).st_dev == dev and (best[0] == "?" or len(mount) >= len(best[1])):
                best = (device, mount)
    return best


def _is_enospc(e: BaseException) -> bool:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def disk_full_message(tmp: Path, run_dir: Path, written: int) -> str:
    """'no space left on DEVICE ... (need ~N MB)': N is the size of the last complete checkpoint, else at
    least what this save had written when it failed."""
    dev, mount = device_of(tmp)
    free = shutil.disk_usage(mount if Path(mount).exists() else run_dir).free
    last = latest_checkpoint(run_dir)
    need = _tree_bytes(last) if last is not None else written
    estimate = f"need ~{need / 2**20:.0f} MB" if last is not None else f"need more than {need / 2**20:.0f} MB"
    return (f"no space left on {dev} (mounted at {mount}) while writing checkpoint {tmp}: {estimate}, "
            f"{free / 2**20:.0f} MB free; the partial checkpoint was removed; free space or move logging.run_dir")


@contextlib.contextmanager
def saving(run_dir: str | Path, global_step: int, is_rank0: bool) -> Iterator[Path]:
    """Wrap a save into `staging_dir`: on failure rank 0 removes the staging directory, and a failure for
    lack of space becomes a CheckpointError that says so (device, space needed, space free)."""
    tmp = staging_dir(run_dir, global_step)
    try:
        yield tmp
    except BaseException as e:
        written = _tree_bytes(tmp) if tmp.exists() else 0
        full = _is_enospc(e)
        if not full and not isinstance(e, KeyboardInterrupt):
            with contextlib.suppress(OSError):
                full = shutil.disk_usage(checkpoint_root(run_dir)).free < LOW_SPACE_BYTES
        message = disk_full_message(tmp, Path(run_dir), written) if full else ""
        if is_rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise CheckpointError(message) from e
        raise


# ----------------------------------------------------------------------------- Hugging Face export
HF_EXPORT = "hf_export"
"""run_dir/hf_export/: the trained policy as an HF model directory (`checkpoint.export_hf`, `p2o convert export`)."""


def export_at_run_end(cfg, rt) -> Path | None:
    """With `checkpoint.export_hf`: write the final policy to <run_dir>/hf_export/ (safetensors in the training
    dtype, config.json, generation config, tokenizer files; built in hf_export.tmp/ by rank 0 and renamed).
    Collective: every rank calls it after the last epoch. Returns the directory on rank 0, else None."""
    if not cfg.checkpoint.export_hf:
        return None
    from megatron_bridge.convert import write_hf_dir

    out = Path(rt.run_dir) / HF_EXPORT
    path = write_hf_dir(rt.policy.export_weights(cfg.rollout.weight_bucket_bytes), rt.model_dir, out)
    rt.control.barrier()
    if path is not None:
        log.info("Hugging Face export of the final policy: %s", path)
    return path


def checkpoint_at_step(run_dir: str | Path, step: int | None) -> Path:
    """The complete checkpoint of `step` (None: the newest), verified against its manifest; CheckpointError else."""
    if step is None:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise CheckpointError(f"{checkpoint_root(run_dir)}: no complete checkpoint")
    else:
        path = checkpoint_root(run_dir) / f"step_{step:06d}"
        if not (path / COMPLETE).is_file():
            have = ", ".join(p.name for p in complete_checkpoints(run_dir)) or "none"
            raise CheckpointError(f"{path}: no complete checkpoint of step {step} (complete: {have})")
    verify(path)
    return path


def export_checkpoint(run_dir: str | Path, out: str | Path | None = None, step: int | None = None,
                      tp: int = 1, pp: int = 1) -> Path:
    """`p2o convert export`: a saved checkpoint of a run (its policy weights) as an HF model directory, the same
    files `checkpoint.export_hf` writes at the end of a run (default `out`: <run_dir>/hf_export). The model's
    config and tokenizer come from the run's model (run_dir/config.yaml's model.path); `tp` x `pp` local ranks
    do the conversion (the checkpoint reshards to any layout)."""
    from megatron_bridge.convert import megatron_to_hf
    from p2o.config import load_unresolved
    from p2o.models import resolve_model_dir

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{config}: missing (the run directory of a `p2o train` run has it)")
    cfg = load_unresolved(str(config))
    path = checkpoint_at_step(run_dir, step)
    model_dir = resolve_model_dir(cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed)
    out = Path(out) if out else run_dir / HF_EXPORT
    return megatron_to_hf(path / "policy", out, tp, pp, hf_config=model_dir, dtype=str(cfg.model.dtype),
                          make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by)
