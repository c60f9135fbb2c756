"""TensorBoard and W&B sinks of `MetricsLogger`: the same scalars as metrics.jsonl, the resolved config and one W&B
run id across the attempts of a run (resume), TensorBoard purging what a resume redoes.

W&B is exercised for real in offline mode (its run files are read back) and TensorBoard with its own event
reader when the `logging` extra is installed; without it, the adapter's logic is checked against a thin
`FakeWandb` module object (no W&B account or service can exist in these tests)."""
from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path

import pytest

from p2o.telemetry.metrics import WANDB_ID_FILE, MetricsLogger, read_metrics, wandb_run_id

CONFIG = {"grpo": {"lr": 1.0e-6, "clip_low": 0.2}, "model": {"path": "tiny-qwen3"}, "rollout": {"engine": "hf"}}


def _attempt(run_dir: Path, steps: range, **kwargs) -> MetricsLogger:
    m = MetricsLogger(run_dir, run_name="run", config=CONFIG, **kwargs)
    for s in steps:
        m.log({"loss": 1.0 / s, "reward_mean": 0.1 * s, "done": True, "note": "text"}, step=s)
    return m


# ---------------------------------------------------------------------------- the adapter's logic (always runs)
class FakeRun:
    def __init__(self, run_id: str, step: int):
        self.id, self.name, self.step = run_id, "run", step
        self.logged: list[tuple[dict, int]] = []
        self.config = types.SimpleNamespace(values={}, update=self._update)
        self.finished = False

    def _update(self, d: dict, allow_val_change: bool = False) -> None:
        assert allow_val_change
        self.config.values.update(d)

    def log(self, data: dict, step: int) -> None:
        self.logged.append((data, step))

    def finish(self) -> None:
        self.finished = True


def fake_wandb(next_step: int = 0) -> types.ModuleType:
    """A `wandb` module with `init` only; `next_step`: the step a resumed run continues at."""
    mod = types.ModuleType("wandb")
    mod.inits, mod.runs = [], []

    def init(**kwargs):
        mod.inits.append(kwargs)
        mod.runs.append(FakeRun(kwargs["id"], next_step if len(mod.inits) > 1 else 0))
        return mod.runs[-1]

    mod.init = init
    return mod


def test_wandb_run_id_is_kept_in_the_run_dir_and_resumed(tmp_path, monkeypatch):
    wb = fake_wandb(next_step=3)
    monkeypatch.setitem(sys.modules, "wandb", wb)
    monkeypatch.setenv("WANDB_PROJECT", "p2o-tests")
    _attempt(tmp_path, range(1, 4), wandb=True).close()
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert len(run_id) == 16 and run_id.isalnum()
    m = _attempt(tmp_path, range(2, 6), wandb=True)  # a resumed attempt redoes steps 2..3
    m.close()
    assert [(i["id"], i["resume"], i["project"], i["name"]) for i in wb.inits] == [(run_id, "allow", "p2o-tests", "run")] * 2
    assert all(r.config.values == CONFIG and r.finished for r in wb.runs)
    first, second = wb.runs
    assert [s for _, s in first.logged] == [1, 2, 3]
    assert [s for _, s in second.logged] == [3, 4, 5]  # below the run's next step: not sent
    jsonl = [r for r in read_metrics(tmp_path) if r["step"] == 1][0]
    assert first.logged[0][0] == {"step/loss": jsonl["loss"], "step/reward_mean": jsonl["reward_mean"]}


def test_truncate_keeps_the_wandb_run_and_cuts_the_jsonl(tmp_path, monkeypatch):
    wb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wb)
    m = _attempt(tmp_path, range(1, 5), wandb=True)
    assert m.truncate(2) == 2 and not wb.runs[0].finished
    m.log({"loss": 9.0}, step=3)
    m.close()
    assert len(wb.inits) == 1
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.5), (3, 9.0)]


def test_a_broken_run_id_file_is_named(tmp_path):
    (tmp_path / WANDB_ID_FILE).write_text("../../etc\n")
    with pytest.raises(ValueError, match=WANDB_ID_FILE):
        wandb_run_id(tmp_path)


def test_without_the_packages_the_sinks_are_off_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with MetricsLogger(tmp_path, wandb=True) as m:
        m.log({"loss": 1.0}, step=1)
    assert "wandb is not installed" in caplog.text
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.0]


# ---------------------------------------------------------------------------- the real packages, when installed
def wandb_records(path: Path):
    """The protobuf records of a W&B run file (run-<id>.wandb: LevelDB-log blocks of 32 KiB after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


@pytest.mark.slow
def test_wandb_offline_records_config_scalars_and_one_run_across_attempts(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _attempt(tmp_path, range(1, 3), wandb=True).close()
    _attempt(tmp_path, range(3, 5), wandb=True).close()  # the resumed attempt
    wandb.teardown()  # the W&B service has written everything
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith("-" + run_id) for r in runs)
    history, config = {}, {}
    for run in runs:
        for rec in wandb_records(run / f"run-{run_id}.wandb"):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                assert rec.run.run_id == run_id and rec.run.project == "p2o"
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
                step = int(items.get("_step", rec.history.step.num))
                history[step] = {k: float(v) for k, v in items.items() if k.startswith("step/")}
            elif kind == "config":
                config.update({i.key or "/".join(i.nested_key): i.value_json for i in rec.config.update})
    expected = {r["step"]: {"step/loss": r["loss"], "step/reward_mean": r["reward_mean"]} for r in read_metrics(tmp_path)}
    assert history == expected
    assert {k: json.loads(config[k]) for k in CONFIG} == CONFIG


def test_tensorboard_has_the_jsonl_scalars_and_purges_what_a_resume_redoes(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m = _attempt(tmp_path, range(1, 5), tensorboard=True)
    m.log({"heldout_greedy": 0.25}, step=4, kind="epoch")
    m.close()
    m = MetricsLogger(tmp_path, tensorboard=True)  # a resumed attempt: checkpoint at step 2
    m.truncate(2)
    for s in (3, 4):
        m.log({"loss": 10.0 + s, "reward_mean": 0.0}, step=s)
    m.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"step/loss", "step/reward_mean", "epoch/heldout_greedy"}
    got = {e.step: e.value for e in acc.Scalars("step/loss")}
    assert got == pytest.approx({r["step"]: r["loss"] for r in read_metrics(tmp_path, "step")})
    assert got == pytest.approx({1: 1.0, 2: 0.5, 3: 13.0, 4: 14.0})
