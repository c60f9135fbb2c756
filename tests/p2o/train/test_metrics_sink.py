"""The trainer's metrics sink (p2o.train.metrics_sink.RunMetrics) over the real MetricsLogger."""
from __future__ import annotations

from p2o.config import load_config
from p2o.telemetry.metrics import MetricsLogger, read_metrics
from p2o.train.metrics_sink import RunMetrics
from p2o.train.rows import TrainRow


def test_rank0_records_truncates_and_keeps_writing(tmp_path):
    cfg = load_config(None, ["logging.save_rollouts=true"])
    sink = RunMetrics(cfg, tmp_path, MetricsLogger(tmp_path))
    for step in (1, 2, 3):
        sink.log({"loss": 0.5 * step}, step)
    size = sink.size_bytes()
    sink.log({"hard_count": 2, "epoch": 0}, 3, kind="epoch")
    assert sink.size_bytes() > size > 0
    sink.truncate(3, size)  # back to the checkpoint taken after step 3: the epoch record goes
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path)] == [("step", 1), ("step", 2), ("step", 3)]
    sink.log({"loss": 0.1}, 4)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    sink.save_rollouts([TrainRow("p0", 0, [1], [1], [2], "\\boxed{4}", "stop", "", 7)], 4)
    saved = (tmp_path / "rollouts" / "step_000004.jsonl").read_text()
    assert '"problem_id": "p0"' in saved and '"policy_version": 7' in saved and saved.endswith("\n")
    sink.close()


def test_other_ranks_record_nothing(tmp_path):
    cfg = load_config(None, ["logging.save_rollouts=true"])
    sink = RunMetrics(cfg, tmp_path)
    sink.log({"loss": 1.0}, 1)
    sink.truncate(0, 0)
    sink.save_rollouts([], 1)
    bar = sink.progress("update", 3)
    assert bar.disable and sink.gpu() == {} and sink.size_bytes() == 0
    bar.close()
    assert list(tmp_path.iterdir()) == []
