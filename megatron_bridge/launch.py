"""Start N local ranks of a function as one torch.distributed world (spawn context, gloo or nccl).

    spawn(worker, nprocs=4, args=(out_dir,))   # worker(*args) runs in each rank with RANK/WORLD_SIZE set

`worker` must be importable (a module-level function). Results travel through files the caller chooses.
A rank's exception fails the whole launch with that rank's traceback (torch.multiprocessing's ProcessRaisedException).

Rendezvous: the launching process hosts the TCPStore on a port the kernel picks when the store binds (port 0), and
every rank joins it as a client (torchelastic's agent-store mode, as under torchrun). Probing a free port and
binding it later in a child is a race: another process can take the port in between (EADDRINUSE).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch.multiprocessing as mp

HOST = "127.0.0.1"


def host_store(world: int):
    """A TCPStore server on an ephemeral port of 127.0.0.1 (its `.port`), for `world` ranks that join as clients.
    The caller keeps it referenced until the ranks have finished."""
    from torch.distributed import TCPStore

    return TCPStore(HOST, 0, world_size=world, is_master=True, wait_for_workers=False)


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """torch.distributed env:// settings for `rank` of `world` local ranks joining the store on `port`."""
    return dict(MASTER_ADDR=HOST, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), TORCHELASTIC_USE_AGENT_STORE="True")


@contextmanager
def single_rank_world() -> Iterator[None]:
    """This process as rank 0 of a one-rank world: hosts the store, sets the env:// variables for the duration
    and restores the previous environment afterwards."""
    store = host_store(1)
    env = rank_env(0, 1, store.port)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        del store  # closes the server


def _entry(rank: int, fn: Callable, world: int, port: int, args: Sequence) -> None:
    os.environ.update(rank_env(rank, world, port))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    fn(*args)


def spawn(fn: Callable, nprocs: int, args: Sequence = ()) -> None:
    """Run `fn(*args)` in `nprocs` fresh processes forming one torch.distributed world; waits for all."""
    store = host_store(nprocs)
    mp.start_processes(_entry, args=(fn, nprocs, store.port, tuple(args)), nprocs=nprocs, join=True,
                       start_method="spawn")  # `store` stays alive (referenced) until every rank has exited
