"""`p2o bench vs-trl`: the problem generator, the shared reward, the lock-step protocol, the CPU floor, the
summary/ratio/CSV logic, and our side driven for real through the command (tiny Qwen3, 2 steps).

The TRL side needs its own environment (about 4 minutes to create) and a TRL step on this CPU takes minutes
even for the tiny model, so the TRL run is not part of CI: `p2o bench vs-trl` is run by hand and recorded
in docs/results.md. Its reward function is checked here against the product's Verifier.
"""
from __future__ import annotations

import csv
import io
import random
import statistics
import subprocess
import sys

import pytest

from p2o.data.arithmetic import binary_problems
from p2o.experiment import cpu_limits, lockstep, vs_trl
from p2o.experiment.trl_side import boxed_integer_reward


def test_binary_problems_follow_the_documented_call_order():
    rng = random.Random(1234)  # independent re-implementation of the documented order
    expected = []
    for _ in range(256):
        op = rng.choice("+-*")
        a = rng.randint(1, 10 ** rng.randint(1, 3) - 1)
        b = rng.randint(1, 10 ** rng.randint(1, 3) - 1)
        expected.append((f"What is {a} {op} {b}?", str(eval(f"{a} {op} {b}"))))  # noqa: S307 - our own digits
    got = binary_problems(256, seed=1234)
    assert [(p.question, p.answer) for p in got] == expected
    assert len({p.id for p in got}) == 256
    assert {p.meta["op"] for p in got} == {"+", "-", "*"}


def test_trl_side_reward_agrees_with_the_verifier():
    from p2o.config import RewardConfig
    from p2o.reward import Verifier

    cases = [("so \\boxed{516}", "516"), ("\\boxed{ 516 }", "516"), ("\\boxed{-12}", "-12"), ("\\boxed{12}", "-12"),
             ("the answer is 516", "516"), ("\\boxed{5}\\boxed{7}", "7"), ("\\boxed{5}\\boxed{7}", "5"),
             ("\\boxed{1,234}", "1234"), ("\\boxed{$42$}", "42"), ("\\boxed{{42}}", "42"), ("\\boxed{42", "42"),
             ("\\boxed{0}", "0"), ("\\boxed{007}", "7"), ("\\boxed{}", "3")]
    with Verifier(RewardConfig(fallback="none", workers=1)) as v:
        verdicts = v.score_many(cases)
    for (text, answer), verdict in zip(cases, verdicts, strict=True):
        assert boxed_integer_reward(text, answer) == (1.0 if verdict.correct else 0.0), (text, answer)


def test_lockstep_records_and_commands():
    out = io.StringIO()
    lockstep.emit({"event": "step", "step_s": 1.5}, out)
    lines = out.getvalue().splitlines()
    assert lockstep.parse(lines[0]) == {"event": "step", "step_s": 1.5}
    assert lockstep.parse("Loading weights: 100%") is None
    assert list(lockstep.commands(io.StringIO("step 0\n\nstep 1\nquit\nstep 2\n"))) == [0, 1]
    with pytest.raises(ValueError, match="expected 'step N' or 'quit'"):
        list(lockstep.commands(io.StringIO("go\n")))


def test_floor_by_hand():
    lim = cpu_limits.CPULimits(gemm_flops=1e10, mem_bytes_per_s=1e9, threads=2)
    w = cpu_limits.StepWork(params=1_000_000, prompt_tokens=1000, completion_tokens=1000, decode_steps=64,
                            learning_frac=0.5)
    # generation: max(2e6 * 2000 / 1e10 = 0.4 s, 4e6 bytes * 64 / 1e9 = 0.256 s); training: 6e6 * 0.5 * 2000 / 1e10
    assert cpu_limits.generation_floor_s(w, lim) == pytest.approx(0.4)
    assert cpu_limits.training_floor_s(w, lim) == pytest.approx(0.6)
    assert cpu_limits.step_floor_s(w, lim) == pytest.approx(1.0)
    recomputed = cpu_limits.StepWork(1_000_000, 1000, 1000, 64, learning_frac=1.0,
                                     train_flops_per_param_token=cpu_limits.training_flops_per_param_token("full"))
    assert cpu_limits.training_floor_s(recomputed, lim) == pytest.approx(1.6)  # 8e6 * 2000 / 1e10
    assert cpu_limits.training_flops_per_param_token("none") == 6.0
    measured = cpu_limits.measure_limits(gemm_n=128, copy_bytes=1 << 22, repeats=2)
    assert measured.gemm_flops > 1e7 and measured.mem_bytes_per_s > 1e7


