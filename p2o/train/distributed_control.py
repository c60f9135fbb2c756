"""The control plane between the ranks of a training job: barriers, rank 0's Python objects, "did any rank ...".

Control messages are small CPU objects, and some of them wait a long time: the other ranks wait in a barrier or
broadcast while rank 0 alone runs a long phase (a synchronous GEPA round, a held-out evaluation with the HF engine,
a model conversion). The default process group suits neither: on GPU it is NCCL, which has no CPU backend ("No
backend type associated with device type cpu"), and its watchdog aborts a collective after the default timeout
(30 min). So every control message goes over a gloo group of its own, created once at start-up with a long
timeout (`parallel.control_timeout_min`) and held here explicitly; the default group carries only the trainer's
tensor collectives.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist


@runtime_checkable
class DistributedControl(Protocol):
    """Rank identity and the control collectives (every rank calls each collective at the same point)."""

    rank: int
    world_size: int

    @property
    def is_rank0(self) -> bool: ...

    def barrier(self) -> None:
        """Wait until every rank has arrived."""

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` (any picklable object) on every rank; the others pass anything (ignored)."""

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on at least one."""


class ProcessGroupControl:
    """`DistributedControl` over a dedicated gloo group (`create`), or over one process (`single`, no group)."""

    def __init__(self, rank: int, world_size: int, group: Any | None):
        if world_size > 1 and group is None:
            raise ValueError(f"ProcessGroupControl: {world_size} ranks need a control process group")
        self.rank, self.world_size, self.group = rank, world_size, group

    @classmethod
    def create(cls, timeout: timedelta) -> ProcessGroupControl:
        """Collective (every rank, once, after the default group exists): a gloo group of all ranks whose
        collectives time out after `timeout`. One process (or no process group at all): no group."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return cls.single()
        group = dist.new_group(backend="gloo", timeout=timeout)
        return cls(dist.get_rank(), dist.get_world_size(), group)

    @classmethod
    def single(cls) -> ProcessGroupControl:
        """The control plane of a one-process run: every collective returns at once."""
        return cls(0, 1, None)

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)

    def broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj if self.is_rank0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        t = torch.tensor([1 if flag else 0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())
