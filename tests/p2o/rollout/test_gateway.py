"""The gateway over real HTTP on 127.0.0.1 with the real `openai` client (sync and async), HF engine on the
tiny model: chat + completions, n > 1, seeds, priorities, pause/queue, version fence, errors, limits, auth."""
from __future__ import annotations

import asyncio
import copy
import threading
import time

import httpx
import openai
import pytest

from p2o.rollout.engine import GenerationRequest, SamplingParams
from p2o.rollout.gateway import Gateway
from p2o.rollout.scheduler import PRIORITIES, SchedulerClosed
from p2o.rollout.serving import GatewayLimits
from p2o.rollout.weights import iter_buckets
from tests.p2o.rollout.helpers import make_engine, perturbed_state

pytestmark = pytest.mark.network

MSG = [{"role": "user", "content": "What is 2 + 3?"}]


def start(tiny_model_dir, tokenizer, **kwargs) -> Gateway:
    engine = make_engine(tiny_model_dir, tokenizer, max_batch_size=kwargs.pop("max_batch_size", 8))
    return Gateway(engine, tokenizer, model_name="tiny", **kwargs).start()


def client(gw: Gateway, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", **kwargs)


def aclient(gw: Gateway, **kwargs) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", **kwargs)


@pytest.fixture(scope="module")
def gw(tiny_model_dir, tiny_tokenizer):
    g = start(tiny_model_dir, tiny_tokenizer)
    yield g
    g.stop()


def wait_until(cond, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------- endpoints
def test_chat_completion_matches_in_process_engine(gw, tiny_tokenizer):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="tiny", messages=MSG, n=3, max_tokens=8, temperature=1.0, seed=11, logprobs=True,
        extra_body={"return_token_ids": True, "chat_template_kwargs": {"enable_thinking": False}})
    assert raw.headers["x-policy-version"] == "0"
    resp = raw.parse()
    assert resp.model_extra["policy_version"] == 0 and len(resp.choices) == 3
    expected_prompt = tiny_tokenizer(tiny_tokenizer.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True),
                                     add_special_tokens=False)["input_ids"]
    direct = gw.engine.generate([GenerationRequest(expected_prompt, SamplingParams(n=3, temperature=1.0,
                                                                                   max_new_tokens=8, seed=11))])[0]
    for choice, g in zip(resp.choices, direct, strict=True):
        assert choice.model_extra["prompt_token_ids"] == expected_prompt
        assert choice.model_extra["token_ids"] == g.response_ids
        assert choice.message.content == g.text and choice.finish_reason == g.finish_reason
        assert [t.logprob for t in choice.logprobs.content] == pytest.approx(g.logprobs, abs=1e-6)
    assert resp.usage.prompt_tokens == len(expected_prompt) and resp.usage.completion_tokens == 24


def test_completions_text_token_ids_and_batched_prompts(gw, tiny_tokenizer):
    c = client(gw)
    ids = tiny_tokenizer("Count: 1 2 3", add_special_tokens=False)["input_ids"]
    by_text = c.completions.create(model="tiny", prompt="Count: 1 2 3", max_tokens=6, temperature=0, logprobs=1)
    by_ids = c.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text and by_text.choices[0].finish_reason == "length"
    lp = by_text.choices[0].logprobs
    assert len(lp.token_logprobs) == 6 and all(x < 0 for x in lp.token_logprobs) and lp.text_offset[0] == 0
    multi = c.completions.create(model="tiny", prompt=["Count: 1 2 3", "hello"], n=2, max_tokens=4, seed=3)
    assert [ch.index for ch in multi.choices] == [0, 1, 2, 3]
    assert c.models.list().data[0].id == "tiny"
    assert httpx.get(gw.url + "/health").json() == {"status": "ok", "policy_version": 0}


def test_chat_template_kwargs_reach_the_template(tiny_model_dir, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if enable_thinking is defined and enable_thinking %} <think>{% endif %}")
    gw = start(tiny_model_dir, tok, limits=GatewayLimits(chat_template_kwargs={"enable_thinking": False}))
    try:
        c = client(gw)
        ids = lambda **kw: c.chat.completions.create(  # noqa: E731
            model="tiny", messages=MSG, max_tokens=1, extra_body={"return_token_ids": True, **kw}
        ).choices[0].model_extra["prompt_token_ids"]
        off, on = ids(), ids(chat_template_kwargs={"enable_thinking": True})
        assert tok.decode(off) == MSG[0]["content"] and tok.decode(on) == MSG[0]["content"] + " <think>"
    finally:
        gw.stop()


