"""Shared weights: an HF engine that adopts a trainer's tensors generates exactly what an engine holding copies
generates, before and after an optimizer step; it refuses weights modified since they were loaded; copying a
stream into it never writes into the trainer's weights; with the Megatron policy, the stream's views cover
everything but q/k/v and the scheduler's policy-version fence still holds."""
from __future__ import annotations

import pytest
import torch

from p2o.rollout.engine import GenerationRequest, SamplingParams
from p2o.rollout.hf_engine import StaleWeights
from p2o.rollout.weights import iter_buckets
from tests.p2o.rollout.helpers import PROMPTS, load_model, make_engine, perturbed_state, prompt_ids


class ViewStream(list):
    """A bucket list that says its tensors are views of the trainer's live parameters."""

    views = True


def live_views(model) -> ViewStream:
    return ViewStream([[(n, p.detach()) for n, p in model.named_parameters()]])


def copies(model) -> list:
    return list(iter_buckets(((n, p.detach().clone()) for n, p in model.named_parameters()), 1 << 16))


def sample(engine, tokenizer, seed: int):
    reqs = [GenerationRequest(p, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=seed + i))
            for i, p in enumerate(prompt_ids(tokenizer, PROMPTS))]
    gens = [g for per in engine.generate(reqs) for g in per]
    return [g.response_ids for g in gens], torch.tensor([x for g in gens for x in g.logprobs])


def optimizer_step(model, tokenizer) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=5e-2)
    ids = torch.tensor([prompt_ids(tokenizer, PROMPTS[1:2])[0]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def test_adopted_weights_generate_like_copies_and_refuse_stale_ones(tiny_model_dir, tiny_tokenizer):
    trainer = load_model(tiny_model_dir)
    trainer.load_state_dict(perturbed_state(tiny_model_dir), strict=False)   # weights the engines lack
    copied = make_engine(tiny_model_dir, tiny_tokenizer, max_batch_size=4)
    shared = make_engine(tiny_model_dir, tiny_tokenizer, max_batch_size=4)
    copied.load_weights(iter(copies(trainer)), 1)
    shared.load_weights(live_views(trainer), 1)

    names = [n for n, _ in trainer.named_parameters()]
    assert shared.shared_parameters == sorted(names)
    engine_params = dict(shared.model.named_parameters())
    for n, p in trainer.named_parameters():
        assert engine_params[n].data_ptr() == p.data_ptr(), n
    assert shared.model.lm_head.weight.data_ptr() == trainer.model.embed_tokens.weight.data_ptr()  # tied
    ids_c, lp_c = sample(copied, tiny_tokenizer, 10)
    ids_s, lp_s = sample(shared, tiny_tokenizer, 10)
    assert ids_s == ids_c
    torch.testing.assert_close(lp_s, lp_c, atol=0, rtol=0)

    optimizer_step(trainer, tiny_tokenizer)            # the trainer steps; the engine still says version 1
    with pytest.raises(StaleWeights, match="load the new weights"):
        shared.generate([GenerationRequest([1, 2, 3], SamplingParams(max_new_tokens=2))])
    assert shared.policy_version == 1

    copied.load_weights(iter(copies(trainer)), 2)
    shared.load_weights(live_views(trainer), 2)
    ids_c2, lp_c2 = sample(copied, tiny_tokenizer, 10)
    ids_s2, lp_s2 = sample(shared, tiny_tokenizer, 10)
    assert ids_s2 == ids_c2
    torch.testing.assert_close(lp_s2, lp_c2, atol=0, rtol=0)
    assert (lp_c2 - lp_c).abs().max() > 1e-3 or ids_c2 != ids_c, "the step must change the policy"


def test_copying_into_a_sharing_engine_leaves_the_trainer_alone(tiny_model_dir, tiny_tokenizer):
    trainer = load_model(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in trainer.named_parameters()}
    shared = make_engine(tiny_model_dir, tiny_tokenizer)
    shared.load_weights(live_views(trainer), 1)
    new = perturbed_state(tiny_model_dir)
    shared.load_weights(iter(iter_buckets(new.items(), 1 << 16)), 2)
    for n, p in trainer.named_parameters():
        assert torch.equal(p, before[n]), f"{n} was written through the engine"
    engine_params = dict(shared.model.named_parameters())
    for n, t in new.items():
        assert torch.equal(engine_params[n], t), n
    assert shared.shared_parameters == []
    optimizer_step(trainer, tiny_tokenizer)
    shared.generate([GenerationRequest([1, 2, 3], SamplingParams(max_new_tokens=2))])  # its own weights now


def test_a_dtype_mismatch_is_copied_not_adopted(tiny_model_dir, tiny_tokenizer):
    trainer = load_model(tiny_model_dir).to(torch.float64)
    shared = make_engine(tiny_model_dir, tiny_tokenizer)
    shared.load_weights(live_views(trainer), 1)
    assert shared.shared_parameters == []
    for n, p in shared.model.named_parameters():
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, dict(trainer.named_parameters())[n].float(), atol=0, rtol=0)


@pytest.mark.multiproc
@pytest.mark.slow
def test_megatron_views_match_copies_and_keep_the_version_fence(tiny_model_dir, tmp_path):
    pytest.importorskip("megatron.core")
    from megatron_bridge.launch import spawn
    from tests.p2o.rollout.shared_weights_worker import shared_vs_copied_worker

    out = tmp_path / "res.pt"
    spawn(shared_vs_copied_worker, 1, (str(tiny_model_dir), str(out)))
    res = torch.load(out)
    qkv = {f"model.layers.{i}.self_attn.{x}_proj.weight" for i in range(2) for x in "qkv"}
    assert set(res["not_shared"]) == qkv, res["not_shared"]
    assert res["not_shared_bytes"] == res["qkv_bytes"]
    for k in ("before", "after"):
        assert res[f"ids_shared_{k}"] == res[f"ids_copied_{k}"]
        torch.testing.assert_close(res[f"lp_shared_{k}"], res[f"lp_copied_{k}"], atol=0, rtol=0)
    assert res["moved"] > 1e-3, "the training step must change the policy"
    assert res["stale_refused"]
    assert res["fence_waited"] and res["fenced_version"] == 1
    assert res["fenced_ids"] == res["fence_ref_ids"]
    torch.testing.assert_close(res["fenced_lp"], res["fence_ref_lp"], atol=0, rtol=0)
