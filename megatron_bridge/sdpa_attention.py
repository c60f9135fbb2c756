"""`SDPAttention`: Megatron-Core core attention through `torch.nn.functional.scaled_dot_product_attention`.

Contract: query [s, b, np, hn], key/value [s, b, ng, hn] (this TP rank's heads, GQA when ng < np) -> context
[s, b, np * hn], causal self-attention, the same result as Megatron's `DotProductAttention` (a drop-in in the local spec).

Why: `DotProductAttention` materialises the [b, np, s, s] scores and probabilities and keeps them for backward. On
a CPU, torch's SDPA runs a flash-style kernel that keeps only the output and a [b, np, s] log-sum-exp, so the
activation memory of attention grows with s instead of s^2 (and GQA needs no repeated K/V copy: `enable_gqa`).

Scope (what the P2O models need; anything else raises naming the setting): causal mask type only, with rows
right-padded by the caller (`megatron_bridge.forward`), so the causal mask is the only mask: the `attention_mask`
argument is ignored, as Transformer Engine's attention ignores it for the causal mask type. No attention dropout,
no packed sequences, no attention bias, no context parallelism, no sliding window, vanilla softmax, no QK-clip,
and self-attention with as many queries as keys (no KV-cache decoding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention
from megatron.core.utils import divide


def _unsupported(setting: str, value: object, expected: str) -> NotImplementedError:
    return NotImplementedError(f"SDPAttention (provider core_attention='sdpa'): unsupported {setting}={value!r}; "
                               f"expected {expected} (or use core_attention='megatron')")


class SDPAttention(MegatronModule):
    """Causal core attention via torch SDPA; constructor and forward as Megatron's `DotProductAttention`."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ):
        super().__init__(config=config)
        self.config: TransformerConfig = config
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        if attn_mask_type != AttnMaskType.causal:
            raise _unsupported("attn_mask_type", attn_mask_type, "AttnMaskType.causal")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout != 0.0:
            raise ValueError(f"SDPAttention: attention_dropout={dropout!r}; expected 0.0 (no attention dropout)")
        if config.context_parallel_size != 1:
            raise _unsupported("context_parallel_size", config.context_parallel_size, "1")
        if is_layer_window_attention(config.window_size, config.window_attn_skip_freq, layer_number):
            raise _unsupported("window_size", config.window_size, "None (full causal attention)")
        if config.softmax_type != "vanilla":
            raise _unsupported("softmax_type", config.softmax_type, "'vanilla'")
        if config.qk_clip:
            raise _unsupported("qk_clip", config.qk_clip, "False")

        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.pg_collection = pg_collection
        self.tp_group = pg_collection.tp
        world_size = pg_collection.tp.size()
        projection_size = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_partition = divide(projection_size, world_size)
        self.hidden_size_per_attention_head = divide(projection_size, config.num_attention_heads)
        self.num_attention_heads_per_partition = divide(config.num_attention_heads, world_size)
        self.num_query_groups_per_partition = divide(config.num_query_groups, world_size)
        # DotProductAttention divides the score scale by layer_number under apply_query_key_layer_scaling and
        # multiplies it back inside the (fp32) softmax: the net scale is this one.
        self.softmax_scale = 1.0 / math.sqrt(self.hidden_size_per_attention_head) if softmax_scale is None \
            else softmax_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] (sq == sk) -> context [sq, b, np * hn], query's dtype.

        `attention_mask` is not read: the causal mask is applied (see the module docstring)."""
        if packed_seq_params is not None:
            raise _unsupported("packed_seq_params", type(packed_seq_params).__name__, "None")
        if attention_bias is not None:
            raise _unsupported("attention_bias", tuple(attention_bias.shape), "None")
        if attn_mask_type is not None and attn_mask_type != AttnMaskType.causal:
            raise _unsupported("attn_mask_type", attn_mask_type, "AttnMaskType.causal")
        sq, b, heads, hn = query.shape
        if key.shape[0] != sq:
            raise _unsupported("key length", key.shape[0], f"the query length {sq}, i.e. no KV-cache decoding")
        if heads != self.num_attention_heads_per_partition or key.shape[2] != self.num_query_groups_per_partition:
            raise ValueError(f"SDPAttention: query/key heads {heads}/{key.shape[2]}; expected "
                             f"{self.num_attention_heads_per_partition}/{self.num_query_groups_per_partition} per "
                             f"tensor-parallel rank")

        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                                 enable_gqa=heads != key.shape[2])  # [b, np, sq, hn]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)  # [sq, b, np * hn]