async def _seeded(gw: Gateway) -> list[list[str]]:
    c = aclient(gw)
    calls = [c.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, n=2, seed=s) for s in (1, 1, 2)]
    calls += [c.completions.create(model="tiny", prompt="abc", max_tokens=8, seed=s) for s in (5, 5)]
    out = await asyncio.gather(*calls)
    await c.close()
    return [[getattr(ch, "text", None) or ch.message.content for ch in r.choices] for r in out]


def test_async_client_seeds_are_deterministic(gw):
    a, b, other, c1, c2 = asyncio.run(_seeded(gw))
    assert a == b and a != other and a[0] != a[1] and c1 == c2


# ---------------------------------------------------------------------------------------------- scheduling
async def _flood_then_training(gw: Gateway) -> tuple[list, object]:
    c = aclient(gw, max_retries=0)
    gw.scheduler.pause()
    flood = [asyncio.ensure_future(c.completions.create(model="tiny", prompt=f"q{i}", max_tokens=12, temperature=1.0,
                                                        extra_body={"priority": "evaluation"}))
             for i in range(24)]
    await asyncio.to_thread(wait_until, lambda: gw.scheduler.queue_depth()["evaluation"] == 24)
    gw.scheduler.resume()
    await asyncio.to_thread(wait_until, lambda: len(gw.scheduler.batch_log) >= 2)
    training = await c.completions.create(model="tiny", prompt="train", max_tokens=12, temperature=1.0,
                                          extra_headers={"X-Priority": "training"})
    remaining = gw.scheduler.queue_depth()["evaluation"]
    done = await asyncio.gather(*flood)
    await c.close()
    return done, (training, remaining)


def test_training_requests_overtake_an_evaluation_flood(tiny_model_dir, tiny_tokenizer):
    gw = start(tiny_model_dir, tiny_tokenizer, max_batch_sequences=2)
    try:
        done, (training, remaining) = asyncio.run(_flood_then_training(gw))
        assert len(done) == 24 and remaining > 0, "the flood must still be queued when training is served"
        log = list(gw.scheduler.batch_log)
        rec = next(r for r in log if any(rid.startswith(training.id) for rid in r.request_ids))
        waited = dict(zip(rec.request_ids, rec.waited_batches, strict=True))[f"{training.id}-0"]
        assert waited == 0, "a training request is served by the next batch after it arrives"
        assert any(r.index > rec.index and PRIORITIES["evaluation"] in r.priorities for r in log)
        assert max(w for r in log for w in r.waited_batches) >= 5  # evaluation requests did wait
        # the in-process API of the training loop gets the same treatment
        futures = gw.scheduler.submit([GenerationRequest([5, 6, 7], SamplingParams(max_new_tokens=2))],
                                      priority="training")
        assert len(futures[0].result(timeout=60)) == 1
    finally:
        gw.stop()


def test_requests_queue_while_paused_and_join_the_training_batch(tiny_model_dir, tiny_tokenizer):
    gw = start(tiny_model_dir, tiny_tokenizer, max_batch_sequences=16)
    try:
        gw.scheduler.pause()
        assert gw.engine.is_sleeping and httpx.get(gw.url + "/health").json()["status"] == "paused"
        results: list = []
        threads = [threading.Thread(target=lambda i=i: results.append(client(gw).chat.completions.create(
            model="tiny", messages=MSG, max_tokens=4, seed=i, extra_body={"priority": "reflection"})))
            for i in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: gw.scheduler.queue_depth()["reflection"] == 3)
        time.sleep(0.3)
        assert results == [] and len(gw.scheduler.batch_log) == 0  # nothing served while asleep
        futures = gw.scheduler.submit([GenerationRequest([1, 2, 3], SamplingParams(n=4, max_new_tokens=4))] * 2,
                                      priority="training")
        gw.scheduler.resume()
        training = [f.result(timeout=60) for f in futures]
        for t in threads:
            t.join(60)
        assert len(results) == 3 and all(len(t) == 4 for t in training)
        first = gw.scheduler.batch_log[0]
        assert first.priorities == [0, 0, 2, 2, 2] and first.sequences == 11  # one batch: training first
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'p2o_gateway_requests_total{priority="reflection"} 3' in metrics
        assert "p2o_gateway_batches_total 1" in metrics
    finally:
        gw.stop()


