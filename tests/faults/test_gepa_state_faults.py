"""GEPA run-directory corruption: a service process is SIGKILLed mid-job, its files are damaged (truncated,
`{}`, deleted, garbage), and it is started again. A job resumes from the previous good copy (to the same
result as an uninterrupted run), or fails naming the file and the reason; it never silently restarts
from iteration 0; an explicit retry runs it again; one job's broken files never stop the service."""
from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pytest

from p2o.gepa.service.client import GEPAClient, GEPAServiceError
from p2o.gepa.service.jobs import JobManager
from p2o.gepa.service.protocol import GEPAJobSpec
from p2o.gepa.service.server import GEPAService
from p2o.gepa.service.store import CorruptRecord, prev_path, read_record, write_record
from tests.faults.conftest import start_gepa_process, wait_for
from tests.p2o.gepa.fake_servers import FakePolicyServer, FakeReflectionServer
from tests.p2o.gepa.oracle import make_problems

pytestmark = [pytest.mark.network, pytest.mark.xdist_group("faults_gepa_state")]

TOKEN = "tok"


def make_spec(policy_url: str, reflection_url: str, key: str) -> GEPAJobSpec:
    return GEPAJobSpec(problems=make_problems(30), policy_url=policy_url, policy_model="policy", k=4,
                       idempotency_key=key,
                       gepa=dict(num_parents=3, minibatch_size=3, budget_metric_calls=260, seed=4, eval_concurrency=4,
                                 pause_poll_s=0.05),
                       reflection=dict(base_url=reflection_url, model="reflector", timeout_s=2, retries=1,
                                       backoff_base_s=0.01, concurrency=2, context_tokens=8192, max_tokens=512),
                       reward=dict(workers=1))


# ---------------------------------------------------------------------------------------------- records
@pytest.mark.parametrize("damage, reason", [
    (b"", "empty file"),
    (b"{}", "not a record"),
    (b'{"format": "p2o-gepa-record/1", "sha256": "00", "data": {"a": 1}}', "checksum mismatch"),
    (b'{"format": "p2o-gepa-record/1", "sha', "not valid JSON"),
    (b"\x00\xff garbage", "not valid JSON"),
])
def test_a_damaged_record_falls_back_to_its_previous_copy_or_names_the_file(tmp_path, damage, reason):
    path = tmp_path / "state.json"
    write_record(path, {"iteration": 1})
    write_record(path, {"iteration": 2})
    assert json.loads(prev_path(path).read_text())["data"] == {"iteration": 1}
    path.write_bytes(damage)
    rec = read_record(path, dict)
    assert rec.value == {"iteration": 1} and reason in rec.recovered and "state.prev.json" in rec.recovered
    write_record(path, {"iteration": 3})  # a bad current file is never kept as the previous copy
    assert read_record(prev_path(path), dict).value == {"iteration": 1}
    path.write_bytes(damage)
    prev_path(path).write_bytes(b"{}")
    with pytest.raises(CorruptRecord, match=f"state.json: {reason}.*previous copy is unusable too"):
        read_record(path, dict)


# ---------------------------------------------------------------------------------------------- a killed service
@pytest.fixture(scope="module")
def endpoints():
    policy = FakePolicyServer(delay_s=0.01).start()
    reflection = FakeReflectionServer().start()
    yield policy, reflection
    policy.stop()
    reflection.stop()


@pytest.fixture(scope="module")
def reference(endpoints, tmp_path_factory):
    """The uninterrupted result, in-process."""
    policy, reflection = endpoints
    svc = GEPAService(JobManager(tmp_path_factory.mktemp("ref")).start()).start(port=0)
    try:
        c = GEPAClient(svc.url)
        job = c.submit(make_spec(policy.url, reflection.url, "ref"))
        assert c.wait(job, timeout_s=120, poll_s=0.05).state == "done"
        return c.result(job)
    finally:
        svc.stop()


def killed_mid_job(run_dir: Path, spec: GEPAJobSpec, min_iteration: int = 2) -> tuple[str, dict]:
    """Start a service, submit `spec`, SIGKILL the process once the job reached `min_iteration`."""
    proc, url = start_gepa_process(run_dir, TOKEN)
    try:
        c = GEPAClient(url, token=TOKEN)
        job = c.submit(spec)
        wait_for(lambda: c.status(job).iteration >= min_iteration, 60, "the job's progress")
        at_kill = c.status(job)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert at_kill.state in ("running", "paused"), at_kill
    return job, at_kill


def restarted(run_dir: Path):
    proc, url = start_gepa_process(run_dir, TOKEN)
    return proc, GEPAClient(url, token=TOKEN)


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


