"""The weight stream: bucketing, name normalisation, in-place loading into an HF model, coverage."""
from __future__ import annotations

import pytest
import torch

from p2o.rollout.weights import HFWeightLoader, WeightCoverage, iter_buckets, normalize_name, state_dict_buckets
from tests.p2o.rollout.helpers import load_model


def test_iter_buckets_respects_size_and_order():
    named = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 100, 1])]  # fp32: 4 bytes each
    buckets = list(iter_buckets(named, bucket_bytes=80))
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4"], ["t5"]]
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets(named, 0))


def test_normalize_name_strips_wrappers():
    assert normalize_name("module._orig_mod.model.norm.weight") == "model.norm.weight"
    assert normalize_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"


def test_loader_copies_in_place_with_tied_embeddings(tiny_model_dir):
    src, dst = load_model(tiny_model_dir), load_model(tiny_model_dir)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    ptr = dst.model.embed_tokens.weight.data_ptr()
    cov = HFWeightLoader(dst).load(state_dict_buckets(src, bucket_bytes=64 * 1024))
    assert cov.missing == [] and cov.tensors == len(list(src.named_parameters()))
    assert dst.model.embed_tokens.weight.data_ptr() == ptr  # no reallocation
    assert dst.lm_head.weight is dst.model.embed_tokens.weight
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    # a stream naming the tied head instead of the embedding writes the same tensor
    head_only = [[("lm_head.weight", torch.zeros_like(src.lm_head.weight))]]
    cov = HFWeightLoader(dst).load(head_only)
    assert "model.embed_tokens.weight" in cov.written and float(dst.model.embed_tokens.weight.abs().sum()) == 0


def test_loader_errors_name_the_tensor(tiny_model_dir):
    model = load_model(tiny_model_dir)
    loader = HFWeightLoader(model)
    with pytest.raises(KeyError, match="model.layers.9.mlp.up_proj.weight"):
        loader.load([[("model.layers.9.mlp.up_proj.weight", torch.zeros(1))]])
    with pytest.raises(ValueError, match=r"model.norm.weight.*\(3,\)"):
        loader.load([[("model.norm.weight", torch.zeros(3))]])


def test_coverage_reports_missing():
    cov = WeightCoverage(expected={"a", "b", "c"}, written={"a"})
    assert cov.missing == ["b", "c"]
    with pytest.raises(ValueError, match="sleep level 2.*b, c"):
        cov.require_complete("sleep level 2")
    WeightCoverage(expected={"a"}, written={"a"}).require_complete("x")
