"""Vocabulary-parallel (TP=2) log-prob, dual-context and GRPO kernels on 2 gloo processes.

Each rank holds an uneven shard of W (rows [0, 480) and [480, 1000)); results must equal the
single-device fp64 reference over the full vocabulary, with exactly one all-gather per forward and one
all-reduce (of dH) per backward. The same holds when one rank's shard is empty (rows [1000, 1000)): a TP rank
whose rows are all vocabulary padding, as with a small vocabulary padded to a multiple of 128 x TP.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

T, H, V = 37, 72, 1000
SHARDS = [(0, 480), (480, 1000)]
# fp32 kernels vs fp64 reference at H=72 (see test_fused_linear_logprob.FP32_TOL).
TOL = dict(atol=1e-4, rtol=1e-4)


def _inputs():
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(T, H, generator=g)
    hidden_xz = hidden + 0.4 * torch.randn(T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * H ** -0.5 * 2
    targets = torch.randint(0, V, (T,), generator=g)
    d_logp, d_aux = torch.randn(T, generator=g), torch.randn(T, generator=g)
    d_logp[::3] = 0
    d_aux[::3] = 0
    return hidden, hidden_xz, weight, targets, d_logp, d_aux


class _CollectiveCounter:
    """Counts the collectives the kernels issue (wrapping the real torch.distributed functions)."""

    def __init__(self):
        self.calls: list[str] = []
        self.gathered_shapes: list[tuple[int, ...]] = []
        self._orig = {n: getattr(dist, n) for n in ("all_gather", "all_reduce")}
        for name, fn in self._orig.items():
            setattr(dist, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def counted(*a, **k):
            self.calls.append(name)
            if name == "all_gather":
                self.gathered_shapes.append(tuple(a[1].shape))  # (output list, input tensor, ...)
            return fn(*a, **k)
        return counted

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def _worker(rank: int, init_file: str, shards: list[tuple[int, int]] = SHARDS) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from kernels import dual_context_logprob, fused_linear_grpo_loss, fused_linear_logprob

    hidden, hidden_xz, weight, targets, d_logp, d_aux = _inputs()
    lo, hi = shards[rank]
    group = dist.group.WORLD
    counter = _CollectiveCounter()
    temp = 0.8
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    lsm = torch.log_softmax(h64 @ w64.T / temp, -1)
    ref_logp = lsm.gather(1, targets[:, None])[:, 0]
    lsm_xz = torch.log_softmax(hidden_xz.double() @ w64.detach().T / temp, -1)
    ref_logp_xz = lsm_xz.gather(1, targets[:, None])[:, 0]

    for backend in ("triton", "torch"):
        # --- log-prob + entropy
        h, w = hidden.clone().requires_grad_(), weight[lo:hi].clone().requires_grad_()
        logp, ent = fused_linear_logprob(h, w, targets, temp, group, lo, True, backend=backend, split_v=256,
                                         vocab_chunk=200)
        assert counter.take() == ["all_gather"]
        assert counter.gathered_shapes.pop() == (T, 4)  # owned flag + (lse, target, E[z])
        ((logp * d_logp).sum() + (ent * d_aux).sum()).backward()
        assert counter.take() == ["all_reduce"]
        ref_ent = -(lsm.exp() * lsm).sum(-1)
        h64.grad = w64.grad = None
        ((ref_logp * d_logp.double()).sum() + (ref_ent * d_aux.double()).sum()).backward(retain_graph=True)
        torch.testing.assert_close(logp.double(), ref_logp.detach(), **TOL)
        torch.testing.assert_close(ent.double(), ref_ent.detach(), **TOL)
        torch.testing.assert_close(h.grad.double(), h64.grad, **TOL)
        torch.testing.assert_close(w.grad.double(), w64.grad[lo:hi], **TOL)

        # --- dual context with KL
        h, w = hidden.clone().requires_grad_(), weight[lo:hi].clone().requires_grad_()
        out = dual_context_logprob(h, hidden_xz, w, targets, temp, group, lo, with_kl=True, backend=backend,
                                   split_v=256, vocab_chunk=200)
        assert counter.take() == ["all_gather"]
        assert counter.gathered_shapes.pop() == (T, 6)  # owned + x (lse, target) + x+z (lse, target, KL term)
        ((out.logp_x * d_logp).sum() + (out.kl * d_aux).sum()).backward()
        assert counter.take() == ["all_reduce"]
        ref_kl = (lsm_xz.exp() * (lsm_xz - lsm)).sum(-1)
        h64.grad = w64.grad = None
        ((ref_logp * d_logp.double()).sum() + (ref_kl * d_aux.double()).sum()).backward(retain_graph=True)
        torch.testing.assert_close(out.logp_x.double(), ref_logp.detach(), **TOL)
        torch.testing.assert_close(out.logp_xz.double(), ref_logp_xz.detach(), **TOL)
        torch.testing.assert_close(out.kl.double(), ref_kl.detach(), **TOL)
        torch.testing.assert_close(h.grad.double(), h64.grad, **TOL)
        torch.testing.assert_close(w.grad.double(), w64.grad[lo:hi], **TOL)

        # --- fused GRPO loss (token-mean): loss and gradients equal the single-device fused loss
        h, w = hidden.clone().requires_grad_(), weight[lo:hi].clone().requires_grad_()
        old = ref_logp.detach().float() + 0.3 * d_logp
        adv = d_aux.clone()
        knobs = dict(clip_low=0.2, clip_high=0.2, dual_clip=3.0, kl_coef=0.0, kl_type="k3")
        res = fused_linear_grpo_loss(h, w, targets, old, adv, torch.ones(T) / T, **knobs,
                                     temperature=temp, tp_group=group, vocab_start=lo, backend=backend, split_v=256)
        res.loss.backward()
        assert counter.take() == ["all_gather", "all_reduce"]
        h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        single = fused_linear_grpo_loss(h1, w1, targets, old, adv, torch.ones(T) / T, **knobs, temperature=temp,
                                        backend="torch")
        single.loss.backward()
        torch.testing.assert_close(res.loss, single.loss, **TOL)
        torch.testing.assert_close(h.grad, h1.grad, **TOL)
        torch.testing.assert_close(w.grad, w1.grad[lo:hi], **TOL)

    # a target outside every shard fails on every rank with the same message
    bad = targets.clone()
    bad[5] = V
    try:
        fused_linear_logprob(hidden, weight[lo:hi], bad, 1.0, group, lo, backend="torch")
    except ValueError as e:
        assert "targets[5] = 1000" in str(e), str(e)
    else:
        raise AssertionError("out-of-vocabulary target not detected")
    dist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("shards", [SHARDS, [(0, V), (V, V)]], ids=["uneven", "empty_shard"])
def test_tp2_matches_single_device(tmp_path, shards):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # inherited by the spawned ranks
    mp.spawn(_worker, args=(str(tmp_path / "pg_init"), shards), nprocs=2, join=True)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_empty_shard_contributes_nothing(backend):
    """A shard without rows (V_local = 0) yields the statistics of an empty vocabulary range (lse -inf, target 0,
    expectation 0), and its backward gives dH 0 and an empty dW, without a division by zero."""
    from kernels.ops.fused_linear_logprob import (
        LogprobOptions,
        _split_width,
        fused_linear_logprob_backward,
        vocab_partials,
    )
    from kernels.ops.vocab_stats import SoftmaxStats, merge_partials

    assert _split_width(0, 4096, 128) == 128 and _split_width(1000, 4096, 128) == 1024
    hidden, _, weight, targets, d_logp, d_aux = _inputs()
    empty = weight[:0].clone().requires_grad_()
    opts = LogprobOptions(with_entropy=True, backend=backend)
    stats = vocab_partials(hidden, empty, targets, opts, backend)
    assert torch.isneginf(stats.lse).all() and not stats.target.any() and not stats.expect.any()
    assert stats.expect.shape == (T, 1)
    full = vocab_partials(hidden, weight, targets, opts, backend)
    both = merge_partials(SoftmaxStats(*(torch.stack([a, b]) for a, b in
                                          ((full.lse, stats.lse), (full.target, stats.target),
                                           (full.expect, stats.expect)))))
    torch.testing.assert_close(both.lse, full.lse)
    torch.testing.assert_close(both.expect, full.expect)
    d_h, d_w = fused_linear_logprob_backward(hidden, empty.detach(), targets, stats, d_logp, d_aux, opts)
    assert d_w.shape == (0, H) and not d_h.any()
