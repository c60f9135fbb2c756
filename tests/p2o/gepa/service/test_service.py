"""The GEPA service over real HTTP on 127.0.0.1: routes, auth, idempotency, faults, pause/resume, SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2o.gepa.service.client import GEPAClient, GEPAServiceError
from p2o.gepa.service.jobs import JobManager
from p2o.gepa.service.protocol import GEPAJobSpec
from p2o.gepa.service.server import GEPAService
from tests.p2o.gepa.fake_servers import FakePolicyServer, FakeReflectionServer
from tests.p2o.gepa.oracle import make_problems, solves

pytestmark = [pytest.mark.network, pytest.mark.xdist_group("gepa_service")]


def make_spec(policy_url: str, reflection_url: str, n: int = 24, key: str = "", **gepa) -> GEPAJobSpec:
    g = dict(num_parents=3, minibatch_size=3, budget_metric_calls=200, seed=4, eval_concurrency=8, pause_poll_s=0.05)
    g.update(gepa)
    return GEPAJobSpec(problems=make_problems(n), policy_url=policy_url, policy_model="policy", policy_version=3,
                       failed_responses={"p0": ["\\boxed{1}"]}, k=4, idempotency_key=key, gepa=g,
                       reflection=dict(base_url=reflection_url, model="reflector", timeout_s=0.5, retries=3,
                                       backoff_base_s=0.01, backoff_max_s=0.05, breaker_failures=50,
                                       concurrency=4, context_tokens=8192, max_tokens=512),
                       reward=dict(workers=1))


@pytest.fixture
def servers():
    policy = FakePolicyServer().start()
    reflection = FakeReflectionServer().start()
    yield policy, reflection
    policy.stop()
    reflection.stop()


@pytest.fixture
def service(tmp_path, monkeypatch):
    svc = GEPAService(JobManager(tmp_path / "run").start(), token="s3cret").start(port=0)
    yield svc
    svc.stop()


def check_result(res, spec: GEPAJobSpec) -> None:
    byid = {p.id: p for p in spec.problems}
    assert res.metric_calls == res.budget_used and res.stop_reason == "budget"
    for c in res.pool:
        assert all(s == float(solves(c.template, byid[d].question)) for d, s in c.dev_scores.items())
    assert set(res.assignment) == set(byid) and all(len(v) == spec.k for v in res.assignment.values())


def test_routes_auth_idempotency_and_errors(servers, service):
    policy, reflection = servers
    assert GEPAClient(service.url).health()["status"] == "ok"  # /health needs no token
    with pytest.raises(GEPAServiceError) as e:
        GEPAClient(service.url).submit(make_spec(policy.url, reflection.url))
    assert e.value.status == 401
    client = GEPAClient(service.url, token="s3cret")
    bad = make_spec(policy.url, reflection.url, num_parents=0)
    with pytest.raises(GEPAServiceError, match="gepa.num_parents") as e:
        client.submit(bad)
    assert e.value.status == 400
    with pytest.raises(GEPAServiceError, match="unknown job") as e:
        client.status("gnope")
    spec = make_spec(policy.url, reflection.url, key="run1:epoch0")
    job = client.submit(spec)
    assert client.submit(spec) == job  # same key, same spec: the same job
    with pytest.raises(GEPAServiceError) as e:
        client.submit(make_spec(policy.url, reflection.url, key="run1:epoch0", seed=9))
    assert e.value.status == 409
    seen = []
    final = client.wait(job, timeout_s=60, poll_s=0.05, on_progress=seen.append)
    assert final.state == "done" and final.pool_size > 1 and final.budget_used >= 200 - 6
    assert seen and all(s.budget_total == 200 for s in seen)
    res = client.result(job)
    check_result(res, spec)
    # every scoring request carried the gateway extras
    body = policy.requests[0]
    assert body["min_policy_version"] == 3 and body["priority"] == "evaluation"
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["temperature"] == 0
    assert reflection.requests[0]["priority"] == "reflection"
    assert res.policy_version == 3


def test_reflection_faults_do_not_stop_the_job(service):
    policy = FakePolicyServer().start()
    # 30% of reflection calls fail: HTTP 500, a stall past the 0.5 s timeout, or an answer without a template
    pattern = ("ok", "500", "ok", "ok", "stall", "ok", "ok", "garbage", "ok", "ok")
    reflection = FakeReflectionServer(pattern, stall_s=1.0).start()
    try:
        client = GEPAClient(service.url, token="s3cret")
        spec = make_spec(policy.url, reflection.url, budget_metric_calls=150)
        job = client.submit(spec)
        assert client.wait(job, timeout_s=90, poll_s=0.05).state == "done"
        res = client.result(job)
        check_result(res, spec)
        assert {"500", "stall", "garbage"} <= set(reflection.outcomes)
        assert res.counters.get("unusable", 0) >= 1  # garbage answers are counted, not retried
        assert len(res.pool) > 1
    finally:
        policy.stop()
        reflection.stop()


def test_task_model_down_pauses_and_resumes(service):
    policy = FakePolicyServer().start()
    port = policy.port
    policy.stop()  # the task model is down when the job starts
    reflection = FakeReflectionServer().start()
    try:
        client = GEPAClient(service.url, token="s3cret")
        job = client.submit(make_spec(f"http://127.0.0.1:{port}", reflection.url))
        deadline = time.monotonic() + 20
        while (st := client.status(job)).state != "paused":
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        assert "task-model endpoint unavailable" in st.pause_reason and "Connect" in st.pause_reason
        assert st.metric_calls == 0
        policy = FakePolicyServer(port=port).start()  # it comes back
        final = client.wait(job, timeout_s=60, poll_s=0.05)
        assert final.state == "done" and final.pause_reason == ""
    finally:
        policy.stop()
        reflection.stop()


def test_cancel_a_paused_job(service):
    down = FakePolicyServer().start()
    port = down.port
    down.stop()
    reflection = FakeReflectionServer().start()
    try:
        client = GEPAClient(service.url, token="s3cret")
        job = client.submit(make_spec(f"http://127.0.0.1:{port}", reflection.url))
        deadline = time.monotonic() + 20
        while client.status(job).state != "paused":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.cancel(job)
        assert client.wait(job, timeout_s=20, poll_s=0.05).state == "cancelled"
        with pytest.raises(GEPAServiceError) as e:
            client.result(job)
        assert e.value.status == 409 and "cancelled" in str(e.value)
    finally:
        reflection.stop()


def start_service_process(run_dir: Path, token: str) -> tuple[subprocess.Popen, str]:
    endpoint = run_dir / "endpoint"
    endpoint.unlink(missing_ok=True)
    env = dict(os.environ, P2O_GEPA_TOKEN=token)
    proc = subprocess.Popen([sys.executable, "-m", "p2o.cli", "gepa-serve", "--run-dir", str(run_dir), "--port", "0",
                             "--endpoint-file", str(endpoint)], env=env, cwd=Path(__file__).resolve().parents[4])
    deadline = time.monotonic() + 60
    while not endpoint.exists():
        assert proc.poll() is None, "gepa-serve exited"
        assert time.monotonic() < deadline, "gepa-serve did not write its endpoint file"
        time.sleep(0.05)
    return proc, "http://" + endpoint.read_text().strip()


@pytest.mark.slow
@pytest.mark.xdist_group("gepa_kill")
def test_sigkill_mid_job_resumes_to_the_same_result(tmp_path):
    policy = FakePolicyServer(delay_s=0.01).start()
    reflection = FakeReflectionServer().start()
    procs = []
    try:
        spec = make_spec(policy.url, reflection.url, n=30, key="kill-test", budget_metric_calls=260,
                         eval_concurrency=4)
        # the uninterrupted reference, in-process
        ref_svc = GEPAService(JobManager(tmp_path / "ref").start()).start(port=0)
        ref_client = GEPAClient(ref_svc.url)
        ref_job = ref_client.submit(spec)
        assert ref_client.wait(ref_job, timeout_s=120, poll_s=0.05).state == "done"
        ref = ref_client.result(ref_job)
        ref_svc.stop()
        assert ref.iterations >= 4
        # the same job in a service process killed with SIGKILL mid-job, then restarted
        run_dir = tmp_path / "svc"
        proc, url = start_service_process(run_dir, "tok")
        procs.append(proc)
        client = GEPAClient(url, token="tok")
        job = client.submit(spec)
        deadline = time.monotonic() + 60
        while client.status(job).iteration < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        killed_at = client.status(job)
        assert killed_at.state == "running", killed_at
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc, url = start_service_process(run_dir, "tok")
        procs.append(proc)
        client = GEPAClient(url, token="tok")
        assert client.submit(spec) == job  # idempotent: the resubmitted spec is the resumed job
        final = client.wait(job, timeout_s=120, poll_s=0.05)
        assert final.state == "done"
        res = client.result(job)
        assert killed_at.iteration < res.iterations
        assert [c.template for c in res.pool] == [c.template for c in ref.pool]
        assert [c.dev_scores for c in res.pool] == [c.dev_scores for c in ref.pool]
        assert [(r.iteration, r.parent, r.status, r.minibatch) for r in res.log] == \
               [(r.iteration, r.parent, r.status, r.minibatch) for r in ref.log]
        assert res.metric_calls == ref.metric_calls and res.budget_used == ref.budget_used
        assert res.assignment == ref.assignment
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
        policy.stop()
        reflection.stop()
