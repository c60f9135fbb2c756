"""HF engine: behaviour log-probs vs teacher forcing, greedy vs transformers' generate, seeds, stops,
weight updates from a stream, sleep."""
from __future__ import annotations

import pytest
import torch

from p2o.rollout.engine import EngineAsleep, GenerationRequest, SamplingParams
from p2o.rollout.hf_engine import HFEngine
from p2o.rollout.sampling import process_logits
from p2o.rollout.weights import iter_buckets
from tests.p2o.rollout.helpers import PROMPTS, load_model, make_engine, perturbed_state, prompt_ids


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_tokenizer):
    return make_engine(tiny_model_dir, tiny_tokenizer, max_batch_size=3)


def teacher_forced(model, prompt: list[int], response: list[int], temperature: float, top_k: int = 0) -> torch.Tensor:
    """Log-probs of `response` given `prompt` from one plain forward pass over the whole sequence."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()  # [R, V]
    r = len(response)
    logp = process_logits(logits, torch.full((r,), temperature), torch.full((r,), top_k), torch.ones(r))
    return logp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature,top_k", [(0.7, 0), (1.0, 0), (1.0, 50)])
def test_logprobs_match_teacher_forcing(engine, tiny_model_dir, tiny_tokenizer, temperature, top_k):
    model = load_model(tiny_model_dir)
    params = SamplingParams(n=2, temperature=temperature, top_k=top_k, max_new_tokens=12, seed=5)
    gens = engine.generate([GenerationRequest(p, params) for p in prompt_ids(tiny_tokenizer, PROMPTS)])
    for per_prompt in gens:
        for g in per_prompt:
            assert len(g.logprobs) == len(g.response_ids) == 12
            ref = teacher_forced(model, g.prompt_ids, g.response_ids, temperature, top_k)
            torch.testing.assert_close(torch.tensor(g.logprobs), ref, atol=2e-4, rtol=1e-5)


def test_greedy_equals_transformers_generate(engine, tiny_model_dir, tiny_tokenizer):
    model = load_model(tiny_model_dir)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=10)
    prompts = prompt_ids(tiny_tokenizer, PROMPTS)
    gens = engine.generate([GenerationRequest(p, params) for p in prompts])
    for p, per_prompt in zip(prompts, gens, strict=True):
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(p):].tolist()
        assert per_prompt[0].response_ids == ref


def test_seeded_results_do_not_depend_on_batching(tiny_model_dir, tiny_tokenizer, engine):
    prompts = prompt_ids(tiny_tokenizer, PROMPTS)
    reqs = [GenerationRequest(p, SamplingParams(n=3, temperature=1.0, max_new_tokens=6 + 3 * i, seed=100 + i))
            for i, p in enumerate(prompts)]
    together = engine.generate(reqs)                       # 12 sequences through 3 refilled slots
    no_refill = make_engine(tiny_model_dir, tiny_tokenizer, max_batch_size=5, refill=False).generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    tokens = lambda gens: [[g.response_ids for g in per] for per in gens]  # noqa: E731
    assert tokens(together) == tokens(no_refill) == tokens(alone)
    assert all(len({tuple(g.response_ids) for g in per}) == 3 for per in together)  # n samples differ
    assert engine.generate(reqs[:1])[0][0].response_ids == together[0][0].response_ids
    other_seed = GenerationRequest(prompts[0], SamplingParams(n=1, temperature=1.0, max_new_tokens=6, seed=999))
    assert engine.generate([other_seed])[0][0].response_ids != together[0][0].response_ids


def test_stop_string_and_eos(engine, tiny_tokenizer):
    prompt = prompt_ids(tiny_tokenizer, ["Tell me a story."])[0]
    free = engine.generate([GenerationRequest(prompt, SamplingParams(temperature=0.0, max_new_tokens=12))])[0][0]
    assert free.finish_reason == "length" and len(free.response_ids) == 12
    # a stop string taken from the greedy text: generation ends at the first token that completes it
    decode = lambda ids: tiny_tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    stop = decode(free.response_ids[4:6]).strip()[:3] or decode(free.response_ids[4:6])
    k = next(k for k in range(1, 13) if stop in decode(free.response_ids[:k]))
    stopped = engine.generate([GenerationRequest(prompt, SamplingParams(temperature=0.0, max_new_tokens=12,
                                                                        stop=[stop]))])[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.response_ids == free.response_ids[:k]
    assert stopped.text == decode(free.response_ids[:k]).split(stop)[0]
    # EOS: make the last greedy token an end-of-sequence token; the response ends at its first occurrence
    eos_engine = HFEngine(engine.model, tiny_tokenizer, max_batch_size=2)
    eos_engine.eos_ids = {free.response_ids[-1]}
    k = free.response_ids.index(free.response_ids[-1]) + 1
    ended = eos_engine.generate([GenerationRequest(prompt, SamplingParams(temperature=0.0, max_new_tokens=12))])[0][0]
    assert ended.finish_reason == "stop" and ended.response_ids == free.response_ids[:k]
    assert len(ended.logprobs) == k and ended.text == decode(free.response_ids[:k - 1])


def test_weight_update_from_stream_equals_model_built_from_new_weights(tiny_model_dir, tiny_tokenizer, tmp_path):
    new_state = perturbed_state(tiny_model_dir, seed=3)
    reference = load_model(tiny_model_dir)
    reference.load_state_dict(new_state, strict=False)
    reference.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    direct = HFEngine.from_pretrained(tmp_path, max_batch_size=4)

    engine = make_engine(tiny_model_dir, tiny_tokenizer, max_batch_size=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    reqs = [GenerationRequest(p, params) for p in prompt_ids(tiny_tokenizer, PROMPTS)]
    before = engine.generate(reqs)
    engine.load_weights(iter_buckets(new_state.items(), bucket_bytes=256 * 1024), version=1)
    after, expected = engine.generate(reqs), direct.generate(reqs)
    assert [g[0].response_ids for g in after] == [g[0].response_ids for g in expected]
    assert [g[0].response_ids for g in after] != [g[0].response_ids for g in before]
    assert {g[0].policy_version for g in after} == {1} and {g[0].policy_version for g in before} == {0}
    with pytest.raises(ValueError, match="older"):
        engine.load_weights(iter([]), version=0)


def test_sleep_refuses_generation_and_prompt_checks(tiny_model_dir, tiny_tokenizer):
    engine = make_engine(tiny_model_dir, tiny_tokenizer, max_prompt_tokens=8)
    engine.sleep()
    assert engine.is_sleeping
    with pytest.raises(EngineAsleep):
        engine.generate([GenerationRequest([1, 2, 3])])
    engine.wake_up()
    assert len(engine.generate([GenerationRequest([1, 2, 3], SamplingParams(max_new_tokens=2))])[0]) == 1
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        engine.generate([GenerationRequest(list(range(1, 20)))])
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([GenerationRequest([10 ** 6])])
    with pytest.raises(ValueError, match="SamplingParams.top_p"):
        SamplingParams(top_p=0.0)


def test_shared_prompts_are_prefilled_once(tiny_model_dir, tiny_tokenizer):
    """A prompt shared by several sequences (a group's n samples, or two requests with the same prompt) is run
    through the model once; the copied cache rows give the same tokens as generating each request alone."""
    engine = make_engine(tiny_model_dir, tiny_tokenizer, max_batch_size=8)
    a, b = prompt_ids(tiny_tokenizer, PROMPTS[:2])
    reqs = [GenerationRequest(a, SamplingParams(n=3, temperature=1.0, max_new_tokens=7, seed=1)),
            GenerationRequest(b, SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=2)),
            GenerationRequest(a, SamplingParams(n=2, temperature=0.8, max_new_tokens=6, seed=3))]
    prefill_rows = []
    forward = engine.model.forward

    def spy(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            prefill_rows.append(ids.shape[0])
        return forward(*args, **kwargs)
    engine.model.forward = spy
    together = engine.generate(reqs)
    engine.model.forward = forward
    assert prefill_rows == [2]  # 7 sequences, 2 distinct prompts
    alone = [engine.generate([r])[0] for r in reqs]
    assert [[g.response_ids for g in per] for per in together] == [[g.response_ids for g in per] for per in alone]
    assert [[len(g.response_ids) for g in per] for per in together] == [[7] * 3, [5] * 2, [6] * 2]
