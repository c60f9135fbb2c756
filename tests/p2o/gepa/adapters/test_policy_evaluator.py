"""PolicyEvaluator over real HTTP: request extras, fractional scores, unavailable vs refused requests (a refusal
is a configuration error that fails the job, never a score of 0)."""
from __future__ import annotations

import pytest

from p2o.config import RewardConfig
from p2o.data.problem import Problem
from p2o.gepa.adapters.policy_evaluator import PolicyEvaluator, v1_url
from p2o.gepa.core.evaluate import EvalItem, RequestRefused
from p2o.reward import Verifier
from tests.p2o.gepa.fake_servers import _Server, chat_response

pytestmark = pytest.mark.network


def test_scores_unavailable_and_extras():
    def respond(body):
        user = body["messages"][-1]["content"]
        if "overloaded" in user:
            return 503, {"error": {"message": "shutting down"}}
        resp = chat_response("\\boxed{4}", body["model"], version=7)
        resp["choices"].append({"index": 1, "finish_reason": "stop", "message": {"role": "assistant",
                                                                                "content": "no box, 4"}})
        return 200, resp

    server = _Server(respond).start()
    with Verifier(RewardConfig(workers=1)) as verifier:
        ev = PolicyEvaluator(server.url, "policy", verifier, system="Be exact.", thinking="on", temperature=0.7,
                             n=2, max_tokens=16, min_policy_version=7, concurrency=3)
        try:
            items = [EvalItem("Hint: add.", Problem("a", "What is 2+2?", "4")),
                     EvalItem("", Problem("c", "overloaded question", "4"))]
            ok, down = ev.evaluate(items)
        finally:
            ev.close()
            server.stop()
    assert ok.ok and ok.score == 0.5 and ok.extracted == "4" and ok.policy_version == 7  # 1 of 2 choices boxed
    assert not down.ok and "HTTP 503" in down.error
    body = next(b for b in server.requests if "2+2" in b["messages"][-1]["content"])
    assert body["messages"][0] == {"role": "system", "content": "Be exact."}
    assert body["messages"][1]["content"].startswith("Hint: add.\n\nWhat is 2+2?")
    assert body["chat_template_kwargs"] == {"enable_thinking": True} and body["min_policy_version"] == 7
    assert body["priority"] == "evaluation" and body["n"] == 2 and body["max_tokens"] == 16
    assert body["temperature"] == 0.7


def test_connection_refused_is_unavailable():
    server = _Server(lambda body: (200, {})).start()
    url = server.url
    server.stop()
    with Verifier(RewardConfig(workers=1)) as verifier:
        ev = PolicyEvaluator(url, "policy", verifier)
        out = ev.evaluate([EvalItem("", Problem("a", "q", "1"))])
        ev.close()
    assert not out[0].ok and "Connection" in out[0].error


def test_v1_url():
    assert v1_url("http://h:1") == "http://h:1/v1"
    assert v1_url("http://h:1/v1/") == "http://h:1/v1"


@pytest.mark.parametrize("status,error,keys", [
    (400, {"message": "max_tokens 12288 exceeds the gateway limit 4096", "param": "max_tokens"},
     ["gepa.eval_max_tokens = 12288", "rollout.gateway_max_tokens", "4096"]),
    (400, {"message": "prompt 0 has 5000 tokens; the gateway limit is 4096", "param": "prompt"},
     ["rollout.max_prompt_tokens", "problem 'b'", "4096"]),
    (400, {"message": "n 8 exceeds the gateway limit 4", "param": "n"}, ["gepa.eval_n = 8"]),
    (413, {"message": "request body exceeds the limit of 100 bytes"}, ["rollout.gateway_max_body_bytes"]),
    (404, {"message": "model 'x' not found"}, ["policy_model"]),
])
def test_refused_request_is_a_configuration_error_not_a_zero(status, error, keys):
    def respond(body):
        if "refuse" in body["messages"][-1]["content"]:
            return status, {"error": {**error, "type": "invalid_request_error"}}
        return 200, chat_response("\\boxed{4}", body["model"])

    server = _Server(respond).start()
    with Verifier(RewardConfig(workers=1)) as verifier:
        ev = PolicyEvaluator(server.url, "policy", verifier, max_tokens=12288, n=8)
        try:
            items = [EvalItem("", Problem("a", "What is 2+2?", "4")), EvalItem("Z" * 50, Problem("b", "refuse", "4"))]
            with pytest.raises(RequestRefused) as info:
                ev.evaluate(items)
        finally:
            ev.close()
            server.stop()
    msg = str(info.value)
    assert f"HTTP {status}" in msg and error["message"] in msg and "configuration error" in msg
    for key in keys:
        assert key in msg, (key, msg)
