"""A run checkpointed before its first optimizer step (all rewards 0: nothing to learn yet) resumes.

Megatron writes no Adam moments for parameters that never took a step, and drops a zero shared step;
megatron_bridge materialises a fresh Adam state at save time and restores step 0 at load time.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


def _train(run_dir: Path, epochs: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "p2o.cli", "train", "--config", "configs/demo_cpu.yaml", "model.path=tiny-qwen3",
           "p2o.enabled=false", "rollout.max_new_tokens=8", "train.steps_per_epoch=1", f"train.epochs={epochs}",
           "data.eval_size=2", "logging.progress=false", f"logging.run_dir={run_dir}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def test_resume_from_a_checkpoint_without_optimizer_steps(tmp_path):
    run = tmp_path / "run"
    first = _train(run, epochs=1)
    assert first.returncode == 0, first.stderr[-3000:]
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in x]
    assert steps and all(s["optimizer_steps"] == 0 for s in steps)
    second = _train(run, epochs=2)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["resumed"] is True and summary["steps"] == 2
