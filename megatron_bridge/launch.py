"""Start N local ranks of a function with torch.distributed env:// settings (spawn context, gloo or nccl).

    spawn(worker, nprocs=4, args=(out_dir,))   # worker(*args) runs in each rank with RANK/WORLD_SIZE set

`worker` must be importable (a module-level function). Results travel through files the caller chooses.
A rank's exception fails the whole launch with that rank's traceback (torch.multiprocessing's ProcessRaisedException).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, args: Sequence) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    fn(*args)


def spawn(fn: Callable, nprocs: int, args: Sequence = ()) -> None:
    """Run `fn(*args)` in `nprocs` fresh processes forming one torch.distributed world; waits for all."""
    mp.start_processes(_entry, args=(fn, nprocs, free_port(), tuple(args)), nprocs=nprocs, join=True,
                       start_method="spawn")
