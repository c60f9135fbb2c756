"""The OpenAI-compatible reflection client over real HTTP: retries, backoff, circuit breaker, null content."""
from __future__ import annotations

import pytest

from p2o.config import GEPAConfig, ReflectionConfig
from p2o.gepa.reflect import CompletionFailed, CompletionUnavailable, Proposal, Reflector
from p2o.gepa.reflect_client import CircuitBreaker, ReflectionClient
from p2o.gepa.search import Search, SearchHooks, new_state
from tests.p2o.gepa.fake_servers import FakeReflectionServer, _Server, chat_response
from tests.p2o.gepa.oracle import OracleEvaluator, make_problems

pytestmark = pytest.mark.network


def config(url: str, **kw) -> ReflectionConfig:
    base = dict(base_url=url, model="reflector", timeout_s=0.5, retries=2, backoff_base_s=0.01, backoff_max_s=0.02,
                breaker_failures=2, breaker_cooldown_s=60.0)
    base.update(kw)
    return ReflectionConfig(**base)


def test_retries_then_succeeds_and_sends_extras():
    server = FakeReflectionServer(("500", "500", "ok")).start()
    try:
        delays = []
        client = ReflectionClient(config(server.url, enable_thinking=True), sleep=delays.append)
        out = client("```\nold\n```\n# Example 1\n## Inputs\nQuestion 1 about the mango topic.\n is incorrect")
        assert "```" in out.text and client.calls == 3 and len(delays) == 2
        # min(base * 2^k, cap) x uniform(0.5, 1.5)
        assert 0.005 <= delays[0] <= 0.015 and 0.01 <= delays[1] <= 0.03
        body = server.requests[0]
        assert body["chat_template_kwargs"] == {"enable_thinking": True} and body["priority"] == "reflection"
        assert body["max_tokens"] == 2048 and body["temperature"] == 0.6
    finally:
        server.stop()


def test_breaker_opens_fails_fast_and_closes_after_cooldown():
    server = FakeReflectionServer(("500",)).start()
    now = [0.0]
    try:
        client = ReflectionClient(config(server.url), sleep=lambda s: None, clock=lambda: now[0])
        for _ in range(2):
            with pytest.raises(CompletionFailed):
                client("x")
        n = len(server.requests)
        with pytest.raises(CompletionUnavailable, match="circuit breaker open"):
            client("x")
        assert len(server.requests) == n  # failed fast, nothing sent
        server.pattern = ("ok",)
        now[0] = 61.0  # cooldown over: a probe goes through and closes the breaker
        assert "new instruction" in client("```\nold\n```\n").text
        assert client.breaker.consecutive == 0 and not client.breaker.is_open
    finally:
        server.stop()


def test_bad_request_is_not_retried_and_null_content_uses_reasoning():
    calls = []

    def respond(body):
        calls.append(body)
        if len(calls) == 1:
            return 400, {"error": {"message": "context too long"}}
        resp = chat_response("", body["model"])
        resp["choices"][0]["message"] = {"role": "assistant", "content": None,
                                         "reasoning_content": "hmm</think>```\nZ\n```"}
        return 200, resp

    server = _Server(respond).start()
    try:
        client = ReflectionClient(config(server.url, breaker_failures=5), sleep=lambda s: None)
        with pytest.raises(CompletionFailed, match="400"):
            client("x")
        assert len(calls) == 1
        reflector = Reflector(client, 4096, 256)
        from p2o.gepa.reflect import ReflectionRequest
        assert reflector.propose([ReflectionRequest("", [])]) == [Proposal("ok", "Z", raw="```\nZ\n```")]
    finally:
        server.stop()


def test_breaker_state_machine():
    t = [0.0]
    b = CircuitBreaker(3, 10.0, clock=lambda: t[0])
    for _ in range(2):
        b.failure()
    assert b.allow()
    b.failure()
    assert not b.allow()
    t[0] = 10.0
    assert b.allow()  # half-open
    b.failure()  # the probe failed: open again
    assert not b.allow()
    t[0] = 25.0
    b.success()
    assert b.allow() and b.consecutive == 0


def test_search_pauses_while_the_reflection_endpoint_is_down():
    server = FakeReflectionServer(("500",) * 4 + ("ok",)).start()
    now = [0.0]
    try:
        client = ReflectionClient(config(server.url, retries=0, breaker_failures=1, breaker_cooldown_s=5.0),
                                  sleep=lambda s: None, clock=lambda: now[0])
        reflector = Reflector(client, 8192, 512)
        problems = make_problems(20)
        cfg = GEPAConfig(num_parents=1, budget_metric_calls=40, pause_poll_s=1.0, seed=0)
        events = []

        def sleep(s):
            now[0] += 6.0  # each pause outlasts the breaker's cooldown

        hooks = SearchHooks(on_pause=lambda r: events.append(r), on_resume=lambda: events.append("resumed"),
                            sleep=sleep)
        state = new_state(problems, cfg)
        Search(problems, cfg, OracleEvaluator(), reflector, state, hooks=hooks).run()
        assert any("reflection endpoint unavailable" in e for e in events if e != "resumed")
        assert "resumed" in events and state.stop_reason == "budget"
        assert state.counters.get("reflection_failed", 0) >= 1  # the call that opened the breaker
        assert state.counters.get("reflection_pauses", 0) >= 1
    finally:
        server.stop()
