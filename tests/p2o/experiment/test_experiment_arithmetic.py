"""`p2o experiment arithmetic`: GRPO and P2O Self-Ref arms with two seeds each (tiny Qwen3, 2 epochs x 1 step, a
GEPA round in between) through the real command, the summary with intervals over seeds and the paired
comparison, skipping finished runs and resuming an unfinished one. The report's statistics are checked on
hand-made run directories against hand-computed values; the arms differ only in their overrides, the seeds
only in theirs (both checked without a run)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from p2o.experiment import arithmetic, runs
from p2o.experiment.stats import fmt_interval, t_interval

TINY = ["--model", "tiny-qwen3", "--num-problems", "16", "--eval-size", "4", "--epochs", "2", "--steps-per-epoch",
        "1", "--save-every-steps", "1", "--levels", "0", "--set", "rollout.max_new_tokens=8",
        "--set", "gepa.eval_max_tokens=8", "--set", "gepa.budget_metric_calls=8", "--set", "gepa.eval_n=2",
        "--set", "reflection.max_tokens=16",
        # The random tiny model never answers right: without this no optimizer step would ever run, and a
        # checkpoint without Adam state cannot be resumed by the Megatron backend.
        "--set", "train.skip_zero_advantage_rows=false"]


def _run(out, *extra, timeout=900):
    return subprocess.run([sys.executable, "-m", "p2o.cli", "experiment", "arithmetic", "--out", str(out), *TINY,
                           *extra], capture_output=True, text=True, timeout=timeout)


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_arm_summary_counts_gepa_tokens_and_pools_hard_sample_success():
    recs = [{"kind": "step", "step": 1, "epoch": 0, "gen_tokens": 100, "reward_mean": 0.25, "zero_adv_frac": 0.5},
            {"kind": "epoch", "step": 1, "epoch": 0, "heldout_greedy": 0.1, "heldout_avg4": 0.05, "hard_count": 3},
            {"kind": "gepa", "step": 1, "epoch": 0, "budget_used": 7, "assigned": 2, "gepa_wall_s": 4.0,
             "iteration": 3, "covered_templates": 1},
            {"kind": "step", "step": 2, "epoch": 1, "gen_tokens": 50, "reward_mean": 0.75, "zero_adv_frac": 0.0,
             "templated_success": 0.5, "mask_rate": 0.1},
            {"kind": "epoch", "step": 2, "epoch": 1, "heldout_greedy": 0.3, "heldout_avg4": 0.2, "hard_count": 1,
             "hard_plain_greedy": 0.5, "hard_plain_avg4": 0.25, "hard_plain_size": 2}]
    rollouts = [{"step": 1, "epoch": 0, "problem_id": p, "template": "", "reward": r}
                for p, r in (("a", 0.0), ("a", 1.0), ("b", 0.0), ("b", 0.0))]
    rollouts += [{"step": 2, "epoch": 1, "problem_id": p, "template": "Z", "reward": r} for p, r in (("a", 1.0), ("b", 0.0))]
    s = arithmetic.arm_summary(recs, eval_tokens_per_call=48, rollouts=rollouts)
    assert (s["train_tokens"], s["gepa_tokens"], s["tokens"]) == (150, 7 * 48, 150 + 7 * 48)
    assert (s["heldout_greedy"], s["heldout_avg4"], s["heldout_greedy_last"]) == ([0.1, 0.3], [0.05, 0.2], 0.3)
    assert (s["reward_first_epoch"], s["reward_last_epoch"], s["signal_frac"]) == (0.25, 0.75, 0.75)
    assert (s["hard_count_last"], s["templated_success"], s["gepa_rounds"], s["assigned"]) == (1, 0.5, 1, 2)
    # hard samples a, b: 1 of 4 plain rollouts right when mined; after their templated epoch 0.5 greedy, 0.25 sampled
    assert (s["hard_plain_before"], s["hard_plain_after_greedy"], s["hard_plain_after_sampled"]) == (0.25, 0.5, 0.25)
    assert (s["templated_problems"], s["gepa_rounds_with_template"]) == (2, 1)
    grpo = arithmetic.arm_summary(recs[:2], eval_tokens_per_call=48, rollouts=rollouts[:4])
    assert grpo["hard_plain_before"] is None and grpo["templated_success"] is None and grpo["gepa_tokens"] == 0
    assert (grpo["templated_problems"], grpo["gepa_rounds_with_template"]) == (None, 0)
    # a P2O run whose GEPA round kept no template: no templated rollout, counted as 0 problems (not missing)
    empty = [*recs[:2], {**recs[2], "covered_templates": 0}, {**recs[3], "templated_success": None}, recs[4]]
    none = arithmetic.arm_summary(empty, eval_tokens_per_call=48, rollouts=rollouts[:4])
    assert (none["templated_problems"], none["gepa_rounds_with_template"], none["templated_success"]) == (0, 0, None)


def test_control_is_grpo_plain_success_on_the_templated_problems_in_their_epoch():
    recs = [{"kind": "gepa", "step": 1, "epoch": 0, "budget_used": 1, "covered_templates": 1}]
    rollouts = [{"step": 2, "epoch": 1, "problem_id": "a", "template": "Z", "reward": 0.0},
                {"step": 2, "epoch": 1, "problem_id": "b", "template": "", "reward": 1.0}]  # b: not templated
    control = [{"step": 2, "epoch": 1, "problem_id": p, "template": "", "reward": r}
               for p, r in (("a", 1.0), ("a", 1.0), ("a", 0.0), ("b", 0.0), ("b", 0.0))]
    control += [{"step": 1, "epoch": 0, "problem_id": "a", "template": "", "reward": 0.0}]  # another epoch
    s = arithmetic.arm_summary(recs, 1, rollouts, control_rollouts=control)
    assert s["hard_plain_control"] == 2 / 3
    assert arithmetic.arm_summary(recs, 1, rollouts)["hard_plain_control"] is None
    assert arithmetic.control_arm("p2o-k4", arithmetic.DEFAULT_ARMS) == "grpo-k4"
    assert arithmetic.control_arm("p2o-k4-nodistill", ["grpo-k8", "p2o-k4-nodistill", "grpo-k4"]) == "grpo-k4"
    assert arithmetic.control_arm("p2o-k4", ["grpo-k8", "p2o-k4"]) is None
    assert arithmetic.control_arm("grpo-k4", arithmetic.DEFAULT_ARMS) is None


def test_summary_cell_says_how_many_seeds_have_the_value():
    assert arithmetic._cell([0.2, None, 0.4], "templated_success").endswith("(2 of 3 seeds)")
    m, lo, hi = t_interval([0.2, 0.4])
    assert arithmetic._cell([0.2, None, 0.4], "templated_success").startswith(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
    assert "seeds" not in arithmetic._cell([0.2, 0.3, 0.4], "templated_success")
    assert arithmetic._cell([None, None], "templated_success") == "-"
    assert arithmetic._cell([0, 2, 1], "templated_problems").startswith("1 [")


def test_intervals_print_no_negative_zero():
    assert fmt_interval(0.6667, -0.4, 2.1, 0) == "1 [0, 2]"
    assert fmt_interval(-0.0004, -0.0123, 0.5, 3) == "0.000 [-0.012, 0.500]"
    assert (fmt_interval(None, None, None), fmt_interval(0.25, None, None)) == ("-", "0.250")


def _fake_run(out, arm, seed, greedy_last, reward):
    """A finished run directory with metrics, a resolved config and per-problem held-out results."""
    d = arithmetic.run_dir(out, arm, seed)
    (d / "evals").mkdir(parents=True)
    (d / "config.yaml").write_text("gepa:\n  eval_n: 2\n  eval_max_tokens: 8\n")
    (d / "summary.json").write_text(json.dumps({"status": "ok"}))
    recs = [{"kind": "step", "step": 1, "epoch": 0, "gen_tokens": 10, "reward_mean": reward, "zero_adv_frac": 0.5},
            {"kind": "epoch", "step": 1, "epoch": 0, "heldout_greedy": 0.0, "heldout_avg4": 0.0},
            {"kind": "step", "step": 2, "epoch": 1, "gen_tokens": 10, "reward_mean": reward, "zero_adv_frac": 0.5},
            {"kind": "epoch", "step": 2, "epoch": 1, "heldout_greedy": sum(greedy_last) / 4,
             "heldout_avg4": sum(greedy_last) / 8}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for e, g in ((0, [0, 0, 0, 0]), (1, greedy_last)):
        (d / "evals" / f"heldout_epoch{e:03d}.jsonl").write_text("".join(
            json.dumps({"id": f"h{i}", "greedy": x, "correct": 2 * x, "n": 4}) + "\n" for i, x in enumerate(g)))


def test_report_intervals_over_seeds_and_paired_comparison(tmp_path):
    s = arithmetic.Settings(epochs=2, arms=["grpo-k4", "p2o-k4"], seeds=3)
    grpo = {0: [0, 0, 0, 1], 1: [0, 1, 0, 0], 2: [0, 0, 0, 0]}
    p2o = {0: [1, 0, 1, 1], 1: [0, 1, 1, 0], 2: [1, 0, 0, 0]}
    for seed in range(3):
        _fake_run(tmp_path, "grpo-k4", seed, grpo[seed], 0.1)
        _fake_run(tmp_path, "p2o-k4", seed, p2o[seed], 0.2)
    md = arithmetic.write_report(tmp_path, s).read_text()
    # P2O's last-epoch greedy per seed: 0.75, 0.5, 0.25 -> mean 0.5, t(0.975, 2) = 4.303, sd 0.25
    half = 4.303 * 0.25 / math.sqrt(3)
    assert f"| P2O Self-Ref (K=4) | greedy | 0.000 [0.000, 0.000] | 0.500 [{0.5 - half:.3f}, {0.5 + half:.3f}] |" in md
    rows = [line for line in md.splitlines() if line.startswith("| GRPO (K=4) | held-out greedy")]
    # paired: per seed P2O - GRPO = 0.5, 0.25, 0.25; over the 12 (seed, problem) units the mean is 1/3
    assert len(rows) == 1 and "| 3 | 12 | +0.333 |" in rows[0] and "+0.500, +0.250, +0.250" in rows[0]
    m, lo, hi = t_interval([0.5, 0.25, 0.25])
    assert f"[{lo:+.3f}, {hi:+.3f}]" in rows[0]
    csv_rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 7 and csv_rows[0].startswith("arm,seed,")
    assert (tmp_path / "curves" / "heldout_greedy.png").stat().st_size > 1000


def test_bad_arms_and_changed_settings_are_refused(tmp_path):
    r = _run(tmp_path, "--arms", "grpo-k4,nope", timeout=120)
    assert r.returncode == 2 and "--arms" in r.stderr and "grpo-k8" in r.stderr
    r = _run(tmp_path, "--seeds", "0", timeout=120)
    assert r.returncode == 2 and "--seeds" in r.stderr
    s = arithmetic.Settings(model="tiny-qwen3", num_problems=16, eval_size=4, epochs=9)
    runs.check_settings(tmp_path / "experiment.json", s)
    r = _run(tmp_path, "--arms", "grpo-k4", "--report-only", timeout=120)
    assert r.returncode == 2 and "other settings" in r.stderr and "epochs" in r.stderr


def test_changing_seeds_or_arms_is_allowed(tmp_path):
    s = arithmetic.Settings(seeds=3, arms=["grpo-k4"])
    runs.check_settings(tmp_path / "experiment.json", s, free=("arms", "seeds", "compare"))
    runs.check_settings(tmp_path / "experiment.json", arithmetic.Settings(seeds=5), free=("arms", "seeds", "compare"))
    with pytest.raises(ValueError, match="lr"):
        runs.check_settings(tmp_path / "experiment.json", arithmetic.Settings(seeds=5, lr=1e-4),
                            free=("arms", "seeds", "compare"))


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.xdist_group("experiment_arithmetic")
def test_two_arms_two_seeds_summary_skip_and_resume(tmp_path, tiny_model_dir):
    out = tmp_path / "exp"
    r = _run(out, "--arms", "grpo-k4,p2o-k4", "--seeds", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for arm in ("grpo-k4", "p2o-k4"):
        for seed in (0, 1):
            d = arithmetic.run_dir(out, arm, seed)
            recs = _records(d / "metrics.jsonl")
            assert [x["step"] for x in recs if x["kind"] == "step"] == [1, 2]
            epochs = [x for x in recs if x["kind"] == "epoch"]
            assert len(epochs) == 2 and all(x["heldout_size"] == 4 for x in epochs)
            assert len(runs.read_eval(d, "heldout", 1)) == 4
            gepa = [x for x in recs if x["kind"] == "gepa"]
            assert len(gepa) == (1 if arm == "p2o-k4" else 0)  # P2O's GEPA round after epoch 1 ran
    # seed 1 shifts every seed of the config; seed 0 is the config as given
    c0 = (arithmetic.run_dir(out, "grpo-k4", 0) / "config.yaml").read_text()
    c1 = (arithmetic.run_dir(out, "grpo-k4", 1) / "config.yaml").read_text()
    assert "shuffle_seed: 0" in c0 and "shuffle_seed: 1" in c1
    summary = (out / "summary.md").read_text()
    assert "GRPO (K=4): 2, P2O Self-Ref (K=4): 2" in summary
    comparison = [line for line in summary.splitlines() if line.startswith("| GRPO (K=4) | held-out")]
    assert len(comparison) == 2 and all("| 2 | 8 |" in line for line in comparison)  # 2 seeds x 4 problems
    assert (out / "curves" / "reward_mean.png").is_file() and (out / "curves" / "heldout_greedy.png").is_file()

    r = _run(out, "--arms", "grpo-k4,p2o-k4", "--seeds", "2")  # finished: skipped, no training process
    assert r.returncode == 0 and r.stdout.count("finished earlier, skipped") == 4

    # An unfinished run resumes from its latest checkpoint; the others are skipped.
    (arithmetic.run_dir(out, "p2o-k4", 1) / "summary.json").unlink()
    r = _run(out, "--arms", "grpo-k4,p2o-k4", "--seeds", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("finished earlier, skipped") == 3
    assert json.loads((arithmetic.run_dir(out, "p2o-k4", 1) / "summary.json").read_text())["resumed"] is True
    steps = [x for x in _records(arithmetic.run_dir(out, "p2o-k4", 1) / "metrics.jsonl") if x["kind"] == "step"]
    assert [x["step"] for x in steps] == [1, 2]


def test_arms_differ_only_in_their_overrides_and_seeds_only_in_theirs(tmp_path):
    s = arithmetic.Settings(model="tiny-qwen3", overrides=["rollout.max_new_tokens=8"])

    def overrides(arm, seed=0):
        return arithmetic.arm_overrides(arithmetic.ARMS[arm], s, tmp_path, tmp_path / "p.jsonl", tmp_path / "h.jsonl",
                                        seed)

    arm_keys = {o.split("=")[0] for a in arithmetic.ARMS.values() for o in a.overrides}
    seed_keys = set(arithmetic.SEED_KEYS)

    def shared(o):
        return [x for x in o if x.split("=")[0] not in arm_keys | seed_keys | {"logging.run_dir"}]

    base = shared(overrides("grpo-k4"))
    for name in arithmetic.ARMS:
        for seed in (0, 2):
            o = overrides(name, seed)
            assert shared(o) == base
            assert o[-1] == f"logging.run_dir={arithmetic.run_dir(tmp_path, name, seed)}"
    assert "rollout.n=8" in overrides("grpo-k8") and "p2o.enabled=true" in overrides("p2o-k4")
    # the ablation is the P2O arm plus its switch, nothing else
    p2o, ablation = overrides("p2o-k4", 2), overrides("p2o-k4-nodistill", 2)
    assert [o for o in ablation if o != "p2o.distill=none" and not o.startswith("logging.run_dir=")] == [
        o for o in p2o if not o.startswith("logging.run_dir=")]
    assert "p2o.distill=none" in ablation and not any(o.startswith("p2o.distill=") for o in p2o)
    assert "checkpoint.resume=auto" in base and "data.eval_source=" + str(tmp_path / "h.jsonl") in base
    assert "reward.fallback=last_number" in base and "optim.lr=1e-05" in base
    assert not {o.split("=")[0] for o in overrides("p2o-k4", 0)} & seed_keys  # seed 0: the config as given
    # seed 2: every seed of configs/demo_cpu.yaml (train 1234, rollout/shuffle/gepa 0) shifted by 2
    assert [o for o in overrides("p2o-k4", 2) if o.split("=")[0] in seed_keys] == [
        "train.seed=1236", "rollout.seed=2", "data.shuffle_seed=2", "gepa.seed=2"]


@pytest.mark.parametrize("levels", [[], [0, 1]])
def test_problem_files_are_disjoint_and_follow_the_levels(tmp_path, levels):
    from p2o.data.problem import Problem

    def load(path):
        return [Problem.from_dict(json.loads(line)) for line in path.read_text().splitlines()]

    train_path, heldout_path = runs.write_problem_files(tmp_path, levels, 40, 16, 1234)
    train, heldout = load(train_path), load(heldout_path)
    assert len(train) == 40 and len(heldout) == 16
    held_q = [p.question for p in heldout]
    assert len(set(held_q)) == 16 and not set(held_q) & {p.question for p in train}
    if levels:
        assert {p.meta["level"] for p in train} <= set(levels)
    else:
        assert all(p.id.startswith("binop") for p in train)


def test_levels_option_reaches_the_settings():
    import argparse

    p = argparse.ArgumentParser()
    arithmetic.add_arguments(p)
    assert arithmetic.settings_from_args(p.parse_args(["--levels", "0"])).levels == [0]
    assert arithmetic.settings_from_args(p.parse_args(["--levels", ""])).levels == []
