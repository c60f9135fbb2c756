"""Parameter mappings between Megatron-Core and HF names and layouts.

A model family declares a literal table `{megatron_pattern: hf_pattern}` with `*` standing for the global
layer index, plus a few special mappings for fused weights. Every mapping converts between

- the *full* (unsharded) Megatron tensor, and
- the HF tensor(s) it corresponds to,

and knows how the full Megatron tensor is split over tensor-parallel ranks (`shard` / `unshard`). Layouts:

| Megatron | HF | full Megatron layout |
|---|---|---|
| `linear_qkv.weight` [(nq + 2 nkv) d, H] | `q_proj` [nq d, H], `k_proj` [nkv d, H], `v_proj` [nkv d, H] | per KV group g: q heads of g, then k_g, then v_g (`QKVMapping`) |
| `linear_fc1.weight` [2F, H] | `gate_proj` [F, H], `up_proj` [F, H] | [gate; up]; TP rank r holds [gate_r; up_r] (`GatedMLPMapping`) |
| `word_embeddings` / `output_layer` [V_pad, H] | `embed_tokens` / `lm_head` [V, H] | rows V..V_pad zero padding (`VocabMapping`) |
| everything else | same shape | identical (`DirectMapping`) |

TP sharding follows the Megatron parameter's own attributes (`tensor_model_parallel`, `partition_dim`): an
even split along `partition_dim`; `GatedMLPMapping` splits gate and up separately *before* concatenating
(splitting the concatenation would hand rank 0 all of gate and rank 1 all of up).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ShapeInfo:
    """What layout conversions need to know about the model (filled from the provider)."""

    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    hidden_size: int
    vocab_size: int
    padded_vocab_size: int


def tp_attrs(param: torch.Tensor) -> tuple[bool, int]:
    """(is tensor-parallel, partition dim) of a Megatron parameter."""
    return bool(getattr(param, "tensor_model_parallel", False)), int(getattr(param, "partition_dim", -1))


@dataclass(frozen=True)
class ParamMapping:
    """Base: one Megatron parameter pattern <-> one or more HF name patterns (`*` = layer index)."""

    megatron: str
    hf: tuple[str, ...]

    def hf_names(self, layer: str | None) -> list[str]:
        return [h.replace("*", layer) if layer is not None else h for h in self.hf]

    def to_megatron(self, hf: Sequence[torch.Tensor], info: ShapeInfo) -> torch.Tensor:
        """Full Megatron tensor from the HF tensors (in `self.hf` order)."""
        (t,) = hf
        return t

    def to_hf(self, full: torch.Tensor, info: ShapeInfo) -> list[torch.Tensor]:
        """HF tensors (in `self.hf` order) from the full Megatron tensor."""
        return [full]

    def shard(self, full: torch.Tensor, is_tp: bool, dim: int, tp_rank: int, tp: int) -> torch.Tensor:
        """This TP rank's slice of the full tensor."""
        if not is_tp or tp == 1:
            return full
        return torch.chunk(full, tp, dim=dim)[tp_rank]

    def unshard(self, shards: Sequence[torch.Tensor], is_tp: bool, dim: int) -> torch.Tensor:
        """The full tensor from every TP rank's slice (rank order)."""
        if not is_tp or len(shards) == 1:
            return shards[0]
        return torch.cat(list(shards), dim=dim)


@dataclass(frozen=True)
class DirectMapping(ParamMapping):
    """Same tensor on both sides."""

    def __init__(self, megatron: str, hf: str):
        object.__setattr__(self, "megatron", megatron)
        object.__setattr__(self, "hf", (hf,))


@dataclass(frozen=True)
class VocabMapping(ParamMapping):
    """Embedding / output rows: Megatron pads the vocabulary with zero rows up to `padded_vocab_size`."""

    def __init__(self, megatron: str, hf: str):
        object.__setattr__(self, "megatron", megatron)
        object.__setattr__(self, "hf", (hf,))

    def to_megatron(self, hf, info):
        (t,) = hf
        pad = info.padded_vocab_size - t.shape[0]
        if pad < 0:
            raise ValueError(f"{self.hf[0]}: {t.shape[0]} rows but the model's vocab_size is {info.vocab_size}")
        return torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))]) if pad else t

    def to_hf(self, full, info):
        return [full[: info.vocab_size]]


@dataclass(frozen=True)
class QKVMapping(ParamMapping):
    """q/k/v projections <-> Megatron's fused `linear_qkv`, interleaved per query group."""

    def __init__(self, megatron: str, q: str, k: str, v: str):
        object.__setattr__(self, "megatron", megatron)
        object.__setattr__(self, "hf", (q, k, v))

    def to_megatron(self, hf, info):
        q, k, v = hf
        g, d = info.num_query_groups, info.kv_channels
        per_group = info.num_attention_heads // g
        rest = tuple(q.shape[1:])
        qg = q.reshape((g, per_group * d) + rest)  # [g, heads_per_group * d, H]
        kg = k.reshape((g, d) + rest)              # [g, d, H]
        vg = v.reshape((g, d) + rest)
        return torch.cat([qg, kg, vg], dim=1).reshape((-1,) + rest)  # [g * (heads_per_group + 2) * d, H]

    def to_hf(self, full, info):
        g, d = info.num_query_groups, info.kv_channels
        per_group = info.num_attention_heads // g
        rest = tuple(full.shape[1:])
        grouped = full.reshape((g, (per_group + 2) * d) + rest)
        q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
        return [q.reshape((-1,) + rest).contiguous(), k.reshape((-1,) + rest).contiguous(),
                v.reshape((-1,) + rest).contiguous()]


@dataclass(frozen=True)
class GatedMLPMapping(ParamMapping):
    """gate/up projections <-> Megatron's `linear_fc1` ([gate; up]), split per TP rank before concatenation."""

    def __init__(self, megatron: str, gate: str, up: str):
        object.__setattr__(self, "megatron", megatron)
        object.__setattr__(self, "hf", (gate, up))

    def to_megatron(self, hf, info):
        gate, up = hf
        return torch.cat([gate, up], dim=0)

    def to_hf(self, full, info):
        gate, up = torch.chunk(full, 2, dim=0)
        return [gate.contiguous(), up.contiguous()]

    def shard(self, full, is_tp, dim, tp_rank, tp):
        if not is_tp or tp == 1:
            return full
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, tp, dim=0)[tp_rank], torch.chunk(up, tp, dim=0)[tp_rank]], dim=0)

    def unshard(self, shards, is_tp, dim):
        if not is_tp or len(shards) == 1:
            return shards[0]
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)


def wildcard_table(table: dict[str, str]) -> list[ParamMapping]:
    """`DirectMapping`s from a literal {megatron_pattern: hf_pattern} table."""
    return [DirectMapping(m, h) for m, h in table.items()]


@dataclass
class MappingRegistry:
    """Looks up the mapping of a (global) Megatron parameter name."""

    mappings: list[ParamMapping]
    _compiled: list[tuple[re.Pattern, ParamMapping]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._compiled = [(re.compile("^" + re.escape(m.megatron).replace(r"\*", r"(\d+)") + "$"), m)
                          for m in self.mappings]

    def match(self, megatron_name: str) -> tuple[ParamMapping, str | None]:
        """(mapping, layer index string or None); KeyError naming the parameter when nothing matches."""
        for pattern, mapping in self._compiled:
            m = pattern.match(megatron_name)
            if m:
                return mapping, (m.group(1) if m.groups() else None)
        raise KeyError(f"no HF mapping for Megatron parameter '{megatron_name}'")
