"""The trainer -> engine weight stream: bucketing, HF name normalisation and in-place loading.

The stream is an iterator of buckets, each a list of `(hf_name, full_tensor)` pairs of about
`bucket_bytes` (what `PolicyBackend.export_weights` yields). Names are Hugging Face parameter names
(`model.layers.0.self_attn.q_proj.weight`); engines map them onto their own parameters:

- the HF engine copies each tensor into the parameter of the same name (`HFWeightLoader`);
- vLLM's in-place reload takes HF names itself and fuses q/k/v and gate/up on the fly; it needs every tensor of
  the checkpoint in every update (`checkpoint_tensor_names` is what it checks against).

Shared rules: wrapper prefixes (`module.`, `_orig_mod.`) are stripped; `lm_head.weight` of a model with
tied embeddings is the embedding matrix and is copied once; an unknown name or a shape mismatch is an
error naming the tensor; a *complete* update (required when the engine discarded its weights, e.g. vLLM
sleep level 2) must write every parameter, and `WeightCoverage` says which ones were missed.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

WeightBucket = list[tuple[str, torch.Tensor]]
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def iter_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[WeightBucket]:
    """Group `(name, tensor)` pairs into buckets of at most `bucket_bytes` (a larger tensor goes alone)."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes: got {bucket_bytes}; expected >= 1")
    bucket: WeightBucket = []
    size = 0
    for name, t in named:
        nbytes = tensor_bytes(t)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


def state_dict_buckets(model: torch.nn.Module, bucket_bytes: int) -> Iterator[WeightBucket]:
    """The stream of an HF model's parameters and buffers-that-are-weights (detached), tied tensors once."""
    seen: set[int] = set()

    def named() -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in model.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p.detach()

    return iter_buckets(named(), bucket_bytes)


def normalize_name(name: str) -> str:
    """Strip wrapper prefixes that DDP / torch.compile add to parameter names."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def checkpoint_tensor_names(model_dir: str | Path) -> set[str]:
    """Tensor names of an HF safetensors checkpoint (`model.safetensors` or its sharded index), without reading data."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"model directory '{model_dir}': no *.safetensors checkpoint")
    from safetensors import safe_open

    names: set[str] = set()
    for f in files:
        with safe_open(f, framework="pt") as st:
            names.update(st.keys())
    return names


@dataclass
class WeightCoverage:
    """Which engine parameters an update wrote."""

    expected: set[str]
    written: set[str] = field(default_factory=set)
    tensors: int = 0
    bytes: int = 0

    @property
    def missing(self) -> list[str]:
        return sorted(self.expected - self.written)

    def require_complete(self, why: str) -> None:
        """Raise if some parameter was not written (`why` says why a complete update was needed)."""
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (" ..." if len(self.missing) > 5 else "")
            raise ValueError(f"weight update incomplete ({why}): {len(self.missing)} parameter(s) not in the "
                             f"stream: {shown}")


class HFWeightLoader:
    """Copies a weight stream into an HF `PreTrainedModel` in place (no reallocation, same device/dtype)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        # state_dict(keep_vars=True) lists tied tensors under every name they have (lm_head.weight and
        # model.embed_tokens.weight are one Parameter when embeddings are tied)
        self.params: dict[str, torch.Tensor] = dict(model.state_dict(keep_vars=True))
        owners: dict[int, str] = {}
        for name, _ in model.named_parameters():
            owners.setdefault(id(self.params[name]), name)
        self.canonical = {name: owners.get(id(t), name) for name, t in self.params.items()}

    def expected(self) -> set[str]:
        """Canonical names of the parameters a complete update must write."""
        return {n for n, _ in self.model.named_parameters()}

    def target(self, raw_name: str, tensor: torch.Tensor) -> tuple[str, torch.nn.Parameter]:
        """(canonical name, the model's parameter) for a streamed tensor; raises naming the tensor when it has no
        parameter of that name or a different shape."""
        name = normalize_name(raw_name)
        target = self.params.get(name)
        if target is None:
            raise KeyError(f"weight stream: tensor '{raw_name}' has no parameter of that name in the engine's "
                           f"model ({type(self.model).__name__})")
        if tuple(target.shape) != tuple(tensor.shape):
            raise ValueError(f"weight stream: tensor '{raw_name}' has shape {tuple(tensor.shape)}; the "
                             f"engine's parameter has {tuple(target.shape)}")
        return self.canonical[name], target

    @torch.no_grad()
    def load(self, stream: Iterable[WeightBucket]) -> WeightCoverage:
        cov = WeightCoverage(expected=self.expected())
        for bucket in stream:
            for raw_name, tensor in bucket:
                owner, target = self.target(raw_name, tensor)
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
                cov.written.add(owner)
                cov.tensors += 1
                cov.bytes += tensor_bytes(tensor)
        return cov
