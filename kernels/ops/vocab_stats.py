"""Per-row softmax statistics over vocabulary ranges, and how partial ranges are merged.

A logit row z = h W^T / temperature is never materialised. Each kernel program (or TP rank) sees a
contiguous vocabulary range R and reports, per row:

    lse_R    = log sum_{v in R} exp(z_v)                    (fp32)
    target_R = z_y if the target y lies in R, else 0        (fp32)
    E_R[f]   = sum_{v in R} softmax_R(z)_v f_v              (fp32, any number of such expectations)

Ranges merge exactly ("LSE of LSEs"): lse = logsumexp_R lse_R, target = sum_R target_R and
E[f] = sum_R exp(lse_R - lse) E_R[f]. The same rule merges vocabulary splits inside one device and
vocabulary shards across tensor-parallel ranks, so the TP path needs a single collective: one
all-gather of the packed per-row columns (see `tp_merge`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class SoftmaxStats:
    """Statistics of one softmax over the rows of a block: lse [T], target [T], expect [T, E] (all fp32)."""

    lse: torch.Tensor
    target: torch.Tensor
    expect: torch.Tensor

    @property
    def num_columns(self) -> int:
        return 2 + self.expect.shape[-1]

    def pack(self) -> torch.Tensor:
        """[T, 2 + E] fp32: lse, target, expectations."""
        return torch.cat([self.lse[:, None], self.target[:, None], self.expect], dim=1)

    @staticmethod
    def unpack(cols: torch.Tensor) -> SoftmaxStats:
        """Inverse of `pack` for [..., T, 2 + E]."""
        return SoftmaxStats(cols[..., 0], cols[..., 1], cols[..., 2:])


def merge_partials(parts: SoftmaxStats) -> SoftmaxStats:
    """Merge P disjoint vocabulary ranges: fields [P, T] / [P, T, E] -> [T] / [T, E]."""
    if parts.lse.shape[0] == 1:
        return SoftmaxStats(parts.lse[0], parts.target[0], parts.expect[0])
    lse = torch.logsumexp(parts.lse, dim=0)  # [T]
    weight = torch.exp(parts.lse - lse[None, :])  # [P, T] share of each range in the softmax mass
    expect = (weight[..., None] * parts.expect).sum(dim=0)  # [T, E]
    return SoftmaxStats(lse, parts.target.sum(dim=0), expect)


def owned_targets(targets: torch.Tensor, vocab_start: int, vocab_local: int) -> torch.Tensor:
    """[T] fp32: 1 where the global target id lies in this rank's rows [vocab_start, vocab_start + vocab_local)."""
    return ((targets >= vocab_start) & (targets < vocab_start + vocab_local)).to(torch.float32)


def tp_merge(stats: list[SoftmaxStats], owned: torch.Tensor, group) -> tuple[list[SoftmaxStats], torch.Tensor]:
    """Merge per-rank statistics of vocabulary shards over the ranks of ``group``.

    Collective: ONE ``all_gather`` of a [T, C] fp32 tensor per rank, C = 1 + sum(2 + E_i) columns
    (the ``owned`` flag, then each softmax's lse, target and expectations); each rank sends 4*T*C bytes
    and receives 4*T*C*tp. Returns the merged statistics and the global owned count per row (exactly 1
    for valid targets). A MAX then SUM all-reduce pair would move the same bytes in two round trips.
    """
    local = torch.cat([owned[:, None]] + [s.pack() for s in stats], dim=1).contiguous()  # [T, C]
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    cols = torch.stack(gathered, dim=0)  # [tp, T, C]
    merged, c = [], 1
    for s in stats:
        merged.append(merge_partials(SoftmaxStats.unpack(cols[:, :, c:c + s.num_columns])))
        c += s.num_columns
    return merged, cols[:, :, 0].sum(dim=0)


def check_targets(owned_count: torch.Tensor, targets: torch.Tensor, vocab_hint: str) -> None:
    """Raise a ValueError naming the first target that no vocabulary range holds exactly once."""
    bad = (owned_count != 1).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(f"targets[{i}] = {int(targets[i])} is not a token id of the vocabulary ({vocab_hint}); "
                         f"{bad.numel()} target(s) out of range")