def _side(name, label, steps, rss):
    s = vs_trl.Side(name, label, [], None)
    s.steps, s.peak_rss = steps, rss
    return s


def test_summary_ratios_table_and_csv(tmp_path):
    def rec(i, step_s, gen_s, skipped=None):
        r = {"step": i, "step_s": step_s, "generate_s": gen_s, "completion_tokens": 100, "reward_mean": 0.5,
             "zero_adv_frac": 0.75}
        return r if skipped is None else {**r, "skipped_rows": skipped}  # TRL's records have no skipped_rows

    ours = _side("ours-skip", "ours (skip zero-advantage rows)",
                 [rec(0, 100.0, 90.0, 24), rec(1, 2.0, 1.0, 24), rec(2, 4.0, 3.0, 24), rec(3, 3.0, 2.0, 24)],
                 512 * 2**20)
    trl = _side("trl", "trl GRPOTrainer", [rec(0, 9.0, 5.0), rec(1, 6.0, 4.0), rec(2, 8.0, 5.0), rec(3, 10.0, 6.0)],
                1024 * 2**20)
    lim = cpu_limits.CPULimits(1e10, 1e9, 2)
    work = [lambda c, frac, flops: cpu_limits.StepWork(10**6, 1000, int(c), 64, frac, train_flops_per_param_token=flops)] * 4
    rows = vs_trl.summarize([ours, trl], measure_from=2, limits=lim, work_by_step=work, recompute="full")
    o, t = rows
    assert (o["step_s"], o["generate_s"], o["train_s"], o["steps_measured"]) == (3.0, 2.0, 1.0, 3)  # step 1 left out
    assert t["step_s"] == 8.0 and t["train_s"] == 3.0
    assert o["step_vs_trl"] == pytest.approx(3.0 / 8.0) and t["step_vs_trl"] == pytest.approx(1.0)
    assert o["rss_vs_trl"] == pytest.approx(0.5) and o["peak_rss_mib"] == pytest.approx(512.0)
    # required work: generation max(2e6 * 1100 / 1e10, 4e6 * 64 / 1e9) = 0.256 s + 6e6 * 0.25 * 1100 / 1e10
    floor = 0.256 + 0.165
    assert o["floor_s"] == pytest.approx(floor) and o["x_floor"] == pytest.approx(3.0 / floor)
    assert t["floor_s"] == pytest.approx(floor)  # the same required work on both sides
    # work done, full recompute (8 FLOPs): ours trained 8 of 32 rows, TRL all 32
    assert o["work_floor_s"] == pytest.approx(0.256 + 8e6 * 0.25 * 1100 / 1e10)
    assert t["work_floor_s"] == pytest.approx(0.256 + 8e6 * 1100 / 1e10)
    assert t["x_work_floor"] == pytest.approx(8.0 / t["work_floor_s"])
    table = vs_trl.format_table(rows)
    assert "ours (skip zero-advantage rows)" in table and "0.38" in table and "RSS/TRL" in table
    vs_trl.write_csv(tmp_path / "s.csv", rows, vs_trl.SUMMARY_COLUMNS)
    back = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["side"] for r in back] == ["ours (skip zero-advantage rows)", "trl GRPOTrainer"]
    assert float(back[0]["step_vs_trl"]) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="no measured steps"):
        vs_trl.summarize([ours], measure_from=9, limits=lim, work_by_step=work, recompute="full")


