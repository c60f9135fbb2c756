"""Reproduction of verl's dynamic-batch loss weighting (the authors' runs: `use_dynamic_bsz=True`).

verl (0.5, the version the released P2O code is built on) does not take one token-mean over an optimizer step.
Its trainer reorders the batch so that each of its W GPUs gets about the same number of tokens (`balance_batch`,
on prompt + response lengths of the batch as generated), gives GPU r the r-th contiguous share, splits that into
per-GPU mini-batches of B = rows / (W * mini-batches) rows, and cuts each mini-batch into micro-batches by a token
budget (`ppo_max_token_len_per_gpu`; the micro-batch count is the largest any GPU needs, the rows are partitioned
by the Karmarkar-Karp largest-differencing method on prompt + response lengths as trained). Each micro-batch m
adds  (|m| / B) * masked_mean_m(loss)  to its GPU's loss and data parallelism averages the GPUs' gradients, so

    w_t = (1 / W) * (|m| / B) * M_t / sum_{s in m} M_s          for token t of micro-batch m

with M the response mask (0 for rows dropped by `p2o.drop_failed_template_rollouts`); the context-ratio mask
multiplies the loss afterwards (it is not in the denominator). Short micro-batches therefore weigh their tokens
more than long ones. Because the loss is linear in these fixed weights, the emulated partition decides the result
on any of our layouts; the Megatron backend may micro-batch the rows however it likes.

`verl_update_plan` returns, per optimizer step, its rows and each row's coefficient c (w_t = c * M_t).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass


class _Bin:
    """One part of a partial partition: its items (index, length) in insertion order and their total length."""

    __slots__ = ("total", "items")

    def __init__(self) -> None:
        self.total = 0
        self.items: list[tuple[int, int]] = []

    def absorb(self, other: _Bin) -> None:
        self.items.extend(other.items)
        self.total += other.total

    def __lt__(self, other: _Bin) -> bool:  # by total, then item count, then the items themselves
        return (self.total, len(self.items), self.items) < (other.total, len(other.items), other.items)


class _PartialPartition:
    """k bins, largest first; in the heap the partial partition with the largest spread comes first."""

    def __init__(self, items: list[tuple[int, int]], k: int) -> None:
        self.bins = [_Bin() for _ in range(k)]
        for b, (idx, n) in zip(self.bins, items, strict=False):
            b.items.append((idx, n))
            b.total += n
        self.bins.sort(reverse=True)

    def merge(self, other: _PartialPartition) -> None:
        """Largest bin with the other's smallest, and so on (the differencing step)."""
        k = len(self.bins)
        for i in range(k):
            self.bins[i].absorb(other.bins[k - 1 - i])
        self.bins.sort(reverse=True)

    @property
    def spread(self) -> int:
        return self.bins[0].total - self.bins[-1].total

    def __lt__(self, other: _PartialPartition) -> bool:
        if self.spread != other.spread:
            return self.spread > other.spread
        return other.bins[0] < self.bins[0]


def balanced_partitions(lengths: list[int], k: int, equal_size: bool) -> list[list[int]]:
    """Indices of `lengths` in k parts of about equal total length (Karmarkar-Karp largest differencing, with
    verl's `get_seqlen_balanced_partitions` tie-breaking, so the parts are the ones verl forms); each part sorted.
    `equal_size`: every part gets len(lengths) / k items."""
    if not 1 <= k <= len(lengths):
        raise ValueError(f"cannot split {len(lengths)} sequences into {k} non-empty parts")
    if equal_size and len(lengths) % k:
        raise ValueError(f"{len(lengths)} sequences do not split into {k} parts of equal size")
    ordered = sorted((n, i) for i, n in enumerate(lengths))
    heap: list[_PartialPartition] = []
    step = k if equal_size else 1
    for start in range(0, len(ordered), step):
        heapq.heappush(heap, _PartialPartition([(i, n) for n, i in ordered[start:start + step]], k))
    while len(heap) > 1:
        first, second = heapq.heappop(heap), heapq.heappop(heap)
        first.merge(second)
        heapq.heappush(heap, first)
    parts = [sorted(i for i, _ in b.items) for b in heap[0].bins]
    if any(not p for p in parts):
        raise ValueError(f"balanced_partitions: an empty part splitting {len(lengths)} sequences into {k}")
    return parts


@dataclass(frozen=True)
class PlannedStep:
    """One optimizer step of the emulated verl update: its rows and each row's weight coefficient c (w_t = c M_t)."""

    rows: list[int]
    coef: list[float]


def verl_update_plan(balance_lengths: list[int], micro_lengths: list[int], mask_tokens: list[int], world_size: int,
                     minibatches: int, max_token_len: int, balance_batch: bool = True) -> list[PlannedStep]:
    """verl's mini-/micro-batching of one rollout batch and the loss weights it implies (see the module docstring).

    Args:
        balance_lengths: per row, prompt + response tokens as generated (what `balance_batch` balances).
        micro_lengths: per row, prompt + response tokens as trained (what the token budget counts).
        mask_tokens: per row, response tokens in the response mask (0 for a dropped row).
        world_size: W, the emulated GPUs (all data-parallel, as verl's FSDP actor).
        minibatches: optimizer steps per rollout batch.
        max_token_len: the token budget of a micro-batch (`ppo_max_token_len_per_gpu`).
        balance_batch: verl's `trainer.balance_batch` (on by default).
    """
    n = len(balance_lengths)
    if not (len(micro_lengths) == len(mask_tokens) == n):
        raise ValueError(f"verl_update_plan: {n}, {len(micro_lengths)} and {len(mask_tokens)} per-row entries")
    if n % (world_size * minibatches):
        raise ValueError(f"{n} rows do not split into {world_size} GPUs x {minibatches} mini-batches")
    if max(micro_lengths) > max_token_len:
        raise ValueError(f"a row of {max(micro_lengths)} tokens exceeds the micro-batch budget of {max_token_len}")
    order = [i for part in balanced_partitions(balance_lengths, world_size, True) for i in part] \
        if balance_batch else list(range(n))
    per_gpu = n // world_size
    b = per_gpu // minibatches  # verl's normalised ppo_mini_batch_size
    plan = []
    for k in range(minibatches):
        shards = [order[r * per_gpu + k * b: r * per_gpu + (k + 1) * b] for r in range(world_size)]
        # Every GPU uses the micro-batch count the most loaded one needs (verl: an all-reduce MAX).
        count = max(min(b, math.ceil(sum(micro_lengths[i] for i in shard) / max_token_len)) for shard in shards)
        coef: dict[int, float] = {}
        for shard in shards:
            for part in balanced_partitions([micro_lengths[i] for i in shard], count, False):
                rows = [shard[j] for j in part]
                denom = sum(mask_tokens[i] for i in rows)
                for i in rows:
                    coef[i] = len(rows) / (world_size * b * denom) if denom else 0.0
        rows = sorted(coef)
        plan.append(PlannedStep(rows, [coef[i] for i in rows]))
    return plan
