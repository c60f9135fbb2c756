"""Qwen3 (dense) <-> Megatron-Core GPTModel.

Qwen3 is Llama-shaped plus RMSNorm on each head's queries and keys (`q_norm`, `k_norm`, Megatron's
`qk_layernorm`), an explicit `head_dim` (often != hidden_size / num_attention_heads, e.g. 128 for Qwen3-4B with
hidden 2560 and 32 heads), no QKV bias (unlike Qwen2) and, for the small models, tied embeddings.
"""
from __future__ import annotations

from megatron_bridge.mapping import GatedMLPMapping, ParamMapping, QKVMapping, VocabMapping, wildcard_table
from megatron_bridge.models.common import dense_provider, require
from megatron_bridge.provider import GPTProvider, ModelBridge, register_bridge

# Megatron name (local spec; TE spec aliases fuse the norms into the following linear) -> HF name.
QWEN3_TABLE = {
    "decoder.final_layernorm.weight": "model.norm.weight",
    "decoder.layers.*.input_layernorm.weight": "model.layers.*.input_layernorm.weight",
    "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight": "model.layers.*.input_layernorm.weight",
    "decoder.layers.*.self_attention.q_layernorm.weight": "model.layers.*.self_attn.q_norm.weight",
    "decoder.layers.*.self_attention.k_layernorm.weight": "model.layers.*.self_attn.k_norm.weight",
    "decoder.layers.*.self_attention.linear_proj.weight": "model.layers.*.self_attn.o_proj.weight",
    "decoder.layers.*.pre_mlp_layernorm.weight": "model.layers.*.post_attention_layernorm.weight",
    "decoder.layers.*.mlp.linear_fc1.layer_norm_weight": "model.layers.*.post_attention_layernorm.weight",
    "decoder.layers.*.mlp.linear_fc2.weight": "model.layers.*.mlp.down_proj.weight",
}


@register_bridge("Qwen3ForCausalLM")
class Qwen3Bridge(ModelBridge):
    def provider(self, hf: dict, source: str = "config.json") -> GPTProvider:
        require(hf, "use_sliding_window", (False, None), source, default=False)
        return dense_provider(hf, self.architecture, qk_layernorm=True, source=source)

    def mappings(self) -> list[ParamMapping]:
        return [
            VocabMapping("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
            VocabMapping("output_layer.weight", "lm_head.weight"),
            QKVMapping("decoder.layers.*.self_attention.linear_qkv.weight", q="model.layers.*.self_attn.q_proj.weight",
                       k="model.layers.*.self_attn.k_proj.weight", v="model.layers.*.self_attn.v_proj.weight"),
            GatedMLPMapping("decoder.layers.*.mlp.linear_fc1.weight", gate="model.layers.*.mlp.gate_proj.weight",
                            up="model.layers.*.mlp.up_proj.weight"),
            *wildcard_table(QWEN3_TABLE),
        ]
