"""`p2o bench loop`: plain GRPO and P2O on the same tiny setting (tiny Qwen3, 2 epochs x 1 step) through the real
command; the breakdown, overhead ratios and CSV are checked against the runs' own metrics."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from p2o.train import bench


def test_breakdown_and_overhead_from_metrics(tmp_path):
    recs = [{"kind": "step", "step": 1, "time_generate_s": 9.0, "time_step_s": 10.0},
            {"kind": "step", "step": 2, "time_generate_s": 2.0, "time_verify_s": 0.5, "time_step_s": 3.0,
             "templated_share": 0.25},
            {"kind": "step", "step": 3, "time_generate_s": 4.0, "time_verify_s": 0.5, "time_step_s": 5.0},
            {"kind": "gepa", "step": 1, "gepa_wall_s": 7.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    b = bench.breakdown(tmp_path, warmup_steps=1)
    assert (b["time_generate_s"], b["time_verify_s"], b["time_step_s"]) == (3.0, 0.5, 4.0)
    assert (b["gepa_wall_s"], b["steps"], b["templated_steps"]) == (7.0, 3, 1)
    ratio = bench.overhead({"time_step_s": 2.0, "gepa_wall_s": 0.0}, {"time_step_s": 3.0, "gepa_wall_s": 7.0})
    assert ratio == {"time_step_s": 1.5, "gepa_wall_s": None}


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.xdist_group("bench_loop")
def test_loop_bench_command(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "p2o.cli", "bench", "loop", "--out", str(out), "--warmup-steps", "0",
                        "--set", "model.path=tiny-qwen3", "--set", "train.steps_per_epoch=1",
                        "--set", "rollout.max_new_tokens=8", "--set", "gepa.eval_max_tokens=8",
                        "--set", "gepa.budget_metric_calls=8", "--set", "reflection.max_tokens=16",
                        "--set", "data.eval_source=''"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "P2O/GRPO" in r.stdout and "old_logprob /step" in r.stdout
    rows = {row["quantity"]: row for row in csv.DictReader((out / "loop_bench.csv").open())}
    for arm in ("grpo", "p2o"):
        steps = [json.loads(x) for x in (out / arm / "metrics.jsonl").read_text().splitlines()
                 if json.loads(x)["kind"] == "step"]
        assert len(steps) == 2 and int(rows["steps"][arm]) == 2
        mean_step = sum(s["time_step_s"] for s in steps) / 2
        assert float(rows["time_step_s"][arm]) == pytest.approx(mean_step, abs=1e-3)
    assert float(rows["gepa_wall_s"]["grpo"]) == 0 and float(rows["gepa_wall_s"]["p2o"]) > 0
    ratio = float(rows["time_step_s"]["p2o_over_grpo"])
    assert ratio == pytest.approx(float(rows["time_step_s"]["p2o"]) / float(rows["time_step_s"]["grpo"]), rel=1e-3)
