"""`p2o experiment arithmetic`: the P2O Self-Ref arm (tiny Qwen3, 2 epochs x 1 step, a GEPA round in between)
through the real command, the summary and curves, skipping a finished arm and resuming an unfinished one.
The GRPO arms differ from it only in their overrides (checked without a run)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2o.experiment import arithmetic

TINY = ["--model", "tiny-qwen3", "--num-problems", "16", "--eval-size", "4", "--epochs", "2", "--steps-per-epoch",
        "1", "--save-every-steps", "1", "--set", "rollout.max_new_tokens=8", "--set", "gepa.eval_max_tokens=8",
        "--set", "gepa.budget_metric_calls=8", "--set", "gepa.eval_n=2", "--set", "reflection.max_tokens=16",
        # The random tiny model never answers right: without this no optimizer step would ever run, and a
        # checkpoint without Adam state cannot be resumed by the Megatron backend.
        "--set", "train.skip_zero_advantage_rows=false"]


def _run(out, *extra, timeout=420):
    return subprocess.run([sys.executable, "-m", "p2o.cli", "experiment", "arithmetic", "--out", str(out), *TINY,
                           *extra], capture_output=True, text=True, timeout=timeout)


def test_arm_summary_counts_gepa_evaluation_tokens():
    recs = [{"kind": "step", "step": 1, "epoch": 0, "gen_tokens": 100, "reward_mean": 0.25, "zero_adv_frac": 0.5},
            {"kind": "epoch", "step": 1, "epoch": 0, "heldout_greedy": 0.1, "heldout_avg4": 0.05, "hard_count": 3},
            {"kind": "gepa", "step": 1, "epoch": 0, "budget_used": 7, "assigned": 2, "gepa_wall_s": 4.0},
            {"kind": "step", "step": 2, "epoch": 1, "gen_tokens": 50, "reward_mean": 0.75, "zero_adv_frac": 0.0,
             "templated_success": 0.5, "mask_rate": 0.1},
            {"kind": "epoch", "step": 2, "epoch": 1, "heldout_greedy": 0.3, "heldout_avg4": 0.2, "hard_count": 1}]
    s = arithmetic.arm_summary(recs, eval_tokens_per_call=48)
    assert (s["train_tokens"], s["gepa_tokens"], s["tokens"]) == (150, 7 * 48, 150 + 7 * 48)
    assert (s["heldout_greedy_first"], s["heldout_greedy_last"], s["heldout_avg4_last"]) == (0.1, 0.3, 0.2)
    assert (s["reward_first_epoch"], s["reward_last_epoch"], s["zero_adv_frac"]) == (0.25, 0.75, 0.25)
    assert (s["hard_count_last"], s["templated_success"], s["gepa_rounds"], s["assigned"]) == (1, 0.5, 1, 2)


def test_bad_arms_and_changed_settings_are_refused(tmp_path):
    r = _run(tmp_path, "--arms", "grpo-k4,nope", timeout=120)
    assert r.returncode == 2 and "--arms" in r.stderr and "grpo-k8" in r.stderr
    (tmp_path / "experiment.json").write_text(json.dumps({**arithmetic.asdict(arithmetic.Settings()), "epochs": 9}))
    r = _run(tmp_path, "--arms", "grpo-k4", timeout=120)
    assert r.returncode == 2 and "other settings" in r.stderr and "epochs" in r.stderr


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.xdist_group("experiment_arithmetic")
def test_p2o_arm_summary_skip_and_resume(tmp_path, tiny_model_dir):
    out = tmp_path / "exp"
    r = _run(out, "--arms", "p2o-k4")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "p2o-k4" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs if x["kind"] == "step"] == [1, 2]
    epochs = [x for x in recs if x["kind"] == "epoch"]
    assert len(epochs) == 2 and all(x["heldout_size"] == 4 for x in epochs)
    gepa = [x for x in recs if x["kind"] == "gepa"]
    assert len(gepa) == 1 and gepa[0]["budget_used"] > 0  # the GEPA round after epoch 1 ran through the service
    summary = (out / "summary.md").read_text()
    p2o_row = next(line for line in summary.splitlines() if line.startswith("| P2O Self-Ref (K=4) |"))
    # GEPA evaluation tokens = budget_used x eval_n x eval_max_tokens
    assert f"| {gepa[0]['budget_used'] * 2 * 8} |" in p2o_row
    assert (out / "curves" / "reward.png").is_file() and (out / "curves" / "heldout_greedy.png").is_file()

    r = _run(out, "--arms", "p2o-k4")  # finished: skipped, no training process
    assert r.returncode == 0 and "p2o-k4: finished earlier, skipped" in r.stdout

    # An unfinished arm resumes from its latest checkpoint instead of starting over.
    (out / "p2o-k4" / "summary.json").unlink()
    r = _run(out, "--arms", "p2o-k4")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert json.loads((out / "p2o-k4" / "summary.json").read_text())["resumed"] is True
    steps = [json.loads(x) for x in (out / "p2o-k4" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "step"]
    assert [x["step"] for x in steps] == [1, 2]


def test_arms_differ_only_in_their_overrides(tmp_path):
    s = arithmetic.Settings(model="tiny-qwen3", overrides=["rollout.max_new_tokens=8"])
    base = {a: arithmetic.arm_overrides(arithmetic.ARMS[a], s, tmp_path, tmp_path / "p.jsonl", tmp_path / "h.jsonl")
            for a in arithmetic.ARMS}
    shared = [o for o in base["grpo-k4"] if not o.startswith(("p2o.", "rollout.n=", "logging.run_dir="))]
    for name, overrides in base.items():
        assert [o for o in overrides if not o.startswith(("p2o.", "rollout.n=", "logging.run_dir=",
                                                          "reflection.mode="))] == shared
        assert overrides[-1] == f"logging.run_dir={tmp_path / name}"
    assert "rollout.n=8" in base["grpo-k8"] and "p2o.enabled=true" in base["p2o-k4"]
    assert "checkpoint.resume=auto" in shared and "data.eval_source=" + str(tmp_path / "h.jsonl") in shared


@pytest.mark.parametrize("levels", [[], [0, 1]])
def test_problem_files_are_disjoint_and_follow_the_levels(tmp_path, levels):
    from p2o.data.problem import Problem

    def load(path):
        return [Problem.from_dict(json.loads(line)) for line in path.read_text().splitlines()]

    s = arithmetic.Settings(num_problems=40, eval_size=16, levels=levels)
    train_path, heldout_path = arithmetic.write_problem_files(tmp_path, s)
    train, heldout = load(train_path), load(heldout_path)
    assert len(train) == 40 and len(heldout) == 16
    held_q = [p.question for p in heldout]
    assert len(set(held_q)) == 16 and not set(held_q) & {p.question for p in train}
    if levels:
        assert {p.meta["level"] for p in train} <= set(levels)
    else:
        assert all(p.id.startswith("binop") for p in train)