@pytest.mark.slow
def test_truncated_state_resumes_from_the_previous_copy_to_the_same_result(endpoints, reference, tmp_path):
    policy, reflection = endpoints
    job, at_kill = killed_mid_job(tmp_path, make_spec(policy.url, reflection.url, "trunc"))
    state = tmp_path / "jobs" / job / "state.json"
    state.write_bytes(state.read_bytes()[: len(state.read_bytes()) // 2])
    proc, c = restarted(tmp_path)
    try:
        final = c.wait(job, timeout_s=120, poll_s=0.05)
        assert final.state == "done", final
        assert "state.json" in final.notice and "state.prev.json" in final.notice
        res = c.result(job)
        assert res.iterations > at_kill.iteration
        assert [x.template for x in res.pool] == [x.template for x in reference.pool]
        assert res.assignment == reference.assignment and res.metric_calls == reference.metric_calls
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty_object", "deleted"])
def test_lost_state_fails_the_job_clearly_and_an_explicit_retry_starts_over(endpoints, reference, tmp_path, damage):
    policy, reflection = endpoints
    job, at_kill = killed_mid_job(tmp_path, make_spec(policy.url, reflection.url, f"lost-{damage}"))
    d = tmp_path / "jobs" / job
    for f in (d / "state.json", d / "state.prev.json"):
        if damage == "deleted":
            f.unlink(missing_ok=True)
        else:
            f.write_text("{}")
    proc, c = restarted(tmp_path)
    try:
        st = wait_for(lambda: (s := c.status(job)).state in ("failed", "done") and s, 60, "the job to settle")
        assert st.state == "failed", st  # never silently from iteration 0
        assert str(d / "state.json") in st.error and "retry" in st.error
        assert ("missing" if damage == "deleted" else "not a record") in st.error
        assert st.iteration >= at_kill.iteration and st.checkpoints > 0  # what was done is still reported
        with pytest.raises(GEPAServiceError) as e:
            c.result(job)
        assert e.value.status == 409
        assert c.submit(make_spec(policy.url, reflection.url, f"lost-{damage}")) == job  # same key: same job
        c.retry(job, restart=True)
        final = c.wait(job, timeout_s=120, poll_s=0.05)
        assert final.state == "done" and "restarted" in final.notice
        assert c.result(job).assignment == reference.assignment
        if damage == "empty_object":
            assert list(d.glob("state.restart-*.json"))  # the damaged files are kept aside, not deleted
        with pytest.raises(GEPAServiceError) as e:
            c.retry(job)  # a done job is not retried without restart
        assert e.value.status == 409
    finally:
        stop(proc)


@pytest.mark.slow
def test_one_jobs_broken_files_never_stop_the_service(endpoints, reference, tmp_path):
    policy, reflection = endpoints
    specs = {k: make_spec(policy.url, reflection.url, k) for k in ("a", "b", "c")}
    proc, c = restarted(tmp_path)
    try:
        jobs = {k: c.submit(s) for k, s in specs.items()}
        for job in jobs.values():
            assert c.wait(job, timeout_s=120, poll_s=0.05).state == "done"
    finally:
        stop(proc)
    root = tmp_path / "jobs"
    (root / jobs["a"] / "status.json").write_bytes(b"\x00garbage")  # status: unreadable, and its copy too
    (root / jobs["a"] / "status.prev.json").write_text("[]")
    (root / jobs["b"] / "spec.json").write_text('{"format": "p2o-gepa-record/1", "sha256": "x", "data": {}}')
    (root / jobs["c"] / "result.json").write_text("")
    (root / jobs["c"] / "result.prev.json").unlink(missing_ok=True)
    (root / "stray-dir").mkdir()
    (root / "stray-dir" / "status.json").write_text("not json")
    proc, c = restarted(tmp_path)
    try:
        assert c.health()["status"] == "ok"
        a = c.status(jobs["a"])  # rebuilt from its spec; the result is still there
        assert a.state == "done" and "status.json" in a.notice and c.result(jobs["a"]).assignment
        b = c.status(jobs["b"])  # its status is fine: still done, its result readable
        assert b.state == "done" and c.result(jobs["b"]).assignment == reference.assignment
        with pytest.raises(GEPAServiceError) as e:
            c.result(jobs["c"])
        assert e.value.status == 409 and "result.json" in str(e.value) and "empty file" in str(e.value)
        assert c.status("stray-dir").state == "failed"
        c.retry(jobs["c"], restart=True)
        assert c.wait(jobs["c"], timeout_s=120, poll_s=0.05).state == "done"
        assert c.result(jobs["c"]).assignment
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_lost_spec_is_repaired_by_resubmitting_it(endpoints, reference, tmp_path):
    policy, reflection = endpoints
    spec = make_spec(policy.url, reflection.url, "spec-lost")
    job, _ = killed_mid_job(tmp_path, spec)
    d = tmp_path / "jobs" / job
    (d / "spec.json").write_text("{")
    (d / "spec.prev.json").unlink(missing_ok=True)
    proc, c = restarted(tmp_path)
    try:
        st = wait_for(lambda: (s := c.status(job)).state == "failed" and s, 60, "the job to fail")
        assert str(d / "spec.json") in st.error
        with pytest.raises(GEPAServiceError) as e:
            c.retry(job)
        assert e.value.status == 409 and "submit the same spec" in str(e.value)
        with pytest.raises(GEPAServiceError) as e:  # a different spec under the same key is still a conflict
            c.submit(dataclasses.replace(spec, k=3))
        assert e.value.status == 409
        assert c.submit(spec) == job
        final = c.wait(job, timeout_s=120, poll_s=0.05)
        assert final.state == "done" and "resuming" in final.notice
        assert c.result(job).assignment == reference.assignment
    finally:
        stop(proc)
