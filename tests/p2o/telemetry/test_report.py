"""Metrics sinks and the run report."""
from __future__ import annotations

import json

from p2o.cli import main
from p2o.telemetry.gpu import GPUSampler
from p2o.telemetry.metrics import MetricsLogger, read_metrics, truncate_metrics


def _fake_run(d, reward_offset=0.0):
    with MetricsLogger(d) as m:
        for s in range(1, 7):
            m.log({"reward_mean": 0.1 * s + reward_offset, "templated_success": 0.5, "untemplated_success": 0.1,
                   "zero_adv_frac": 0.3, "mask_rate": 0.05, "time_generate_s": 1.0, "time_old_logprob_s": 0.2,
                   "time_update_s": 0.5, "time_weight_sync_s": 0.1, "nan": float("nan")}, step=s)
        m.log({"epoch": 0, "hard_count": 12, "heldout_greedy": 0.25}, step=3, kind="epoch")
        m.log({"epoch": 0, "pool_size": 4, "budget_used": 100}, step=3, kind="gepa")


def test_metrics_round_trip_and_truncate(tmp_path):
    _fake_run(tmp_path)
    steps = list(read_metrics(tmp_path, "step"))
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6] and steps[0]["nan"] is None
    (tmp_path / "metrics.jsonl").open("a").write('{"torn": ')  # a crash mid-write
    truncate_metrics(tmp_path, 3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 3, 3]


def test_report_writes_plots_and_html(tmp_path):
    run, base = tmp_path / "p2o", tmp_path / "grpo"
    _fake_run(run)
    _fake_run(base, reward_offset=-0.05)
    (run / "summary.json").write_text(json.dumps({"status": "ok", "steps": 6}))
    assert main(["report", str(run), "--baseline", str(base)]) == 0
    page = (run / "report.html").read_text()
    for png in ("reward.png", "hard_samples.png", "template_success.png", "time_breakdown.png", "heldout.png"):
        assert (run / png).stat().st_size > 1000 and png in page
    assert "pool_size" in page and "status" in page


def test_report_on_missing_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_gpu_sampler_degrades_without_nvml():
    s = GPUSampler()
    assert s.sample() == {} or all(k.startswith("gpu") for k in s.sample())
