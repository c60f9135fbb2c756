"""HF safetensors -> Megatron parameters, streaming: one HF tensor group in memory at a time.

Every rank reads only the tensors of the parameters it owns (its PP stage's layers; TP shards are cut from
the full tensor), so the model is never held twice. Megatron parameter names are made *global* first
(`decoder.layers.<local>` -> `decoder.layers.<global>` using each layer's `layer_number`), then looked up in the
family's mapping table.

Tied embeddings: with PP > 1 the last stage owns a separate `output_layer.weight` that Megatron keeps equal to the
first stage's embedding (grads are all-reduced over the embedding group); both are loaded from
`model.embed_tokens.weight`, and an HF `lm_head.weight` (if present) is ignored.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import torch

from megatron_bridge.hf_io import CheckpointError, HFCheckpoint
from megatron_bridge.mapping import ParamMapping, tp_attrs
from megatron_bridge.provider import GPTProvider, ModelBridge

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
# HF tensors that carry no parameters (buffers some older exports include).
IGNORABLE_HF = (re.compile(r".*rotary_emb\.inv_freq$"),)


def iter_global_params(chunks: list) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(global Megatron name, parameter) of this rank's model chunk(s), in chunk then module order."""
    for chunk in chunks:
        layers = chunk.decoder.layers
        for name, param in chunk.named_parameters():
            m = _LAYER.match(name)
            if m:
                global_idx = layers[int(m.group(1))].layer_number - 1
                name = f"decoder.layers.{global_idx}." + name[m.end():]
            yield name, param


def resolve(bridge_registry, provider: GPTProvider, megatron_name: str) -> tuple[ParamMapping, list[str]]:
    """(mapping, HF names) of a global Megatron name; tied output weights map to the embedding."""
    if megatron_name == OUTPUT and provider.share_embeddings_and_output_weights:
        megatron_name = EMBEDDING
    mapping, layer = bridge_registry.match(megatron_name)
    return mapping, mapping.hf_names(layer)


def full_shape(param: torch.Tensor, tp: int) -> tuple[int, ...]:
    """The unsharded Megatron shape of a local parameter."""
    is_tp, dim = tp_attrs(param)
    shape = list(param.shape)
    if is_tp and tp > 1:
        shape[dim] *= tp
    return tuple(shape)


def expected_hf_shapes(mapping: ParamMapping, shape: tuple[int, ...], info) -> list[tuple[int, ...]]:
    """HF tensor shapes a full Megatron tensor of `shape` corresponds to (computed on the meta device)."""
    return [tuple(t.shape) for t in mapping.to_hf(torch.empty(shape, device="meta"), info)]


def load_hf_weights(chunks: list, bridge: ModelBridge, provider: GPTProvider, ckpt: HFCheckpoint, layout) -> set[str]:
    """Copy this rank's parameters from `ckpt`; returns the HF names consumed. CheckpointError names bad tensors."""
    registry = bridge.registry()
    info = provider.shape_info(layout.tp)
    consumed: set[str] = set()
    with torch.no_grad():
        for name, param in iter_global_params(chunks):
            mapping, hf_names = resolve(registry, provider, name)
            want = expected_hf_shapes(mapping, full_shape(param, layout.tp), info)
            tensors = []
            for hf_name, shape in zip(hf_names, want, strict=True):
                t = ckpt.get(hf_name)
                if tuple(t.shape) != shape:
                    raise CheckpointError(f"tensor '{hf_name}' in {ckpt.dir} has shape {tuple(t.shape)}; the model "
                                          f"({provider.architecture}) expects {shape} for Megatron '{name}'")
                tensors.append(t)
                consumed.add(hf_name)
            full = mapping.to_megatron(tensors, info)
            is_tp, dim = tp_attrs(param)
            param.data.copy_(mapping.shard(full, is_tp, dim, layout.tp_rank, layout.tp))
            del tensors, full
    return consumed


def check_all_consumed(ckpt: HFCheckpoint, consumed: set[str], provider: GPTProvider) -> None:
    """CheckpointError naming HF tensors that no Megatron parameter used (a different architecture or a typo)."""
    extra = []
    for name in ckpt.names():
        if name in consumed or any(p.match(name) for p in IGNORABLE_HF):
            continue
        if name == "lm_head.weight" and provider.share_embeddings_and_output_weights:
            continue
        extra.append(name)
    if extra:
        shown = ", ".join(f"'{n}'" for n in extra[:5]) + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
        raise CheckpointError(f"unexpected tensor(s) {shown} in the HF checkpoint {ckpt.dir}: the "
                              f"{provider.architecture} mapping has no Megatron parameter for them")


def load_hf_checkpoint(chunks: list, bridge: ModelBridge, provider: GPTProvider, model_dir, layout) -> None:
    """Collective: load every rank's parameters from the HF directory and check nothing was left over."""
    import torch.distributed as dist

    ckpt = HFCheckpoint(model_dir)
    try:
        consumed = load_hf_weights(chunks, bridge, provider, ckpt, layout)
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, sorted(consumed))
            consumed = set().union(*map(set, gathered))
        check_all_consumed(ckpt, consumed, provider)
    finally:
        ckpt.close()
