"""The records that cross the service and checkpoint boundaries: JSON round trips into typed fields, and bad
records refused with a message naming what is wrong."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict

import pytest

from p2o.gepa.service.client import SubmittedJob
from p2o.gepa.service.protocol import JobStatus
from p2o.train import checkpoint as ckpt


def test_job_status_round_trip_and_refusals():
    st = JobStatus("j1", "running", iteration=3, budget_used=40, budget_total=200, best_dev_score=0.5)
    back = JobStatus.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back == st and back.best_dev_score == 0.5 and back.state == "running"
    assert JobStatus.from_dict({**st.to_dict(), "added_by_a_newer_service": 1}) == st  # unknown keys ignored
    for bad in ({"state": "done"}, {"job_id": "j", "state": "finished"}, ["j", "done"]):
        with pytest.raises(ValueError, match="not a job status"):
            JobStatus.from_dict(bad)


def test_submitted_job_survives_the_checkpoint_state():
    job = SubmittedJob("j7", epoch=2, policy_version=5, hard_ids=["p1", "p9"], submitted_at=1.5e9)
    state = ckpt.LoopState(global_step=9, gepa_job=job)
    restored = ckpt.LoopState(**json.loads(json.dumps(asdict(state))))
    assert isinstance(restored.gepa_job, SubmittedJob) and restored.gepa_job == job
    assert restored == state
    assert dataclasses.replace(restored, gepa_job=None).gepa_job is None


def test_a_pending_job_without_its_fields_is_a_checkpoint_error(tmp_path):
    state = ckpt.LoopState(global_step=3, gepa_job=SubmittedJob("j", 0, 0, []))
    final = ckpt.commit(tmp_path, 3, state, keep_last=2)
    assert ckpt.load_state(final).gepa_job == SubmittedJob("j", 0, 0, [])
    raw = json.loads((final / ckpt.STATE).read_text())
    raw["gepa_job"] = {"job_id": "j", "epoch": 0}
    payload = json.dumps(raw).encode()
    (final / ckpt.STATE).write_bytes(payload)
    manifest = json.loads((final / ckpt.MANIFEST).read_text())
    manifest["files"][ckpt.STATE] = len(payload)

    manifest["state_sha256"] = hashlib.sha256(payload).hexdigest()
    (final / ckpt.MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
    with pytest.raises(ckpt.CheckpointError, match="state.json: submitted GEPA job j: missing policy_version, hard_ids"):
        ckpt.load_state(final)