@pytest.mark.slow  # several CLI subprocesses
def test_bad_options_are_refused(tmp_path):
    r = subprocess.run([sys.executable, "-m", "p2o.cli", "bench", "vs-trl", "--steps", "2", "--measure-from", "3",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--measure-from 3" in r.stderr
    with pytest.raises(ValueError, match="unknown side 'foo'"):
        vs_trl.side_commands(["foo"], tmp_path, tmp_path, "m", tmp_path, 2, None, [])
    with pytest.raises(FileNotFoundError, match="no TRL 9.9.9 environment"):
        vs_trl.ensure_trl_venv(tmp_path / "venv", "9.9.9", install=False)


def test_recompute_and_malloc_are_set_on_every_side(tmp_path):
    """Activation recomputation is part of the work: TRL's gradient checkpointing and ours go on and off together."""
    for recompute, ours, trl in ((True, "train.recompute=full", "true"), (False, "train.recompute=none", "false")):
        sides = vs_trl.side_commands(["ours-skip", "ours-noskip", "trl"], tmp_path, tmp_path, "m", tmp_path, 2,
                                     tmp_path / "python", ["train.recompute=selective"], recompute=recompute)
        for side in sides[:2]:
            assert ours in side.cmd and side.cmd[-1] == "train.recompute=selective"  # --ours-override still wins
        cmd = sides[2].cmd
        assert cmd[cmd.index("--gradient-checkpointing") + 1] == trl
    # The malloc mode too: ours through the config, TRL's through the environment.
    ours, trl = vs_trl.side_commands(["ours-noskip", "trl"], tmp_path, tmp_path, "m", tmp_path, 2,
                                     tmp_path / "python", [], malloc="release")
    assert "train.malloc=release" in ours.cmd and ours.env == {}
    assert trl.env == {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_vs_trl")
def test_our_side_through_the_command(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "p2o.cli", "bench", "vs-trl", "--model", "tiny-qwen3", "--steps", "2",
                        "--measure-from", "2", "--num-problems", "16", "--sides", "ours-skip",
                        "--ours-override", "rollout.max_new_tokens=8", "--out", str(out)],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "CPU limits: fp32 GEMM" in r.stdout and "ours (skip zero-advantage rows)" in r.stdout
    steps = list(csv.DictReader((out / "vs_trl_steps.csv").open()))
    assert [int(s["step"]) for s in steps] == [0, 1]
    assert {s["side"] for s in steps} == {"ours-skip"}
    for s in steps:
        assert 0 < float(s["generate_s"]) <= float(s["step_s"])
        assert 0 < int(s["completion_tokens"]) <= 32 * 8
    (row,) = list(csv.DictReader((out / "vs_trl.csv").open()))
    assert row["steps_measured"] == "1" and float(row["peak_rss_mib"]) > 100
    assert row["step_vs_trl"] == ""  # no TRL side in this run
    assert float(row["gemm_gflops"]) > 0 and row["trl_version"] == vs_trl.TRL_VERSION
    assert 0 < float(row["floor_s"]) <= float(row["work_floor_s"])  # full recompute: more than the required work
    # Summarise the same run again over both steps: nothing runs, the run's limits and settings (its model
    # included: no --model here) are kept.
    r = subprocess.run([sys.executable, "-m", "p2o.cli", "bench", "vs-trl", "--report-only",
                        "--measure-from", "1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (again,) = list(csv.DictReader((out / "vs_trl.csv").open()))
    assert again["steps_measured"] == "2" and again["gemm_gflops"] == row["gemm_gflops"]
    assert again["date"] == row["date"] and again["peak_rss_mib"] == row["peak_rss_mib"]
    assert float(again["step_s"]) == pytest.approx(statistics.median(float(s["step_s"]) for s in steps), abs=1e-3)
    assert "work floor s" in r.stdout and "CPU limits" not in r.stdout  # nothing was measured again


def test_load_run_reads_back_what_the_run_wrote(tmp_path):
    steps = [{"side": "ours-noskip", "step": 1, "order": 0, "step_s": 3.0, "generate_s": 1.0, "completion_tokens": 90,
              "reward_mean": 0.0, "zero_adv_frac": 1.0, "skipped_rows": 0, "peak_rss_mib": 10.0},
             {"side": "ours-noskip", "step": 0, "order": 1, "step_s": 5.0, "generate_s": 2.0, "completion_tokens": 80,
              "reward_mean": 0.0, "zero_adv_frac": 1.0, "skipped_rows": 0, "peak_rss_mib": 9.0},
             {"side": "trl", "step": 0, "order": 0, "step_s": 4.0, "generate_s": 2.0, "completion_tokens": 70,
              "reward_mean": 0.0, "zero_adv_frac": 1.0, "peak_rss_mib": 8.0}]
    vs_trl.write_csv(tmp_path / "vs_trl_steps.csv", steps, vs_trl.STEP_COLUMNS)
    meta = {"gemm_gflops": 100.0, "mem_gbps": 20.0, "threads": 2, "params": 1000, "recompute": "full"}
    summary = [{"side": "ours (no skipping)", "peak_rss_mib": 12.5, **meta}, {"side": "trl GRPOTrainer",
                                                                             "peak_rss_mib": 11.0, **meta}]
    vs_trl.write_csv(tmp_path / "vs_trl.csv", summary, vs_trl.SUMMARY_COLUMNS + list(meta))
    sides, back = vs_trl.load_run(tmp_path)
    assert back == meta
    ours, trl = sides
    assert (ours.label, [r["step"] for r in ours.steps], ours.peak_rss) == ("ours (no skipping)", [0, 1], 12.5 * 2**20)
    assert ours.steps[0]["skipped_rows"] == 0 and "skipped_rows" not in trl.steps[0]  # blank cells are left out
    (tmp_path / "vs_trl.csv").unlink()
    with pytest.raises(FileNotFoundError, match="vs_trl.csv not found"):
        vs_trl.load_run(tmp_path)
