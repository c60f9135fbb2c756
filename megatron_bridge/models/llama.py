"""Llama (2/3.x, SmolLM2, ...) <-> Megatron-Core GPTModel.

RMSNorm, SwiGLU MLP, GQA, RoPE (default, linear or Llama-3 frequency scaling), no biases (`attention_bias` and
`mlp_bias` must be false), tied or untied embeddings. No q/k norms.
"""
from __future__ import annotations

from megatron_bridge.mapping import GatedMLPMapping, ParamMapping, QKVMapping, VocabMapping, wildcard_table
from megatron_bridge.models.common import dense_provider, require
from megatron_bridge.provider import GPTProvider, ModelBridge, register_bridge

LLAMA_TABLE = {
    "decoder.final_layernorm.weight": "model.norm.weight",
    "decoder.layers.*.input_layernorm.weight": "model.layers.*.input_layernorm.weight",
    "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight": "model.layers.*.input_layernorm.weight",
    "decoder.layers.*.self_attention.linear_proj.weight": "model.layers.*.self_attn.o_proj.weight",
    "decoder.layers.*.pre_mlp_layernorm.weight": "model.layers.*.post_attention_layernorm.weight",
    "decoder.layers.*.mlp.linear_fc1.layer_norm_weight": "model.layers.*.post_attention_layernorm.weight",
    "decoder.layers.*.mlp.linear_fc2.weight": "model.layers.*.mlp.down_proj.weight",
}


@register_bridge("LlamaForCausalLM")
class LlamaBridge(ModelBridge):
    def provider(self, hf: dict, source: str = "config.json") -> GPTProvider:
        require(hf, "mlp_bias", (False,), source, default=False)
        return dense_provider(hf, self.architecture, qk_layernorm=False, source=source)

    def mappings(self) -> list[ParamMapping]:
        return [
            VocabMapping("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
            VocabMapping("output_layer.weight", "lm_head.weight"),
            QKVMapping("decoder.layers.*.self_attention.linear_qkv.weight", q="model.layers.*.self_attn.q_proj.weight",
                       k="model.layers.*.self_attn.k_proj.weight", v="model.layers.*.self_attn.v_proj.weight"),
            GatedMLPMapping("decoder.layers.*.mlp.linear_fc1.weight", gate="model.layers.*.mlp.gate_proj.weight",
                            up="model.layers.*.mlp.up_proj.weight"),
            *wildcard_table(LLAMA_TABLE),
        ]
