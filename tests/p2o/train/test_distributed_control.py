"""The control plane (p2o.train.distributed_control) on two gloo ranks.

On GPU the default process group is NCCL: a CPU tensor on it fails ("No backend type associated with device type
cpu") and its watchdog aborts a collective that waits longer than the default timeout. Both are reproduced on CPU:
the default group is created as "cuda:gloo" (a backend for CUDA tensors only, so every CPU collective on it fails
with NCCL's error), or with a timeout of a few seconds, and the control messages must not notice.
"""
from __future__ import annotations

import datetime
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from p2o.train.distributed_control import DistributedControl, ProcessGroupControl

LONG = datetime.timedelta(minutes=10)
SHORT = datetime.timedelta(seconds=2)


def _init(rank: int, init_file: str, backend: str, timeout: datetime.timedelta) -> ProcessGroupControl:
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timeout)
    return ProcessGroupControl.create(LONG)


def _cpu_less_default_group(rank: int, init_file: str) -> None:
    control = _init(rank, init_file, "cuda:gloo", LONG)
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.barrier()  # the default group is as unusable for control traffic as NCCL is
    assert isinstance(control, DistributedControl) and control.rank == rank and control.world_size == 2
    control.barrier()
    assert control.broadcast({"job": "j1", "rank": rank}) == {"job": "j1", "rank": 0}
    assert control.broadcast(None) is None
    assert control.any_rank(rank == 1) and control.any_rank(rank == 0)
    assert not control.any_rank(False)


@pytest.mark.multiproc
def test_control_messages_never_use_the_default_group(tmp_path):
    mp.spawn(_cpu_less_default_group, args=(str(tmp_path / "pg"),), nprocs=2, join=True)


def _long_rank0_phase(rank: int, init_file: str) -> None:
    control = _init(rank, init_file, "gloo", SHORT)
    if rank == 0:
        time.sleep(3 * SHORT.total_seconds())  # a rank-0-only phase (a GEPA round, an evaluation)
        control.broadcast("phase done")
    else:  # waits on the control group past the default group's timeout
        assert control.broadcast(None) == "phase done"
    control.barrier()
    if rank == 1:  # the same wait on the default group is aborted by its timeout
        with pytest.raises(RuntimeError):
            dist.barrier()
    else:
        time.sleep(3 * SHORT.total_seconds())
    control.barrier()


@pytest.mark.slow
@pytest.mark.multiproc
def test_other_ranks_wait_out_a_long_rank0_phase_on_the_control_group(tmp_path):
    mp.spawn(_long_rank0_phase, args=(str(tmp_path / "pg"),), nprocs=2, join=True)


def test_one_process_needs_no_group():
    control = ProcessGroupControl.single()
    control.barrier()
    assert control.is_rank0 and control.broadcast(3) == 3 and control.any_rank(True) and not control.any_rank(False)
    with pytest.raises(ValueError, match="control process group"):
        ProcessGroupControl(0, 2, None)
