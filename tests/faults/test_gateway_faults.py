"""Hostile HTTP against the real gateway (tiny model, 127.0.0.1): raw sockets for protocol abuse, the real
`openai` client for API misuse. The gateway must answer a clear 4xx (never a 500), keep /health fast
while any single hostile request is in flight, and stop generating for clients that went away."""
from __future__ import annotations

import json
import os
import threading
import time

import httpx
import openai
import pytest

from p2o.rollout.gateway import Gateway
from p2o.rollout.serving import GatewayLimits
from tests.faults.conftest import health_latency, raw_request, wait_for
from tests.p2o.rollout.helpers import make_engine

pytestmark = [pytest.mark.network, pytest.mark.xdist_group("faults_gateway")]

TOKEN = "gw-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MSG = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def gw(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    os.environ["P2O_FAULTS_GATEWAY_TOKEN"] = TOKEN
    limits = GatewayLimits(max_body_bytes=4 * 1024 * 1024, head_timeout_s=1.0, body_timeout_s=1.0,
                           render_timeout_s=20.0, max_prompt_tokens=2048)
    g = Gateway(make_engine(tiny_model_dir, tok, max_batch_size=8), tok, model_name="tiny", limits=limits,
                token_env="P2O_FAULTS_GATEWAY_TOKEN").start()
    yield g
    g.stop()
    del os.environ["P2O_FAULTS_GATEWAY_TOKEN"]


def client(gw: Gateway, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TOKEN, max_retries=0, **kw)


