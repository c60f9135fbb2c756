"""`p2o experiment pass-rate` and `p2o experiment lr-study`.

The pass-rate probe is checked on a policy whose answers are known: the tiny Qwen3 fine-tuned to answer
\\boxed{7} when the prompt holds "carefully" and \\boxed{3} otherwise (tests/p2o/gepa/tiny_policy.py). The study
runs end to end on the random tiny model (2 learning rates, 2 epochs x 1 step), skips finished runs, and its
summary's paired change against the initial policy is checked on hand-made results."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from p2o.experiment import lr_study, pass_rate, runs
from tests.conftest import CACHE_DIR
from tests.p2o.gepa.tiny_policy import cached_tiny_policy, question


def _problems():
    from p2o.data.problem import Problem

    return [Problem(id=f"p{i}", question=question(i), answer="3" if i < 4 else "7") for i in range(8)]


@pytest.mark.slow
def test_pass_rate_of_a_policy_with_known_answers(tiny_model_dir):
    from p2o.config import load_config

    policy = cached_tiny_policy(tiny_model_dir, CACHE_DIR)
    plain = load_config(None, [f"model.path={policy}", "p2o.enabled=false", "rollout.max_new_tokens=8",
                              "rollout.temperature=0.5"])
    pr = pass_rate.measure(plain, _problems(), k=4)
    # without "carefully" the policy answers 3: right on p0-p3, wrong on p4-p7
    assert [x["greedy"] for x in pr.per_problem] == [1, 1, 1, 1, 0, 0, 0, 0] and pr.greedy == 0.5
    assert pr.per_problem[0] == {"id": "p0", "greedy": 1, "correct": pr.per_problem[0]["correct"], "n": 4}
    assert pr.pass_at_k == sum(x["correct"] > 0 for x in pr.per_problem) / 8
    assert pr.sampled == sum(x["correct"] for x in pr.per_problem) / 32
    assert pr.signal == sum(0 < x["correct"] < 4 for x in pr.per_problem) / 8 and pr.no_answer <= 0.25
    # the configured prompt reaches the probe: with "carefully" in the user template the answers flip to 7
    careful = load_config(None, [f"model.path={policy}", "p2o.enabled=false", "rollout.max_new_tokens=8",
                                 "prompt.user_template=Work carefully. {question}"])
    assert [x["greedy"] for x in pass_rate.measure(careful, _problems(), k=1).per_problem] == [0] * 4 + [1] * 4


def test_pass_rate_refuses_bad_options(capsys):
    p = argparse.ArgumentParser()
    pass_rate.add_arguments(p)
    assert pass_rate.main(p.parse_args(["--num-problems", "0"])) == 2
    assert "--num-problems" in capsys.readouterr().err
    assert pass_rate.main(p.parse_args(["--set", "reward.fallback=nope"])) == 2
    assert "reward.fallback" in capsys.readouterr().err


def _args(*argv):
    p = argparse.ArgumentParser()
    lr_study.add_arguments(p)
    return p.parse_args(list(argv))


def test_settings_and_overrides():
    with pytest.raises(ValueError, match="--lrs"):
        lr_study.settings_from_args(_args("--lrs", "1e-5,abc"))
    with pytest.raises(ValueError, match="distinct"):
        lr_study.settings_from_args(_args("--lrs", "1e-5,1e-5"))
    s = lr_study.settings_from_args(_args("--lrs", "1e-6,3e-5", "--task", "reward.fallback=answer_is"))
    assert s.lrs == [1e-6, 3e-5] and s.task == ["reward.fallback=answer_is"] and s.levels == [0]
    o = {lr: lr_study.run_overrides(lr, s, runs.Path("o"), runs.Path("p"), runs.Path("h")) for lr in s.lrs}
    # the runs differ only in their learning rate and run directory
    assert [x for x in o[1e-6] if not x.startswith(("optim.lr=", "logging.run_dir="))] == \
           [x for x in o[3e-5] if not x.startswith(("optim.lr=", "logging.run_dir="))]
    assert o[3e-5][-2:] == ["optim.lr=3e-05", "logging.run_dir=o/lr3e-05"]
    assert "p2o.enabled=false" in o[1e-6] and "reward.fallback=answer_is" in o[1e-6]


def test_summary_compares_the_last_epoch_with_the_initial_policy(tmp_path):
    initial = {"greedy": 0.25, "sampled": 0.25,
               "per_problem": [{"id": f"h{i}", "greedy": int(i == 0), "correct": int(i == 0) * 4, "n": 4}
                               for i in range(4)]}
    d = tmp_path / lr_study.run_name(1e-5)
    (d / "evals").mkdir(parents=True)
    (d / "evals" / "heldout_epoch000.jsonl").write_text("".join(
        json.dumps({"id": f"h{i}", "greedy": int(i < 3), "correct": 2 * int(i < 3), "n": 4}) + "\n" for i in range(4)))
    recs = [{"kind": "step", "step": 1, "epoch": 0, "reward_mean": 0.5, "zero_adv_frac": 0.25, "time_step_s": 2.0,
             "truncated_frac": 0.5, "response_len_mean": 30.0, "grad_norm": 0.7, "optimizer_steps": 1},
            {"kind": "epoch", "step": 1, "epoch": 0, "heldout_greedy": 0.75, "heldout_avg4": 0.375}]
    row = lr_study.run_summary(1e-5, recs, tmp_path, initial)
    # greedy: h1, h2 newly right -> +0.5; avg@4: 1.0 -> 0.5 on h0, 0 -> 0.5 on h1, h2 -> (-0.5 + 0.5 + 0.5) / 4
    assert (row["delta_greedy"], row["delta_avg4"]) == (0.5, 0.125)
    assert row["delta_greedy_low"] <= 0.5 <= row["delta_greedy_high"]
    assert (row["signal_frac"], row["greedy_e1"], row["reward_first_epoch"]) == (0.75, 0.75, 0.5)
    md = lr_study.summary_markdown([row], lr_study.Settings(epochs=1), initial)
    assert "| 1e-05 (unfinished) | 1 | 0.25, 0.75 | 0.25, 0.38 | +0.500 [" in md  # no summary.json
    (d / "summary.json").write_text(json.dumps({"status": "ok"}))
    assert "| 1e-05 | 1 |" in lr_study.summary_markdown([lr_study.run_summary(1e-5, recs, tmp_path, initial)],
                                                         lr_study.Settings(epochs=1), initial)


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_lr_study")
def test_study_runs_skips_finished_runs_and_reports(tmp_path, tiny_model_dir):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "p2o.cli", "experiment", "lr-study", "--out", str(out), "--model", "tiny-qwen3",
           "--lrs", "1e-4,1e-5", "--num-problems", "16", "--eval-size", "4", "--epochs", "2", "--steps-per-epoch", "1",
           "--set", "rollout.max_new_tokens=8", "--set", "train.skip_zero_advantage_rows=false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    initial = json.loads((out / "initial.json").read_text())
    assert initial["problems"] == 4 and len(initial["per_problem"]) == 4
    for lr in ("lr1e-04", "lr1e-05"):
        assert runs.run_finished(out / lr) and len(runs.read_eval(out / lr, "heldout", 1)) == 4
        assert f"optim.lr={float(lr[2:]):g}" in (out / f"{lr}.log").read_text()
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("lr,initial_greedy,initial_avg4,")
    assert (out / "curves" / "heldout_avg4.png").stat().st_size > 1000
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.count("finished earlier, skipped") == 2
    r = subprocess.run([*cmd, "--epochs", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "other settings" in r.stderr
