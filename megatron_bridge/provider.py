"""`GPTProvider`: the Megatron-Core `TransformerConfig` + `GPTModel` arguments of one HF model, and the bridge registry.

A model family (`megatron_bridge/models/<family>.py`) registers a bridge for its HF architecture name:

    @register_bridge("Qwen3ForCausalLM")
    class Qwen3Bridge(ModelBridge):
        def provider(self, hf: dict) -> GPTProvider: ...      # from config.json
        def mappings(self) -> list[ParamMapping]: ...         # literal name table + fused mappings

`bridge_for(hf_config)` finds it. `GPTProvider.provide(layout)` builds this rank's model chunk(s).

Layer spec: the Transformer Engine spec when TE imports and CUDA is present, Megatron's local spec otherwise
(the spec function is chosen here; layers carry no backend flag). Vocabulary padding: Megatron shards the
embedding and output rows over TP, so the vocabulary is padded to a multiple of lcm(make_vocab_size_divisible_by,
tp) (128 by default: the padded size is the same for TP 1, 2, 4, 8, so checkpoints reshard between them). The
padded rows are zero and are masked out of every log-softmax here.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_bridge.mapping import MappingRegistry, ParamMapping, ShapeInfo


class UnsupportedConfigError(ValueError):
    """An HF config field/value this bridge cannot represent in Megatron-Core; `field` names it."""

    def __init__(self, field: str, value: object, expected: str, source: str = "config.json"):
        self.field, self.value = field, value
        super().__init__(f"{source}: unsupported {field}={value!r}; expected {expected}")


CORE_ATTENTION = ("sdpa", "megatron")
"""`GPTProvider.core_attention` choices."""


@dataclass
class GPTProvider:
    """Everything needed to build the Megatron-Core GPTModel of one HF checkpoint."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    """Head dim d (may differ from hidden_size / num_attention_heads)."""
    vocab_size: int
    """The HF vocabulary (before padding)."""
    max_position_embeddings: int
    layernorm_epsilon: float = 1e-6
    qk_layernorm: bool = False
    rotary_base: float = 10000.0
    rope_scaling: bool = False
    """Llama-3.x frequency scaling (Megatron's `rope_scaling`)."""
    rope_scaling_factor: float = 8.0
    seq_len_interpolation_factor: float | None = None
    """Linear position interpolation ("linear" rope scaling in HF)."""
    share_embeddings_and_output_weights: bool = True
    make_vocab_size_divisible_by: int = 128
    params_dtype: torch.dtype = torch.float32
    architecture: str = ""
    core_attention: str = "sdpa"
    """Core attention of the local (non-Transformer-Engine) spec: "sdpa" (`SDPAttention`, torch's fused
    scaled_dot_product_attention: no [b, heads, s, s] tensors kept for backward) or "megatron" (Megatron's
    `DotProductAttention`). The Transformer Engine spec ignores it."""

    def __post_init__(self) -> None:
        if self.core_attention not in CORE_ATTENTION:
            raise ValueError(f"core_attention={self.core_attention!r}; expected one of {', '.join(CORE_ATTENTION)}")

    def padded_vocab_size(self, tp: int) -> int:
        multiple = math.lcm(self.make_vocab_size_divisible_by, tp)
        return -(-self.vocab_size // multiple) * multiple

    def shape_info(self, tp: int) -> ShapeInfo:
        return ShapeInfo(self.num_attention_heads, self.num_query_groups, self.kv_channels, self.hidden_size,
                         self.vocab_size, self.padded_vocab_size(tp))

    def check_layout(self, tp: int, pp: int, vpp: int = 1) -> None:
        """ValueError naming the option when the model cannot be split this way."""
        if self.num_attention_heads % tp:
            raise ValueError(f"parallel.tp={tp} must divide num_attention_heads={self.num_attention_heads}")
        if self.num_query_groups % tp:
            raise ValueError(f"parallel.tp={tp} must divide num_key_value_heads={self.num_query_groups}")
        if self.ffn_hidden_size % tp:
            raise ValueError(f"parallel.tp={tp} must divide intermediate_size={self.ffn_hidden_size}")
        if self.num_layers % (pp * vpp):
            raise ValueError(f"parallel.pp x parallel.vpp = {pp} x {vpp} must divide num_hidden_layers={self.num_layers}")

    def transformer_config(self, layout, **overrides):
        """The `TransformerConfig` for this model under `layout` (a `ParallelLayout`)."""
        import torch.nn.functional as F
        from megatron.core.transformer import TransformerConfig

        self.check_layout(layout.tp, layout.pp, layout.vpp)
        on_gpu = torch.cuda.is_available()
        kwargs = dict(
            num_layers=self.num_layers, hidden_size=self.hidden_size, ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads, num_query_groups=self.num_query_groups,
            kv_channels=self.kv_channels, layernorm_epsilon=self.layernorm_epsilon, normalization="RMSNorm",
            qk_layernorm=self.qk_layernorm, gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
            add_qkv_bias=False, hidden_dropout=0.0, attention_dropout=0.0,
            tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
            virtual_pipeline_model_parallel_size=layout.vp_size, sequence_parallel=layout.sequence_parallel,
            params_dtype=self.params_dtype, pipeline_dtype=self.params_dtype,
            bf16=self.params_dtype == torch.bfloat16, attention_softmax_in_fp32=True,
            # perform_initialization must stay on: it also sets the TP attributes (tensor_model_parallel,
            # partition_dim) that grad-norm and conversion code read. Loaded weights overwrite the init.
            use_cpu_initialization=not on_gpu, perform_initialization=True,
            # Fusions need Apex / TE / CUDA; the plain paths are numerically the reference.
            gradient_accumulation_fusion=False, bias_activation_fusion=False, masked_softmax_fusion=False,
            apply_rope_fusion=False, bias_dropout_fusion=False, persist_layer_norm=False,
            # gloo: batched isend/irecv gives wrong results with the interleaved schedule.
            batch_p2p_comm=on_gpu, batch_p2p_sync=on_gpu,
        )
        kwargs.update(overrides)
        return TransformerConfig(**kwargs)

    def layer_spec(self):
        """TE spec when Transformer Engine is importable and CUDA present, else the local spec (its core attention
        per `core_attention`)."""
        from megatron.core.models.gpt import gpt_layer_specs as specs

        if torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None and specs.HAVE_TE:
            return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=self.qk_layernorm)
        spec = specs.get_gpt_layer_local_spec(qk_layernorm=self.qk_layernorm, normalization="RMSNorm")
        if self.core_attention == "sdpa":
            from megatron_bridge.sdpa_attention import SDPAttention

            spec.submodules.self_attention.submodules.core_attention = SDPAttention
        return spec

    def provide(self, layout, config=None) -> list:
        """This rank's GPTModel chunk(s) (one per virtual pipeline stage), fp32/bf16 per `params_dtype`."""
        from megatron.core import parallel_state as ps
        from megatron.core.models.gpt import GPTModel

        config = config or self.transformer_config(layout)
        chunks = []
        for vp in range(layout.vpp):
            vp_stage = vp if layout.vpp > 1 else None
            chunks.append(GPTModel(
                config=config, transformer_layer_spec=self.layer_spec(),
                vocab_size=self.padded_vocab_size(layout.tp), max_sequence_length=self.max_position_embeddings,
                pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                share_embeddings_and_output_weights=self.share_embeddings_and_output_weights,
                position_embedding_type="rope", rotary_base=int(self.rotary_base)
                if float(self.rotary_base).is_integer() else self.rotary_base,
                rope_scaling=self.rope_scaling, rope_scaling_factor=self.rope_scaling_factor,
                seq_len_interpolation_factor=self.seq_len_interpolation_factor, vp_stage=vp_stage,
            ))
        return chunks

    def with_dtype(self, dtype: torch.dtype) -> GPTProvider:
        return dataclasses.replace(self, params_dtype=dtype)


class ModelBridge:
    """A model family: HF config -> `GPTProvider`, and the Megatron <-> HF parameter mappings."""

    architecture: str = ""

    def provider(self, hf: dict) -> GPTProvider:
        raise NotImplementedError

    def mappings(self) -> list[ParamMapping]:
        raise NotImplementedError

    def registry(self) -> MappingRegistry:
        return MappingRegistry(self.mappings())


_BRIDGES: dict[str, Callable[[], ModelBridge]] = {}


def register_bridge(architecture: str):
    """Class decorator: register a `ModelBridge` subclass for an HF `architectures[0]` name."""

    def wrap(cls):
        cls.architecture = architecture
        _BRIDGES[architecture] = cls
        return cls

    return wrap


def bridge_for(hf: dict, source: str = "config.json") -> ModelBridge:
    """The registered bridge for an HF config dict; `UnsupportedConfigError` naming `architectures` otherwise."""
    import megatron_bridge.models  # noqa: F401  (registers the families)

    archs = hf.get("architectures") or []
    arch = archs[0] if archs else {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}.get(hf.get("model_type"))
    if arch not in _BRIDGES:
        raise UnsupportedConfigError("architectures", archs or hf.get("model_type"),
                                     "one of " + ", ".join(sorted(_BRIDGES)), source)
    return _BRIDGES[arch]()


def registered_architectures() -> list[str]:
    import megatron_bridge.models  # noqa: F401

    return sorted(_BRIDGES)


def bridge_and_provider(model_dir) -> tuple[ModelBridge, GPTProvider]:
    """(bridge, provider) for an HF model directory or config.json; raises naming an unsupported field."""
    from pathlib import Path

    from megatron_bridge.hf_io import read_config

    hf = read_config(model_dir)
    source = str(model_dir if str(model_dir).endswith(".json") else Path(model_dir) / "config.json")
    bridge = bridge_for(hf, source=source)
    return bridge, bridge.provider(hf, source=source)
