"""HF config fields shared by the dense decoder families (Llama, Qwen3): reading and rejecting them."""
from __future__ import annotations

from typing import Any

from megatron_bridge.provider import GPTProvider, UnsupportedConfigError

# Megatron's Llama-3 rope scaling has these constants built in (rotary_pos_embedding._apply_scaling).
_LLAMA3_ROPE_CONSTANTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def require(hf: dict, field: str, allowed: tuple, source: str, default: Any = None) -> Any:
    """hf[field] (or default), raising `UnsupportedConfigError` naming the field when not in `allowed`."""
    value = hf.get(field, default)
    if value not in allowed:
        raise UnsupportedConfigError(field, value, "one of " + ", ".join(repr(a) for a in allowed), source)
    return value


def rope_fields(hf: dict, source: str) -> dict:
    """GPTProvider rope arguments from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    prefix = "rope_parameters"
    if not params:
        params = dict(hf.get("rope_scaling") or {})
        prefix = "rope_scaling"
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    out: dict = {"rotary_base": float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))}
    if rope_type == "default":
        pass
    elif rope_type == "linear":
        out["seq_len_interpolation_factor"] = float(params["factor"])
    elif rope_type == "llama3":
        for key, expected in _LLAMA3_ROPE_CONSTANTS.items():
            if float(params.get(key, expected)) != expected:
                raise UnsupportedConfigError(f"{prefix}.{key}", params.get(key), f"{expected} (Megatron-Core's "
                                             "built-in Llama-3 rope scaling constant)", source)
        out["rope_scaling"] = True
        out["rope_scaling_factor"] = float(params.get("factor", 8.0))
    else:
        raise UnsupportedConfigError(f"{prefix}.rope_type", rope_type, "one of 'default', 'linear', 'llama3'", source)
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if float(partial) != 1.0:
        raise UnsupportedConfigError("partial_rotary_factor", partial, "1.0", source)
    return out


def dense_provider(hf: dict, architecture: str, qk_layernorm: bool, source: str) -> GPTProvider:
    """Common GPTProvider fields of a dense RMSNorm + SwiGLU + GQA + RoPE decoder."""
    require(hf, "hidden_act", ("silu",), source, default="silu")
    require(hf, "attention_bias", (False,), source, default=False)
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"):
        if not isinstance(hf.get(key), int) or hf[key] <= 0:
            raise UnsupportedConfigError(key, hf.get(key), "a positive integer", source)
    heads = hf["num_attention_heads"]
    groups = hf.get("num_key_value_heads") or heads
    if heads % groups:
        raise UnsupportedConfigError("num_key_value_heads", groups, f"a divisor of num_attention_heads={heads}", source)
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    return GPTProvider(
        num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"], ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=heads, num_query_groups=groups, kv_channels=head_dim, vocab_size=hf["vocab_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-6)), qk_layernorm=qk_layernorm,
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
        architecture=architecture, **rope_fields(hf, source),
    )
