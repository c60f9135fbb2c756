"""Faults injected into a tiny real training run (`p2o train`, tiny-qwen3, configs/demo_cpu.yaml overrides):
SIGKILL at random points before and after the first checkpoint and in the middle of a checkpoint write,
damaged checkpoints, bad resume settings, an unwritable run directory, a full disk (a small tmpfs; root only).

Each run either completes, or fails with a message naming the fault; a restart resumes from the last
usable checkpoint, and metrics.jsonl never holds a step twice (records of redone work move to
metrics.dropped.jsonl). Kill points are drawn from a seeded generator (P2O_FAULTS_SEED to replay one).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2o.train import checkpoint as ckpt

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults_training")]

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("P2O_FAULTS_SEED", time.time_ns() % 1_000_000))
RNG = random.Random(SEED)


def command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "p2o.cli", "train", "--config", "configs/demo_cpu.yaml", "model.path=tiny-qwen3",
            "p2o.enabled=false", "rollout.max_new_tokens=8", "train.steps_per_epoch=3", "train.epochs=1",
            "data.eval_size=2", "logging.progress=false", "logging.save_rollouts=false", f"logging.run_dir={run_dir}",
            *overrides]


def train(run_dir: Path, *overrides: str, timeout_s: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(run_dir, *overrides), capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


def kill_when(run_dir: Path, condition, *overrides: str, jitter_s: float = 0.0) -> None:
    """Start a run, SIGKILL it (the whole process group) once `condition()` holds (+ a random delay)."""
    proc = subprocess.Popen(command(run_dir, *overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=REPO)
    deadline = time.monotonic() + 600
    try:
        while not condition():
            assert proc.poll() is None, f"the run ended (code {proc.returncode}) before the kill point (seed {SEED})"
            assert time.monotonic() < deadline, f"kill point not reached (seed {SEED})"
            time.sleep(0.002)
        time.sleep(RNG.uniform(0, jitter_s))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    path = run_dir / name
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line torn by the kill
    return out


def step_numbers(run_dir: Path) -> list[int]:
    return [r["step"] for r in records(run_dir) if r["kind"] == "step"]


def complete(run_dir: Path) -> list[str]:
    return [p.name for p in ckpt.complete_checkpoints(run_dir)]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_kill_before_the_first_checkpoint_leaves_no_duplicate_steps(tmp_path):
    run = tmp_path / "run"
    kill_when(run, lambda: len(step_numbers(run)) >= 1, jitter_s=1.0)  # the first checkpoint is at epoch end
    assert complete(run) == [], f"killed too late (seed {SEED})"
    before = [r for r in records(run) if r["kind"] == "step"]
    r = train(run)
    assert r.returncode == 0, f"seed {SEED}\n{r.stderr[-4000:]}"
    assert summary(run)["resumed"] is False
    assert step_numbers(run) == [1, 2, 3]  # redone once, logged once
    dropped = [x for x in records(run, "metrics.dropped.jsonl") if x["kind"] == "step"]
    assert [x["step"] for x in dropped] == [x["step"] for x in before]  # the abandoned records are kept aside


def test_kill_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    run = tmp_path / "run"
    staging = ckpt.checkpoint_root(run) / "step_000002.tmp"
    kill_when(run, lambda: staging.exists(), "checkpoint.save_every_steps=1")
    assert complete(run) == ["step_000001"], f"seed {SEED}: {complete(run)}"
    kept = ckpt.load_state(ckpt.checkpoint_root(run) / "step_000001")  # the previous checkpoint is intact
    assert kept.global_step == 1
    r = train(run, "checkpoint.save_every_steps=1")
    assert r.returncode == 0, f"seed {SEED}\n{r.stderr[-4000:]}"
    assert summary(run)["resumed"] is True and "resumed from" in r.stderr
    assert step_numbers(run) == [1, 2, 3]
    assert not list(ckpt.checkpoint_root(run).glob("*.tmp"))


def test_kill_after_a_checkpoint_then_a_damaged_latest_checkpoint_falls_back(tmp_path):
    run = tmp_path / "run"
    marker = ckpt.checkpoint_root(run) / "step_000002" / ckpt.COMPLETE
    kill_when(run, marker.is_file, "checkpoint.save_every_steps=1", jitter_s=2.0)
    first = [r for r in records(run) if r["kind"] == "step" and r["step"] <= 2]
    r = train(run, "checkpoint.save_every_steps=1")
    assert r.returncode == 0, f"seed {SEED}\n{r.stderr[-4000:]}"
    assert step_numbers(run) == [1, 2, 3]
    assert [x for x in records(run) if x["kind"] == "step"][:2] == first  # nothing written before is lost
    # the newest checkpoint is damaged (a truncated file): the next run warns and uses the previous one
    assert complete(run) == ["step_000002", "step_000003"]
    latest = ckpt.checkpoint_root(run) / "step_000003"
    victim = max((p for p in (latest / "policy").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    r = train(run, "checkpoint.save_every_steps=1", "train.epochs=2")
    assert r.returncode == 0, f"seed {SEED}\n{r.stderr[-4000:]}"
    assert "is unusable" in r.stderr and victim.name in r.stderr and "step_000002" in r.stderr
    assert step_numbers(run) == [1, 2, 3, 4, 5, 6]  # step 3 redone from the step-2 checkpoint, logged once
    # an explicitly named checkpoint with a zero-byte state.json: an error naming the file, no fallback
    named = ckpt.checkpoint_root(run) / "step_000006"
    (named / "state.json").write_bytes(b"")
    r = train(run, f"checkpoint.resume={named}", "train.epochs=3")
    assert r.returncode == 1
    assert str(named / "state.json") in summary(run)["error"]


def test_bad_resume_setting_and_unwritable_run_dir_name_the_key(tmp_path):
    r = train(tmp_path / "run", "checkpoint.resume=autoo", timeout_s=120)
    assert r.returncode == 2 and "checkpoint.resume: got 'autoo'" in r.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = train(blocker / "run", timeout_s=120)
    assert r.returncode == 2 and "logging.run_dir" in r.stderr and str(blocker / "run") in r.stderr


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_named_and_the_staging_dir_removed(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, 6):
        pytest.skip("needs root and a mountable tmpfs")
    try:
        run = mnt / "run"
        r = train(run, "checkpoint.save_every_steps=2")
        assert r.returncode == 1, r.stderr[-3000:]
        error = summary(run)["error"]
        assert "no space left on tmpfs" in error and str(mnt) in error and "MB free" in error, error
        assert not list(ckpt.checkpoint_root(run).glob("*.tmp"))  # the partial save is gone
        assert step_numbers(run) == [1, 2]  # the records written before the failed save are intact
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
