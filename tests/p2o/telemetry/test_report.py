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


def test_report_tables_templated_rollouts_against_the_plain_prompt_one_epoch_earlier(tmp_path):
    with MetricsLogger(tmp_path) as m:
        for step, epoch in ((1, 0), (2, 0), (3, 1)):
            m.log({"epoch": epoch, "reward_mean": 0.0}, step=step)
        m.log({"epoch": 0, "hard_count": 2, "heldout_greedy": 0.0}, step=2, kind="epoch")
        m.log({"epoch": 1, "hard_count": 0, "heldout_greedy": 0.5, "hard_plain_greedy": 0.5, "hard_plain_avg4": 0.25,
               "hard_plain_size": 2}, step=3, kind="epoch")
    rows = {  # step -> (problem, template, reward)
        1: [("a", "", 0), ("a", "", 1), ("b", "", 0), ("b", "", 0)],
        2: [("c", "", 1), ("c", "", 1)],
        3: [("a", "Z1", 1), ("a", "Z2", 0), ("b", "Z1", 1), ("b", "Z1", 1), ("c", "", 0)],
    }
    (tmp_path / "rollouts").mkdir()
    for step, rs in rows.items():
        (tmp_path / "rollouts" / f"step_{step:06d}.jsonl").write_text("".join(
            json.dumps({"problem_id": p, "template": z, "reward": float(r), "text": "..."}) + "\n" for p, z, r in rs))
    from p2o.telemetry.report import _read_rollouts, template_tables

    rollouts = _read_rollouts(tmp_path, list(read_metrics(tmp_path, "step")))
    per_epoch, per_template = template_tables(rollouts, list(read_metrics(tmp_path, "epoch")))
    # epoch 1: a and b templated (3 of 4 correct); their plain rollouts in epoch 0: 1 of 4 correct (c is not
    # counted); after epoch 1, the trainer's plain-prompt evaluation of a and b
    assert per_epoch == [{"epoch": 1, "problems": 2, "templated_rollouts": 4, "templated_correct": 3,
                          "templated_success": 0.75, "plain_rollouts_prev_epoch": 4, "plain_success_prev_epoch": 0.25,
                          "plain_after_problems": 2, "plain_after_greedy": 0.5, "plain_after_sampled": 0.25}]
    assert template_tables(rollouts)[0][0]["plain_after_greedy"] is None  # no epoch records: no "after"
    assert [(t["template"], t["rollouts"], t["problems"], t["correct"]) for t in per_template] == [
        ("Z1", 3, 2, 3), ("Z2", 1, 1, 0)]
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Templates used" in page and "<td>Z1</td>" in page and "plain_after_greedy" in page
