"""The OpenAI-compatible reflection client over real HTTP: retries, backoff, circuit breaker, null content, and
refusals (context overflow, max_tokens) as configuration errors, with one refit to the endpoint's token count."""
from __future__ import annotations

import pytest

from p2o.config import GEPAConfig, ReflectionConfig
from p2o.gepa.adapters.reflection_client import CircuitBreaker, ReflectionClient, prompt_counts
from p2o.gepa.core.evaluate import RequestRefused
from p2o.gepa.core.reflect import (
    CompletionFailed,
    CompletionUnavailable,
    PromptTooLong,
    Proposal,
    ReflectionExample,
    ReflectionRequest,
    Reflector,
)
from p2o.gepa.core.search import Search, SearchHooks, new_state
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
            return 400, {"error": {"message": "unsupported field 'foo'"}}
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
        from p2o.gepa.core.reflect import ReflectionRequest
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


# ----------------------------------------------------------------------------- refusals are configuration errors
def test_prompt_counts_from_our_gateway_and_vllm_messages():
    assert prompt_counts("prompt 0 has 5000 tokens; the gateway limit is 4096", 512) == (5000, 4096)
    vllm = ("This model's maximum context length is 32768 tokens. However, you requested 34000 tokens "
            "(31952 in the messages, 2048 in the completion). Please reduce the length of the messages.")
    assert prompt_counts(vllm, 2048) == (31952, 32768 - 2048)
    new = "This model's maximum context length is 32768 tokens. However, your request has 33000 input tokens."
    assert prompt_counts(new, 2048) == (33000, 32768 - 2048)
    assert prompt_counts("context too long", 2048) == (None, None)


@pytest.mark.parametrize("error,exc,needle", [
    ({"message": "prompt 0 has 9000 tokens; the gateway limit is 7680", "param": "prompt"}, PromptTooLong,
     "reflection.context_tokens = 8192"),
    ({"message": "This model's maximum context length is 8192 tokens. However, your request has 9000 input tokens."},
     PromptTooLong, "reflection.max_tokens = 512"),
    ({"message": "max_tokens 512 exceeds the gateway limit 256", "param": "max_tokens"}, RequestRefused,
     "reflection.max_tokens = 512 exceeds"),
])
def test_overflow_is_raised_not_counted_as_a_failed_reflection(error, exc, needle):
    server = _Server(lambda body: (400, {"error": error})).start()
    try:
        client = ReflectionClient(config(server.url, context_tokens=8192, max_tokens=512), sleep=lambda s: None)
        with pytest.raises(exc) as info:
            client("x")
        assert needle in str(info.value) and "configuration error" in str(info.value)
        assert len(server.requests) == 1 and client.breaker.consecutive == 0  # no retries, not a failure
        # through the Reflector: raised out of propose (the search and the job fail), never a "failed" proposal
        reflector = Reflector(client, 8192, 512)
        with pytest.raises(exc):
            reflector.propose([ReflectionRequest("", [])])
    finally:
        server.stop()


def test_unknown_model_is_a_configuration_error():
    server = _Server(lambda body: (404, {"error": {"message": f"model {body['model']!r} not found"}})).start()
    try:
        with pytest.raises(RequestRefused, match="reflection.model = 'reflector'"):
            ReflectionClient(config(server.url), sleep=lambda s: None)("x")
    finally:
        server.stop()


def _digits_request(n: int) -> ReflectionRequest:
    """Examples whose responses are digit runs: the chars/3.5 estimate undercounts them ~3.5x."""
    ex = ReflectionExample(inputs="Add the numbers.", output="1 2 3 4 5 6 7 8 9 0 " * n, answer="5", correct=False,
                           extracted="4", reason="mismatch", score=0.0)
    return ReflectionRequest("Add carefully.", [ex, ex])


@pytest.fixture(scope="module")
def small_reflection_gateway(tiny_model_dir):
    """The real gateway serving the tiny model with a small reflection context: prompts up to 600 tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.rollout.gateway import Gateway
    from p2o.rollout.hf_engine import HFEngine
    from p2o.rollout.serving import GatewayLimits

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gw = Gateway(HFEngine(model, tok, max_batch_size=4), tok, model_name="reflector",
                 limits=GatewayLimits(max_prompt_tokens=600, max_tokens=8)).start()
    yield gw, tok
    gw.stop()


def test_undercounted_meta_prompt_is_refitted_to_the_gateways_count(small_reflection_gateway):
    gw, tok = small_reflection_gateway
    client = ReflectionClient(config(gw.url, context_tokens=608, max_tokens=8, timeout_s=30.0), sleep=lambda s: None)
    reflector = Reflector(client, 608, 8)  # estimate budget 608 - 8 - 64 = 536 "tokens" = ~1876 chars of digits
    from p2o.gepa.core.reflect import build_meta_prompt

    prompt, _ = build_meta_prompt("Add carefully.", _digits_request(60).examples, reflector.budget_tokens)
    assert len(tok(prompt)["input_ids"]) > 600  # the estimate fits, the real count does not: the first call is a 400
    proposal = reflector.propose_one(_digits_request(60))
    assert proposal.status in ("ok", "unusable"), proposal  # the second, refitted call was answered
    assert gw.scheduler.counters["requests_reflection"] == 1  # exactly one request got past the limits


def test_refit_that_leaves_no_example_is_unusable(small_reflection_gateway):
    gw, _ = small_reflection_gateway
    client = ReflectionClient(config(gw.url, context_tokens=608, max_tokens=8, timeout_s=30.0), sleep=lambda s: None)
    reflector = Reflector(client, 608, 8)
    long_template = "7 " * 400  # estimated at 229 tokens, really 800: after the refit no example fits next to it
    proposal = reflector.propose_one(ReflectionRequest(long_template, _digits_request(1).examples))
    assert proposal == Proposal("unusable", detail="no example fits the reflection context")


def test_endpoint_smaller_than_the_configured_context_is_raised_without_a_refit():
    """A limit below the configured budget is a mismatch, not an estimate error: no refit hides it."""
    server = _Server(lambda body: (400, {"error": {"message": "prompt 0 has 900 tokens; the gateway limit is 500",
                                                   "param": "prompt"}})).start()
    try:
        client = ReflectionClient(config(server.url, context_tokens=8192, max_tokens=512), sleep=lambda s: None)
        with pytest.raises(PromptTooLong, match="the gateway limit is 500"):
            Reflector(client, 8192, 512).propose_one(_digits_request(1))
        assert len(server.requests) == 1
    finally:
        server.stop()
