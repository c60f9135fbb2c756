"""Layouts of the fused Megatron tensors and HF config handling, against independent constructions."""
from __future__ import annotations

import pytest
import torch

from megatron_bridge.mapping import DirectMapping, GatedMLPMapping, MappingRegistry, QKVMapping, ShapeInfo, VocabMapping
from megatron_bridge.provider import UnsupportedConfigError, bridge_for

LLAMA = dict(architectures=["LlamaForCausalLM"], vocab_size=1000, hidden_size=48, intermediate_size=80,
             num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=2, head_dim=8)


def info(heads=6, groups=2, d=4, hidden=10, vocab=11, padded=16):
    return ShapeInfo(heads, groups, d, hidden, vocab, padded)


def test_qkv_interleaves_heads_per_group():
    i = info()
    q = torch.arange(6 * 4).repeat_interleave(10).view(24, 10).float()   # row r of q: value r
    k = 100 + torch.arange(2 * 4).repeat_interleave(10).view(8, 10).float()
    v = 200 + torch.arange(2 * 4).repeat_interleave(10).view(8, 10).float()
    m = QKVMapping("qkv", "q", "k", "v")
    fused = m.to_megatron([q, k, v], i)
    # Independent construction: group g = [q heads 3g..3g+2, k_g, v_g], each head d=4 rows.
    rows = []
    for g in range(2):
        for h in range(3 * g, 3 * g + 3):
            rows += list(range(h * 4, h * 4 + 4))
        rows += [100 + g * 4 + j for j in range(4)] + [200 + g * 4 + j for j in range(4)]
    assert fused[:, 0].tolist() == rows
    back = m.to_hf(fused, i)
    assert all(a.equal(b) for a, b in zip(back, [q, k, v], strict=True))


def test_qkv_tp_shard_is_whole_query_groups():
    i = info()
    q, k, v = torch.randn(24, 10), torch.randn(8, 10), torch.randn(8, 10)
    m = QKVMapping("qkv", "q", "k", "v")
    fused = m.to_megatron([q, k, v], i)
    shard1 = m.shard(fused, True, 0, 1, 2)
    # TP rank 1 owns query group 1: q heads 3..5, k_1, v_1.
    assert shard1.equal(torch.cat([q[12:24], k[4:8], v[4:8]]))
    assert m.unshard([m.shard(fused, True, 0, r, 2) for r in range(2)], True, 0).equal(fused)


def test_gated_mlp_splits_gate_and_up_per_rank_before_concatenation():
    gate, up = torch.randn(8, 5), torch.randn(8, 5)
    m = GatedMLPMapping("fc1", "gate", "up")
    full = m.to_megatron([gate, up], info())
    assert full.equal(torch.cat([gate, up]))
    shards = [m.shard(full, True, 0, r, 2) for r in range(2)]
    assert shards[0].equal(torch.cat([gate[:4], up[:4]]))   # not gate[:8] (the classic bug)
    assert shards[1].equal(torch.cat([gate[4:], up[4:]]))
    assert m.unshard(shards, True, 0).equal(full)
    assert all(a.equal(b) for a, b in zip(m.to_hf(full, info()), [gate, up], strict=True))


def test_vocab_padding_round_trip():
    emb = torch.randn(11, 3)
    m = VocabMapping("emb", "embed")
    full = m.to_megatron([emb], info())
    assert full.shape == (16, 3) and full[11:].abs().sum() == 0
    assert m.to_hf(full, info())[0].equal(emb)
    with pytest.raises(ValueError, match="embed"):
        m.to_megatron([torch.randn(17, 3)], info())


def test_registry_wildcards_and_unknown_names():
    reg = MappingRegistry([DirectMapping("decoder.layers.*.mlp.linear_fc2.weight", "model.layers.*.mlp.down_proj.weight")])
    m, layer = reg.match("decoder.layers.12.mlp.linear_fc2.weight")
    assert m.hf_names(layer) == ["model.layers.12.mlp.down_proj.weight"]
    with pytest.raises(KeyError, match="decoder.layers.1.mlp.linear_fc1.weight"):
        reg.match("decoder.layers.1.mlp.linear_fc1.weight")


def test_every_megatron_name_of_both_families_maps():
    for cfg, qk in ((dict(LLAMA), False), (dict(LLAMA, architectures=["Qwen3ForCausalLM"]), True)):
        reg = bridge_for(cfg).registry()
        names = ["embedding.word_embeddings.weight", "output_layer.weight", "decoder.final_layernorm.weight"]
        for sub in ("input_layernorm", "self_attention.linear_qkv", "self_attention.linear_proj", "pre_mlp_layernorm",
                    "mlp.linear_fc1", "mlp.linear_fc2"):
            names.append(f"decoder.layers.3.{sub}.weight")
        if qk:
            names += ["decoder.layers.3.self_attention.q_layernorm.weight",
                      "decoder.layers.3.self_attention.k_layernorm.weight"]
        for n in names:
            m, layer = reg.match(n)
            assert all("*" not in h for h in m.hf_names(layer))


def test_provider_fields_from_hf_config():
    p = bridge_for(LLAMA).provider(LLAMA)
    assert (p.kv_channels, p.num_query_groups, p.qk_layernorm) == (8, 2, False)
    assert p.padded_vocab_size(1) == p.padded_vocab_size(2) == 1024 and p.padded_vocab_size(3) == 1152
    q = bridge_for(dict(LLAMA, architectures=["Qwen3ForCausalLM"])).provider(dict(LLAMA, tie_word_embeddings=True))
    assert q.qk_layernorm and q.share_embeddings_and_output_weights
    with pytest.raises(ValueError, match="num_key_value_heads=2"):
        p.check_layout(tp=4, pp=1)
    with pytest.raises(ValueError, match="num_hidden_layers=2"):
        p.check_layout(tp=1, pp=4)


def test_rope_variants():
    p = bridge_for(LLAMA).provider(dict(LLAMA, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0}))
    assert p.rope_scaling and p.rope_scaling_factor == 32.0 and p.rotary_base == 5e5
    p = bridge_for(LLAMA).provider(dict(LLAMA, rope_theta=1e4, rope_scaling={"type": "linear", "factor": 2.0}))
    assert p.seq_len_interpolation_factor == 2.0


@pytest.mark.parametrize("override, field", [
    (dict(architectures=["MistralForCausalLM"]), "architectures"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "rope_parameters.rope_type"),
    (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 2.0}),
     "rope_parameters.high_freq_factor"),
    (dict(architectures=["Qwen3ForCausalLM"], use_sliding_window=True), "use_sliding_window"),
])
def test_unsupported_config_names_the_field(override, field):
    cfg = dict(LLAMA, **override)
    with pytest.raises(UnsupportedConfigError) as e:
        bridge_for(cfg).provider(cfg)
    assert e.value.field == field and field in str(e.value)