def test_version_fence_across_a_weight_update(tiny_model_dir, tiny_tokenizer, tmp_path):
    gw = start(tiny_model_dir, tiny_tokenizer)
    frozen = start(tiny_model_dir, tiny_tokenizer)  # the Self-Ref reflection model: never updated
    try:
        c = client(gw, max_retries=0)
        fenced: list = []
        t = threading.Thread(target=lambda: fenced.append(c.completions.with_raw_response.create(
            model="tiny", prompt="fence", max_tokens=6, temperature=0, extra_body={"min_policy_version": 1})))
        t.start()
        wait_until(lambda: sum(gw.scheduler.queue_depth().values()) == 1)
        old = c.completions.create(model="tiny", prompt="fence", max_tokens=6, temperature=0)
        assert old.model_extra["policy_version"] == 0 and fenced == []  # later requests overtake the fenced one
        with pytest.raises(openai.APIStatusError) as err:
            c.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"min_policy_version": 7,
                                                                                    "timeout_s": 0.3})
        assert err.value.status_code == 504
        new_state = perturbed_state(tiny_model_dir, seed=4)
        gw.scheduler.pause()
        gw.scheduler.update_weights(iter_buckets(new_state.items(), 128 * 1024), version=1)
        gw.scheduler.resume()
        t.join(60)
        resp = fenced[0]
        assert resp.headers["x-policy-version"] == "1" and resp.parse().model_extra["policy_version"] == 1
        reference = make_engine(tiny_model_dir, tiny_tokenizer)
        reference.load_weights(iter([list(new_state.items())]), version=1)
        ids = tiny_tokenizer("fence", add_special_tokens=False)["input_ids"]
        expected = reference.generate([GenerationRequest(ids, SamplingParams(temperature=0, max_new_tokens=6))])[0][0]
        assert resp.parse().choices[0].text == expected.text != old.choices[0].text
        still = client(frozen).completions.create(model="tiny", prompt="fence", max_tokens=6, temperature=0)
        assert still.choices[0].text == old.choices[0].text and still.model_extra["policy_version"] == 0
    finally:
        gw.stop()
        frozen.stop()


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("body,fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"max_tokens": 3}', "prompt"),
    (b'{"prompt": "x", "n": 0}', "'n'"),
    (b'{"prompt": "x", "temperature": -1}', "temperature"),
    (b'{"prompt": "x", "max_tokens": 100000}', "max_tokens"),
    (b'{"prompt": "x", "priority": "vip"}', "priority"),
    (b'{"prompt": "x", "stream": true}', "stream"),
    (b'{"prompt": [99999999]}', "token ids"),
    (b'{"prompt": ""}', "empty"),
])
def test_malformed_completion_bodies_are_400(gw, body, fragment):
    r = httpx.post(gw.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


def test_chat_errors_and_body_limit(tiny_model_dir, tiny_tokenizer):
    gw = start(tiny_model_dir, tiny_tokenizer, limits=GatewayLimits(max_body_bytes=2000))
    try:
        r = httpx.post(gw.url + "/v1/chat/completions", json={"messages": []})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = httpx.post(gw.url + "/v1/chat/completions", json={"messages": [{"role": "user"}], "top_logprobs": 3})
        assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
        r = httpx.post(gw.url + "/v1/completions", json={"prompt": "x" * 5000})
        assert r.status_code == 413
        ok = client(gw).chat.completions.create(model="tiny", messages=MSG, max_tokens=2)  # still serving
        assert ok.choices[0].finish_reason in ("stop", "length")
    finally:
        gw.stop()


def test_queue_full_is_429_and_shutdown_is_503(tiny_model_dir, tiny_tokenizer):
    gw = start(tiny_model_dir, tiny_tokenizer, max_queue=2)
    statuses: list[int] = []

    def queued() -> None:
        r = httpx.post(gw.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
        statuses.append(r.status_code)

    gw.scheduler.pause()
    threads = [threading.Thread(target=queued) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: gw.scheduler.queue_depth()["evaluation"] == 2)
    with pytest.raises(openai.RateLimitError) as err:
        client(gw, max_retries=0).completions.create(model="tiny", prompt="x", max_tokens=2)
    assert "queue full" in err.value.message
    assert "p2o_gateway_rejected_queue_full_total 1" in httpx.get(gw.url + "/metrics").text
    # the training loop's in-process requests are never refused by the HTTP bound
    training = gw.scheduler.submit([GenerationRequest([1, 2], SamplingParams(max_new_tokens=2))] * 3)
    gw.stop()
    for t in threads:
        t.join(60)
    assert statuses == [503, 503]
    for f in training:
        with pytest.raises(SchedulerClosed):
            f.result(timeout=10)
    with pytest.raises(SchedulerClosed):
        gw.scheduler.submit([GenerationRequest([1])])


def test_bearer_token_from_environment(tiny_model_dir, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("P2O_TEST_GATEWAY_TOKEN", "s3cret")
    gw = start(tiny_model_dir, tiny_tokenizer, token_env="P2O_TEST_GATEWAY_TOKEN")
    try:
        with pytest.raises(openai.AuthenticationError):
            client(gw, max_retries=0).models.list()
        good = openai.OpenAI(base_url=gw.url + "/v1", api_key="s3cret")
        assert good.completions.create(model="tiny", prompt="x", max_tokens=1).choices[0].text is not None
        assert httpx.get(gw.url + "/health").status_code == 200
    finally:
        gw.stop()
