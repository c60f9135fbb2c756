"""Weight export stream: Megatron parameters -> HF-named full tensors, in buckets of about `bucket_bytes`.

    stream = WeightExport(chunks, bridge, provider, layout, bucket_bytes=256 << 20, version=step)
    for bucket in stream:                 # list[(hf_name, Tensor)], collective over TP x PP
        engine_model.load_state_dict(dict(bucket), strict=False)
    # or: load_hf_weights_stream(hf_model, stream)

Protocol (every rank of the model-parallel group iterates the stream together; every rank receives every
tensor, so any rank can feed an engine):

1. each PP stage lists its parameters (global names, full shapes); the lists are exchanged over the PP group;
2. stage by stage, parameter by parameter: the owning stage all-gathers the TP shards and un-shards them with
   the parameter's mapping (GLU `linear_fc1` re-chunked per rank: [gate_0; up_0; gate_1; up_1] -> [gate; up]);
   the full Megatron tensor is broadcast from the owner to the other stages;
3. the mapping turns it into HF tensors (QKV split per query group, vocab padding removed), appended to the
   current bucket, which is yielded once it holds >= `bucket_bytes`.

Peak extra memory: one bucket plus the largest full tensor (and its TP shards while gathering). The tied output
layer of the last stage is not exported (HF ties `lm_head` to `embed_tokens`).

Views (`views=True`, for an engine in the same process that adopts the tensors instead of copying them, see
`p2o.rollout.hf_engine`): where this rank owns the whole parameter (TP=1, its own PP stage) and the HF layout is
a slice of the Megatron one, the yielded tensor is a view of the live parameter: the embedding (rows up to the
real vocabulary), norms, `o_proj`, `down_proj`, and `gate_proj`/`up_proj` as the two halves of `linear_fc1`.
q/k/v are copies (they are interleaved per query group in `linear_qkv`), as is everything gathered over TP or
received from another stage. Views are read-only to the consumer, and they change when the optimizer steps:
the consumer must reload (the training loop syncs after every step) before it reads them again. Without
`views` every tensor is a fresh copy.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist

from megatron_bridge.hf_io import CheckpointError, TensorSpec
from megatron_bridge.mapping import tp_attrs
from megatron_bridge.provider import GPTProvider, ModelBridge
from megatron_bridge.weights import OUTPUT, expected_hf_shapes, full_shape, iter_global_params, resolve

log = logging.getLogger(__name__)

WeightBucket = list[tuple[str, torch.Tensor]]


class WeightExport:
    """An iterator over buckets of (hf_name, full tensor); `version` tags the policy version exported."""

    def __init__(self, chunks: list, bridge: ModelBridge, provider: GPTProvider, layout, bucket_bytes: int,
                 version: int = 0, views: bool = False):
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
        self.chunks, self.bridge, self.provider, self.layout = chunks, bridge, provider, layout
        self.bucket_bytes, self.version = bucket_bytes, version
        self.views = views
        """Yield views of live parameters where layouts allow (see the module docstring); set before iterating."""
        self._it: Iterator[WeightBucket] | None = None
        self._stage_meta: list | None = None

    def __iter__(self) -> WeightExport:
        return self

    def __next__(self) -> WeightBucket:
        if self._it is None:
            self._it = self._buckets()
        return next(self._it)

    def _local_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        tied = self.provider.share_embeddings_and_output_weights
        return [(n, p) for n, p in iter_global_params(self.chunks) if not (tied and n == OUTPUT)]

    def _stages(self) -> list[list[tuple[str, tuple[int, ...], str]]]:
        """Per PP stage: (global Megatron name, full shape, dtype name) of its exported parameters (collective)."""
        if self._stage_meta is None:
            meta = [(n, full_shape(p, self.layout.tp), str(p.dtype).removeprefix("torch."))
                    for n, p in self._local_params()]
            if self.layout.pp > 1:
                stages: list = [None] * self.layout.pp
                dist.all_gather_object(stages, meta, group=self.layout.pp_group)
            else:
                stages = [meta]
            self._stage_meta = stages
        return self._stage_meta

    def plan(self) -> list[TensorSpec]:
        """(HF name, shape, dtype) of every tensor the stream will yield, in order (collective; no data moves)."""
        registry = self.bridge.registry()
        info = self.provider.shape_info(self.layout.tp)
        specs = []
        for entries in self._stages():
            for name, shape, dtype in entries:
                mapping, hf_names = resolve(registry, self.provider, name)
                for hf_name, hf_shape in zip(hf_names, expected_hf_shapes(mapping, shape, info), strict=True):
                    specs.append(TensorSpec(hf_name, hf_shape, getattr(torch, dtype)))
        return specs

    def _buckets(self) -> Iterator[WeightBucket]:
        layout = self.layout
        registry = self.bridge.registry()
        info = self.provider.shape_info(layout.tp)
        local = self._local_params()
        stages = self._stages()
        bucket: WeightBucket = []
        size = 0
        for stage, entries in enumerate(stages):
            owned = stage == layout.pp_rank
            for i, (name, shape, dtype) in enumerate(entries):
                mapping, hf_names = resolve(registry, self.provider, name)
                if owned:
                    param = local[i][1]
                    is_tp, dim = tp_attrs(param)
                    full = self._gather_tp(param.detach(), is_tp, mapping, dim)
                else:
                    full = torch.empty(shape, dtype=getattr(torch, dtype), device=layout.device)
                if layout.pp > 1:
                    dist.broadcast(full, src=layout.pp_global_rank(stage), group=layout.pp_group)
                for hf_name, t in zip(hf_names, mapping.to_hf(full, info), strict=True):
                    # Views of live parameters (TP=1 owners: `full` is the parameter itself) only when asked for.
                    shares = t.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
                    live = owned and layout.tp == 1 and shares
                    t = t.clone() if live and not self.views else t.contiguous()
                    bucket.append((hf_name, t))
                    size += t.numel() * t.element_size()
                del full
                if size >= self.bucket_bytes:
                    yield bucket
                    bucket, size = [], 0
        if bucket:
            yield bucket

    def _gather_tp(self, local: torch.Tensor, is_tp: bool, mapping, dim: int) -> torch.Tensor:
        layout = self.layout
        if not is_tp or layout.tp == 1:
            return local
        shards = [torch.empty_like(local) for _ in range(layout.tp)]
        dist.all_gather(shards, local.contiguous(), group=layout.tp_group)
        return mapping.unshard(shards, is_tp, dim)


def load_hf_weights_stream(model: torch.nn.Module, buckets: Iterable[WeightBucket], require_all: bool = True) -> int:
    """Load an export stream into a transformers model in place, bucket by bucket; returns tensors loaded.

    Unknown names raise `CheckpointError` naming them; with `require_all`, so does a model parameter that
    the stream never provided (tied `lm_head.weight` is covered by `embed_tokens`).
    """
    loaded: set[str] = set()
    with torch.no_grad():
        for bucket in buckets:
            result = model.load_state_dict(dict(bucket), strict=False)
            if result.unexpected_keys:
                raise CheckpointError(f"weight stream tensor(s) {result.unexpected_keys[:5]} are not parameters of "
                                      f"{type(model).__name__}")
            loaded.update(name for name, _ in bucket)
            del bucket, result  # drop it before the stream builds the next one
    if require_all:
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        missing = [n for n, _ in model.named_parameters() if n not in loaded and not (tied and n == "lm_head.weight")]
        if missing:
            raise CheckpointError(f"weight stream did not provide {missing[:5]} ({len(missing)} parameters)")
    return len(loaded)
