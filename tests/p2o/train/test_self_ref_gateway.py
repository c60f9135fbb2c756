"""A Self-Ref run's reflection gateway is sized from reflection.*, not from the policy's rollout limits.

`p2o train` with the demo config on the tiny Qwen3, P2O on, Self-Ref reflection, and a policy prompt limit
(rollout.max_prompt_tokens = 150) that the meta-prompt's fixed text alone exceeds. The reflection gateway used
to be built with the rollout limits, so every reflection call was an HTTP 400 counted as `reflection_failed`;
now every call of the GEPA round is answered. Both places the run can serve the frozen model are covered: in
its own process (an HF engine behind a second gateway) and as a `p2o serve --reflection` child process (what a
vLLM policy on CUDA gets, `p2o.rollout.reflection_server`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2o.gepa.core.reflect import META_PROMPT_HEAD, META_PROMPT_MIDDLE, META_PROMPT_TAIL
from p2o.gepa.service.store import read_record

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
PROMPT_LIMIT = 150


@pytest.mark.parametrize("server", ["in_process", "subprocess"])
def test_reflection_calls_are_served_past_the_policy_prompt_limit(tmp_path, tiny_model_dir, server):
    from transformers import AutoTokenizer

    fixed = META_PROMPT_HEAD + META_PROMPT_MIDDLE + META_PROMPT_TAIL
    assert len(AutoTokenizer.from_pretrained(tiny_model_dir)(fixed)["input_ids"]) > PROMPT_LIMIT
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "p2o.cli", "--log-level", "WARNING", "train", "--config", "configs/demo_cpu.yaml",
           "model.path=tiny-qwen3", "rollout.max_new_tokens=16", f"rollout.max_prompt_tokens={PROMPT_LIMIT}",
           "train.steps_per_epoch=1", "data.eval_size=2", "logging.progress=false", "logging.save_rollouts=false",
           f"logging.run_dir={run}", "p2o.min_hard=2", "gepa.budget_metric_calls=12", "gepa.eval_max_tokens=16",
           "gepa.dev_size=2", "gepa.num_parents=1", "gepa.minibatch_size=2", "gepa.eval_n=1", "gepa.solved_at=1.0",
           "reflection.max_tokens=16", f"reflection.server={server}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"
    (result_file,) = (run / "gepa_service" / "jobs").glob("*/result.json")
    result = read_record(result_file, lambda data: data).value
    statuses = [rec["status"] for rec in result["log"]]
    assert statuses and "reflection_failed" not in statuses, result["log"]
    assert result["counters"].get("reflection_failed", 0) == 0
    log_file = run / "reflection_server" / "server.log"
    assert log_file.is_file() == (server == "subprocess")
    if server == "subprocess":  # the child served the run's calls and was stopped with it
        assert "listening on http://127.0.0.1:" in log_file.read_text()
