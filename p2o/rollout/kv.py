"""A left-padded KV cache whose rows can leave (compaction) and join (refill) between decode steps.

Layout: `attention_mask` [B, L] (1 = real token), per-layer keys/values [B, H_kv, L, D] in a transformers
`DynamicCache`; every row is right-aligned (left padding). Rows that finish are dropped with
`select`; new rows, prefilled separately, are merged with `merge` by left-padding the shorter of the two
caches with zeros (masked out). Leading columns that are padding for every row are trimmed, so the
cache length stays bounded by the longest live row.

Only full-attention layers are supported (`supports_refill` says whether a model qualifies).
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache


def supports_refill(model_config: Any) -> bool:
    """True when every decoder layer is full attention (no sliding window / linear / recurrent layers)."""
    text_cfg = model_config.get_text_config(decoder=True) if hasattr(model_config, "get_text_config") else model_config
    layer_types = getattr(text_cfg, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        return False
    return not getattr(text_cfg, "sliding_window", None) or not getattr(text_cfg, "use_sliding_window", False)


def _tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class PaddedKV:
    """A DynamicCache plus its [B, L] attention mask and per-row count of real tokens."""

    def __init__(self, cache: DynamicCache, attention_mask: torch.Tensor):
        self.cache = cache
        self.mask = attention_mask.long()                        # [B, L]
        self.lengths = self.mask.sum(dim=-1)                     # [B] real tokens per row

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def append_step(self) -> None:
        """Account for one more real token per row (after a decode forward)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.batch_size, 1)], dim=-1)
        self.lengths = self.lengths + 1

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention_mask [B, L+1], position_ids [B, 1]) for feeding one new token per row."""
        mask = torch.cat([self.mask, self.mask.new_ones(self.batch_size, 1)], dim=-1)
        return mask, self.lengths[:, None].clone()

    def select(self, keep: torch.Tensor) -> None:
        """Keep rows `keep` (int64 indices, in the new row order; a repeated index copies that row) and trim
        all-padding leading columns."""
        self.cache.batch_select_indices(keep.to(self.mask.device))
        self.mask = self.mask[keep]
        self.lengths = self.lengths[keep]
        self._trim()

    def merge(self, other: PaddedKV) -> None:
        """Append the rows of `other` (same model, same device/dtype) after this cache's rows."""
        la, lb = self.mask.shape[1], other.mask.shape[1]
        length = max(la, lb)
        layers = []
        for (ka, va), (kb, vb) in zip(_tensors(self.cache), _tensors(other.cache), strict=True):
            layers.append((torch.cat([_pad_left(ka, length), _pad_left(kb, length)], dim=0),
                           torch.cat([_pad_left(va, length), _pad_left(vb, length)], dim=0)))
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([_pad_left_mask(self.mask, length), _pad_left_mask(other.mask, length)], dim=0)
        self.lengths = torch.cat([self.lengths, other.lengths])

    def _trim(self) -> None:
        live = self.mask.any(dim=0).nonzero()
        start = int(live[0]) if live.numel() else self.mask.shape[1]
        if start == 0:
            return
        self.mask = self.mask[:, start:]
        self.cache = DynamicCache(ddp_cache_data=[(k[:, :, start:], v[:, :, start:]) for k, v in _tensors(self.cache)])


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """[B, H, L, D] -> [B, H, length, D] with zeros in front."""
    missing = length - t.shape[2]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], missing, t.shape[3]), t], dim=2)


def _pad_left_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1)
