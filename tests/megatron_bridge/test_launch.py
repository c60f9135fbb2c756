"""Local rendezvous: the launcher hosts the store on a port bound once; ranks (spawned or this process) join it."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from megatron_bridge.launch import host_store, rank_env, single_rank_world, spawn


def _sum_ranks(out_dir: str) -> None:
    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    Path(out_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps({"sum": t.item(),
                                                                         "port": os.environ["MASTER_PORT"]}))
    dist.destroy_process_group()


def test_store_port_is_held_by_the_launcher_not_probed():
    store = host_store(2)
    with socket.socket() as s:  # the port is taken for as long as the store lives: nobody else can bind it
        try:
            s.bind(("127.0.0.1", store.port))
            bound = True
        except OSError:
            bound = False
    assert store.port > 0 and not bound
    env = rank_env(1, 2, store.port)
    assert env["MASTER_PORT"] == str(store.port) and env["RANK"] == "1" and env["WORLD_SIZE"] == "2"
    assert env["TORCHELASTIC_USE_AGENT_STORE"] == "True"  # every rank joins as a client


@pytest.mark.slow  # spawns two ranks
def test_spawned_ranks_join_one_world(tmp_path):
    spawn(_sum_ranks, nprocs=3, args=(str(tmp_path),))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    assert [r["sum"] for r in results] == [6.0, 6.0, 6.0]
    assert len({r["port"] for r in results}) == 1


def test_single_rank_world_twice_in_one_process_and_restores_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("MASTER_PORT", "1")
    ports = []
    for _ in range(2):  # a second world in the same process gets a fresh store
        with single_rank_world():
            ports.append(os.environ["MASTER_PORT"])
            dist.init_process_group("gloo")
            t = torch.ones(3)
            dist.all_reduce(t)
            assert t.tolist() == [1.0, 1.0, 1.0] and dist.get_world_size() == 1
            dist.destroy_process_group()
        assert os.environ["MASTER_PORT"] == "1" and "RANK" not in os.environ
        assert "TORCHELASTIC_USE_AGENT_STORE" not in os.environ
    assert all(p != "1" for p in ports)
