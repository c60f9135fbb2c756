"""Hostile HTTP against the real GEPA service (127.0.0.1): secrets never leave for a URL a job chose,
the token is checked before the body, bodies and job sizes are bounded, bad text is a 400 naming the
field, and the service keeps serving throughout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from p2o.gepa.adapters.endpoints import Endpoints
from p2o.gepa.service.client import GEPAClient, GEPAServiceError
from p2o.gepa.service.jobs import JobManager
from p2o.gepa.service.protocol import GEPAJobSpec
from p2o.gepa.service.server import GEPAService
from p2o.server import HTTPLimits
from tests.faults.conftest import RecordingServer, health_latency, raw_request, wait_for
from tests.p2o.gepa.fake_servers import FakePolicyServer, FakeReflectionServer
from tests.p2o.gepa.oracle import make_problems

pytestmark = [pytest.mark.network, pytest.mark.xdist_group("faults_gepa")]

TOKEN = "gepa-s3cret"
SECRET = "do-not-leak-7f3a"


def spec_dict(policy_url: str, reflection_url: str, **over) -> dict:
    spec = GEPAJobSpec(problems=make_problems(8), policy_url=policy_url, policy_model="policy", k=4,
                       gepa=dict(num_parents=2, minibatch_size=2, budget_metric_calls=40, seed=1, eval_concurrency=4,
                                 pause_poll_s=0.05),
                       reflection=dict(base_url=reflection_url, model="reflector", timeout_s=2, retries=0,
                                       backoff_base_s=0.01, concurrency=2, context_tokens=8192, max_tokens=512),
                       reward=dict(workers=1))
    d = spec.to_dict()
    for key, value in over.items():
        section, _, name = key.partition(".")
        if name:
            d[section][name] = value
        else:
            d[key] = value
    return d


@pytest.fixture
def service(tmp_path):
    limits = HTTPLimits(max_body_bytes=2 * 1024 * 1024, head_timeout_s=1.0, body_timeout_s=1.0)
    svc = GEPAService(JobManager(tmp_path / "run").start(), token=TOKEN, limits=limits).start(port=0)
    yield svc
    svc.stop()


def submit_raw(svc: GEPAService, body: bytes, token: str = TOKEN) -> httpx.Response:
    return httpx.post(svc.url + "/v1/jobs", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})


# ---------------------------------------------------------------------------------------------- secrets
def _policy_oracle():
    return FakePolicyServer()._answer


def _reflection_oracle():
    return FakeReflectionServer()._answer


@pytest.mark.parametrize("field, value", [
    ("policy_api_key_env", "P2O_FAULTS_SECRET"),
    ("reflection.api_key_env", "P2O_FAULTS_SECRET"),
    ("gepa.token_env", "P2O_FAULTS_SECRET"),
])
def test_a_job_cannot_name_credentials(service, field, value):
    r = submit_raw(service, json.dumps(spec_dict("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1",
                                                 **{field: value})).encode())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field and "credentials" in r.json()["error"]["message"]


def test_secrets_go_only_to_the_services_own_endpoints(tmp_path, monkeypatch):
    """The service holds a key for its registered policy endpoint; a job pointing the reflection calls at
    another URL (an attacker's) gets them there without any credential."""
    monkeypatch.setenv("P2O_FAULTS_SECRET", SECRET)
    monkeypatch.setenv("P2O_REFLECTION_API_KEY", SECRET)  # the config default a job used to inherit
    policy, attacker = RecordingServer(_policy_oracle()).start(), RecordingServer(_reflection_oracle()).start()
    endpoints = Endpoints.from_args([f"policy={policy.url}"], ["policy=P2O_FAULTS_SECRET"])
    svc = GEPAService(JobManager(tmp_path / "run", endpoints=endpoints).start(), token=TOKEN).start(port=0)
    try:
        job = GEPAClient(svc.url, token=TOKEN).submit(GEPAJobSpec.from_dict(spec_dict(policy.url, attacker.url)))
        wait_for(lambda: attacker.requests and len(policy.requests) > 8, 60, "calls to both endpoints")
        assert policy.authorizations() == {f"Bearer {SECRET}"}  # the registered endpoint gets its key
        assert attacker.authorizations() == {"Bearer none"}  # the job's own URL gets nothing
        for _, headers, body in attacker.requests:
            assert SECRET not in json.dumps(headers) + json.dumps(body)
        assert GEPAClient(svc.url, token=TOKEN).wait(job, timeout_s=60, poll_s=0.05).state == "done"
    finally:
        svc.stop()
        policy.stop()
        attacker.stop()


def test_endpoints_only_refuses_unregistered_urls(tmp_path):
    endpoints = Endpoints.from_args(["policy=http://127.0.0.1:8001"], only=True)
    jobs = JobManager(tmp_path / "run", endpoints=endpoints)
    for body, field in ((spec_dict("http://evil.example/v1", "http://127.0.0.1:8001/v1"), "policy_url"),
                        (spec_dict("http://127.0.0.1:8001/v1/", "http://evil.example"), "reflection.base_url")):
        with pytest.raises(Exception) as e:
            jobs.submit(GEPAJobSpec.from_dict(body))
        assert getattr(e.value, "field", None) == field and "not one of the service's endpoints" in str(e.value)


def test_no_token_on_a_non_loopback_address_is_refused(tmp_path):
    with pytest.raises(ValueError, match="without a token"):
        GEPAService(JobManager(tmp_path / "a"), token=None, host="0.0.0.0")
    env = {k: v for k, v in os.environ.items() if k != "P2O_GEPA_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "p2o.cli", "gepa-serve", "--run-dir", str(tmp_path / "b"),
                           "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "without a token" in proc.stderr and "P2O_GEPA_TOKEN" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "p2o.cli", "gepa-serve", "--run-dir", str(tmp_path / "c"),
                          "--endpoint", "policy=http://x:1", "--endpoint-key-env", "policy=P2O_FAULTS_UNSET"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "P2O_FAULTS_UNSET is not set" in bad.stderr


# ---------------------------------------------------------------------------------------------- protocol abuse
def test_token_before_body_and_bounded_bodies(service):
    head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 268435456\r\n\r\n")
    reply = raw_request("127.0.0.1", service.port, head, wait_s=5)  # 256 MB announced, no token
    assert reply.status == 401 and reply.closed and reply.elapsed_s < 2
    authed = head.replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n")
    reply = raw_request("127.0.0.1", service.port, authed, wait_s=5)
    assert reply.status == 413 and reply.closed and reply.elapsed_s < 2


def test_half_sent_requests_do_not_hold_the_service(service):
    replies = []

    def half_sent():
        head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                + b"\r\nContent-Length: 5000\r\n\r\n{\"problems\": [")
        replies.append(raw_request("127.0.0.1", service.port, head, wait_s=8, keep_sending=b" " * 50, every_s=0.2))

    def slow_head():
        replies.append(raw_request("127.0.0.1", service.port, b"GET /v1/jobs HTTP/1.1\r\n", wait_s=8,
                                   keep_sending=b"X-A: b\r\n" * 10, every_s=0.3))

    threads = [threading.Thread(target=f) for f in (half_sent, slow_head) for _ in range(30)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert max(health_latency(service.url) for _ in range(5)) < 1.0
    assert GEPAClient(service.url, token=TOKEN).http.get("/v1/jobs").status_code == 200
    for t in threads:
        t.join(15)
    assert len(replies) == 60 and all(r.closed and r.elapsed_s < 4 for r in replies)
    assert sum(r.status == 408 for r in replies) == 30


@pytest.mark.parametrize("override, field", [
    ({"k": 1_000_000}, "k"),
    ({"k": True}, "k"),
    ({"problems": [{"id": f"p{i}", "question": "q", "answer": "1"} for i in range(20_001)]}, "problems"),
    ({"gepa.budget_metric_calls": 10 ** 12}, "gepa.budget_metric_calls"),
    ({"gepa.eval_concurrency": 100_000}, "gepa.eval_concurrency"),
    ({"gepa.eval_n": 5000}, "gepa.eval_n"),
    ({"gepa.max_wall_s": 1e300}, "gepa.max_wall_s"),
    ({"reflection.max_tokens": 10 ** 9}, "reflection.max_tokens"),
    ({"reflection.retries": 10 ** 6}, "reflection.retries"),
    ({"user_template": "{question}" + "x" * 100_000}, "user_template"),
    ({"failed_responses": {"p0": ["x" * 100_000]}}, "failed_responses.p0[0]"),
    ({"failed_responses": {"nope": ["x"]}}, "failed_responses.nope"),
    ({"gepa.seed_templates": ["t"] * 1000}, "gepa.seed_templates"),
])
def test_job_sizes_and_budgets_are_bounded(service, override, field):
    r = submit_raw(service, json.dumps(spec_dict("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", **override))
                   .encode())
    assert r.status_code in (400, 413), r.text
    if r.status_code == 400:
        assert r.json()["error"]["field"] == field, r.text


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["problems"][0].update(answer=7), "problems[0].answer"),
    (lambda d: d["problems"][0].update(question=["a", "b"]), "problems[0].question"),
    (lambda d: d["problems"][0].update(id={"x": 1}), "problems[0].id"),
    (lambda d: d.update(policy_version="3"), "policy_version"),
    (lambda d: d["gepa"].update(num_parents="3"), "gepa.num_parents"),
    (lambda d: d["gepa"].update(seed_templates=[1, 2]), "gepa.seed_templates[0]"),
    (lambda d: d["reflection"].update(enable_thinking="false"), "reflection.enable_thinking"),
    (lambda d: d["reward"].update(timeout_s="nan"), "reward.timeout_s"),
])
def test_wrong_types_are_named_never_coerced(service, mutate, field):
    d = spec_dict("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    mutate(d)
    r = submit_raw(service, json.dumps(d).encode())
    assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text


@pytest.mark.parametrize("body, fragment", [
    (lambda d: d.replace(b'"Question 0', b'"\\ud800Question 0'), "lone surrogate U+D800"),
    (lambda d: b"[" * 100_000 + b"]" * 100_000, "nested deeper than"),
    (lambda d: d.replace(b'"k": 4', b'"k": NaN'), "NaN is not valid JSON"),
    (lambda d: d[:-20], "not valid JSON"),
    (lambda d: d.replace(b"Question 1", b"Question \xff"), "not valid UTF-8"),
])
def test_invalid_text_and_pathological_json_are_400(service, body, fragment):
    raw = json.dumps(spec_dict("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")).encode()
    r = submit_raw(service, body(raw))
    assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
    assert health_latency(service.url) < 1.0


def test_errors_on_unknown_routes_and_jobs_are_json(service):
    c = GEPAClient(service.url, token=TOKEN)
    for call, status in ((lambda: c.status("gnope"), 404), (lambda: c.retry("gnope"), 404),
                         (lambda: c._call("GET", "/v2/nothing"), 404), (lambda: c._call("DELETE", "/v1/jobs"), 405)):
        with pytest.raises(GEPAServiceError) as e:
            call()
        assert e.value.status == status