def post(gw: Gateway, path: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(gw.url + path, content=body, timeout=30,
                      headers={"content-type": "application/json", **AUTH, **(headers or {})})


# ---------------------------------------------------------------------------------------------- auth, size, time
def test_auth_is_checked_before_the_body_is_read(gw):
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 3000000\r\n\r\n")
    reply = raw_request(gw.host, gw.port, head, wait_s=5)  # no token, and the body never comes
    assert reply.status == 401 and reply.closed and reply.elapsed_s < 2
    assert "bearer token" in reply.json()["error"]["message"]


def test_oversized_bodies_are_refused_without_reading_them(gw):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 999999999\r\n\r\n")
    reply = raw_request(gw.host, gw.port, head, wait_s=5)
    assert reply.status == 413 and reply.closed and reply.elapsed_s < 2
    # no Content-Length: counted while it streams, refused at the limit
    chunked = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
               + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    reply = raw_request(gw.host, gw.port, chunked + chunk * 5, wait_s=10)
    assert reply.status == 413 and reply.closed


def test_slowloris_head_and_slow_body_are_cut_off_while_health_answers(gw):
    results = {}

    def slow_head():  # a request head trickled one byte every 0.3 s
        results["head"] = raw_request(gw.host, gw.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",
                                      wait_s=8, keep_sending=b"X-Pad: " + b"a" * 100, every_s=0.3)

    def slow_body():  # headers complete, the body trickled
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{")
        results["body"] = raw_request(gw.host, gw.port, head, wait_s=8, keep_sending=b'"prompt": "' + b"a" * 100,
                                      every_s=0.3)

    threads = [threading.Thread(target=f) for f in (slow_head, slow_body) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert max(health_latency(gw.url) for _ in range(5)) < 1.0
    for t in threads:
        t.join(15)
    head, body = results["head"], results["body"]
    assert head.closed and head.elapsed_s < 4 and head.data == b""  # closed after the head timeout (1 s)
    assert body.status == 408 and body.closed and body.elapsed_s < 4
    assert "not received within" in body.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------- bad JSON / text
@pytest.mark.parametrize("body, fragment, param", [
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800 lone"}]}',
     "invalid Unicode in messages[0].content: lone surrogate U+D800", "messages[0].content"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}', "lone surrogate U+DFFF", None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "caf\xe9"}]}', "not valid UTF-8", None),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than", None),
    (b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}", "nested deeper than 64", None),
    (b'{"model": "tiny", "messages": [], "temperature": NaN}', "NaN is not valid JSON", None),
    (b'{"model": "tiny", "seed": ' + b"9" * 5000 + b"}", "4300 digits", None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}', "not valid JSON", None),
    (b"\xff\xfe{", "not valid UTF-8", None),
])
def test_invalid_text_and_pathological_json_are_400(gw, body, fragment, param):
    r = post(gw, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert fragment in err["message"]
    if param:
        assert err["param"] == param


def test_lone_surrogates_in_completions_prompts_are_400(gw):
    r = post(gw, "/v1/completions", b'{"model": "tiny", "prompt": ["ok", "bad \\ud83d"]}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt[1]"


# ---------------------------------------------------------------------------------------------- templates, model
@pytest.mark.parametrize("extra, param", [
    ({"chat_template_kwargs": {"chat_template": "{% for i in range(10**7) %}x{% endfor %}"}},
     "chat_template_kwargs.chat_template"),
    ({"chat_template": "{{ 'x' * 20000000 }}"}, "chat_template"),
    ({"chat_template_kwargs": {"tools": [], "enable_thinking": False}}, "chat_template_kwargs.tools"),
    ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "chat_template_kwargs.enable_thinking"),
])
def test_client_chat_templates_are_refused(gw, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).chat.completions.create(model="tiny", messages=MSG, max_tokens=2, extra_body=extra)
    assert e.value.body["param"] == param and param.split(".")[-1] in e.value.body["message"]


def test_documented_template_kwargs_still_work(gw):
    resp = client(gw).chat.completions.create(model="tiny", messages=MSG, max_tokens=2,
                                              extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_unknown_model_is_404_like_openai(gw):
    with pytest.raises(openai.NotFoundError) as e:
        client(gw).chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and "gpt-4o" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client(gw).completions.create(model="tiny2", prompt="x", max_tokens=2)
    assert [m.id for m in client(gw).models.list().data] == ["tiny"]


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "prompt": "x", "stop": ["a"] * 100}, "stop"),
    ({"model": "tiny", "prompt": ["x"] * 1000}, "prompt"),
    ({"model": "tiny", "prompt": "x", "n": 10_000}, "n"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 10 ** 9}, "max_tokens"),
    ({"model": "tiny", "prompt": [[-1, 5]]}, "prompt"),
])
def test_request_sizes_are_bounded(gw, body, param):
    r = post(gw, "/v1/completions", json.dumps(body).encode())
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# ---------------------------------------------------------------------------------------------- liveness
def test_health_stays_fast_while_a_hostile_request_renders(gw):
    """A 3.9 MB message: rendering and tokenising it takes seconds, off the event loop."""
    big = json.dumps({"model": "tiny", "max_tokens": 1,
                      "messages": [{"role": "user", "content": "word " * 780_000}]}).encode()
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", post(gw, "/v1/chat/completions", big)))
    t.start()
    time.sleep(0.3)
    latencies = []
    while t.is_alive() and len(latencies) < 40:
        latencies.append(health_latency(gw.url))
        time.sleep(0.05)
    t.join(60)
    assert latencies and max(latencies) < 1.0, latencies
    assert done["r"].status_code == 400 and "tokens" in done["r"].json()["error"]["message"]  # over max_prompt_tokens


def test_a_disconnected_client_cancels_its_queued_and_running_requests(gw):
    sched = gw.scheduler
    # queued: the engine is paused; the client gives up; the request leaves the queue
    sched.pause()
    before = sched.counters["cancelled"]
    with pytest.raises(openai.APITimeoutError):
        client(gw, timeout=0.5).completions.create(model="tiny", prompt="x", max_tokens=8)
    wait_for(lambda: sched.queue_depth()["evaluation"] == 0 and sched.counters["cancelled"] > before, 10,
             "queued request dropped")
    sched.resume()
    # running: a long generation stops at the next decode step once the client is gone
    batches = sched.counters["batches"]
    with pytest.raises(openai.APITimeoutError):
        client(gw, timeout=1.0).completions.create(model="tiny", prompt="count", max_tokens=4000, temperature=1.0,
                                                   extra_body={"seed": 1})
    wait_for(lambda: sched.counters["batches"] > batches, 60, "the cancelled batch to end")
    record = sched.batch_log[-1]
    assert record.generated_tokens < 4000 and record.duration_s < 30
    assert health_latency(gw.url) < 1.0
