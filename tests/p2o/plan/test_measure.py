"""The instruments on their own: tensor-memory tracking and collective byte counting (single-rank gloo)."""
import pytest
import torch
import torch.distributed as dist

from megatron_bridge.launch import single_rank_world
from p2o.plan.measure import CommCounter, TensorMemoryTracker, storage_bytes


def test_tracker_counts_new_storages_not_views_or_inplace():
    x = torch.zeros(1000)  # allocated before: not counted
    with TensorMemoryTracker() as mem:
        y = x.view(10, 100)  # view: no new storage
        x.add_(1)  # in place: no new storage
        a = torch.ones(2000)  # 8000 bytes
        b = a * 2  # 8000 bytes
        mem.mark("two")
        del a
        c = torch.empty(500)  # 2000 bytes
    assert mem.marks["two"] == 16000
    assert mem.peak_bytes == 16000
    assert mem.live_bytes == 10000  # b and c alive, a freed
    assert storage_bytes([b, b[:10], c]) == 10000 and y.shape == (10, 100)


def test_tracker_sees_autograd_saved_tensors():
    w = torch.randn(64, 64, requires_grad=True)
    with TensorMemoryTracker() as mem:
        x = torch.randn(32, 64)
        h = torch.tanh(x @ w)  # saves x (input) and tanh's output
        mem.mark("forward")
        h.sum().backward()
    assert mem.marks["forward"] >= x.numel() * 4 + h.numel() * 4
    assert w.grad is not None and mem.peak_bytes >= mem.marks["forward"]


@pytest.fixture
def single_rank_group():
    with single_rank_world():
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield dist.new_group([0])
        dist.destroy_process_group()


def test_comm_counter_by_group_positional_and_keyword(single_rank_group):
    g = single_rank_group
    t = torch.ones(256)
    with CommCounter({"tp": g}) as comm:
        dist.all_reduce(t, group=g)
        dist.all_reduce(t, dist.ReduceOp.SUM, g)  # group passed positionally
        out = torch.empty(256)
        dist.all_gather_single(output_tensor=out, input_tensor=t, group=g)
        dist.all_reduce(torch.ones(8))  # world group
    assert comm.bytes["tp"] == 3 * 1024 and comm.bytes["world"] == 32
    assert comm.calls["tp.all_reduce"] == 2 and comm.calls["tp.all_gather"] == 1
    assert dist.all_reduce.__name__ == "all_reduce"  # restored
