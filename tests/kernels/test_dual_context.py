"""dual_context_logprob against an fp64 reference: both contexts' log-probs, ratio, mask, KL, x-only gradients."""
from __future__ import annotations

import pytest
import torch

import kernels.ops.dual_context as dual_ops
from kernels import dual_context_logprob, fused_linear_logprob

# fp32 vs fp64 at H=72: see test_fused_linear_logprob.FP32_TOL.
FP32_TOL = dict(atol=1e-4, rtol=1e-4)


def ref_dual(hidden_x, hidden_xz, weight, targets, temperature):
    """fp64 reference: log p(y|x), log p(y|x+z) and KL(p_xz || p_x) from materialised logits."""
    lx = torch.log_softmax(hidden_x.double() @ weight.double().T / temperature, -1)
    lxz = torch.log_softmax(hidden_xz.double() @ weight.double().T / temperature, -1)
    pick = targets[:, None]
    kl = (lxz.exp() * (lxz - lx)).sum(-1)
    return lx.gather(1, pick)[:, 0], lxz.gather(1, pick)[:, 0], kl


def make_inputs(T, H, V, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hx = torch.randn(T, H, generator=g)
    hxz = hx + 0.4 * torch.randn(T, H, generator=g)  # the template shifts the hidden states
    w = torch.randn(V, H, generator=g) * H ** -0.5 * 2
    y = torch.randint(0, V, (T,), generator=g)
    return hx.to(device, dtype), hxz.to(device, dtype), w.to(device, dtype), y.to(device)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("with_kl", [True, False])
@pytest.mark.parametrize("T,H,V,split_v,vocab_chunk", [(37, 72, 1000, 384, 300), (3, 8, 129, None, None)])
def test_matches_fp64_reference(backend, with_kl, T, H, V, split_v, vocab_chunk):
    hx, hxz, w, y = make_inputs(T, H, V)
    temperature, lo, hi = 0.6, 0.5, 2.0
    hx_, hxz_, w_ = hx.clone().requires_grad_(), hxz.clone().requires_grad_(), w.clone().requires_grad_()
    out = dual_context_logprob(hx_, hxz_, w_, y, temperature, ratio_low=lo, ratio_high=hi, with_kl=with_kl,
                               backend=backend, split_v=split_v, vocab_chunk=vocab_chunk)
    g = torch.Generator().manual_seed(5)
    g_lp, g_kl, g_ratio = (torch.randn(T, generator=g) for _ in range(3))
    g_lp[::4] = 0
    g_kl[1::3] = 0
    loss = (out.logp_x * g_lp).sum() + (out.ratio * g_ratio).sum() + ((out.kl * g_kl).sum() if with_kl else 0)
    loss.backward()

    hx64, w64 = hx.double().requires_grad_(), w.double().requires_grad_()
    rx, rxz, rkl = ref_dual(hx64, hxz, w64, y, temperature)
    rratio = torch.exp(rx - rxz.detach())
    ref_loss = (rx * g_lp.double()).sum() + (rratio * g_ratio.double()).sum()
    if with_kl:
        # x+z is a fixed teacher: its log-softmax is detached in the reference too
        lxz = torch.log_softmax(hxz.double() @ w64.detach().T / temperature, -1)
        lx = torch.log_softmax(hx64 @ w64.T / temperature, -1)
        ref_loss = ref_loss + ((lxz.exp() * (lxz - lx)).sum(-1) * g_kl.double()).sum()
    ref_loss.backward()

    torch.testing.assert_close(out.logp_x.double(), rx.detach(), **FP32_TOL)
    torch.testing.assert_close(out.logp_xz.double(), rxz.detach(), **FP32_TOL)
    torch.testing.assert_close(out.ratio.double(), rratio.detach(), **FP32_TOL)
    want_mask = (rratio >= lo) & (rratio <= hi)
    borderline = ((rratio - lo).abs() < 1e-4) | ((rratio - hi).abs() < 1e-4)
    assert (out.mask == want_mask)[~borderline].all()
    assert 0 < out.mask.sum() < T or T < 5, "the test ratios should exercise both sides of the mask"
    if with_kl:
        torch.testing.assert_close(out.kl.double(), rkl.detach(), **FP32_TOL)
        assert (out.kl > -1e-5).all()
    else:
        assert out.kl is None
    assert hxz_.grad is None, "x+z is the teacher context: no gradient"
    torch.testing.assert_close(hx_.grad.double(), hx64.grad, **FP32_TOL)
    torch.testing.assert_close(w_.grad.double(), w64.grad, **FP32_TOL)


def test_logp_x_equals_single_context_kernel():
    hx, hxz, w, y = make_inputs(37, 72, 1000, seed=2)
    out = dual_context_logprob(hx, hxz, w, y, 0.8, split_v=256)
    torch.testing.assert_close(out.logp_x, fused_linear_logprob(hx, w, y, 0.8, split_v=256), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.logp_xz, fused_linear_logprob(hxz, w, y, 0.8, split_v=256), atol=1e-6, rtol=1e-6)


def test_identical_contexts_give_ratio_one_and_zero_kl():
    hx, _, w, y = make_inputs(9, 24, 200, seed=4)
    out = dual_context_logprob(hx, hx.clone(), w, y, with_kl=True)
    torch.testing.assert_close(out.ratio, torch.ones(9), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.kl, torch.zeros(9), atol=1e-6, rtol=0)
    assert out.mask.all()


def test_forward_buffer_fully_written():
    hx, hxz, w, y = make_inputs(37, 72, 1000)
    px, pxz = dual_ops.dual_partials_triton(hx, hxz, w, y, 1.0, True, split_v=256)  # NaN-poisoned buffer
    for s in (px, pxz):
        assert torch.isfinite(s.lse).all() and torch.isfinite(s.target).all() and torch.isfinite(s.expect).all()


def test_bad_inputs():
    hx, hxz, w, y = make_inputs(4, 8, 50)
    with pytest.raises(ValueError, match="hidden_xz must match"):
        dual_context_logprob(hx, hxz[:3], w, y)
    with pytest.raises(ValueError, match="ratio bounds"):
        dual_context_logprob(hx, hxz, w, y, ratio_low=2.0, ratio_high=1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_gpu():
    # bf16 logits: 1e-2 absolute on log-probs / KL relative to the fp64 reference of the same bf16 inputs.
    hx, hxz, w, y = make_inputs(4097, 256, 32001, dtype=torch.bfloat16, device="cuda")
    out = dual_context_logprob(hx, hxz, w, y, 0.6, with_kl=True)
    rx, rxz, rkl = ref_dual(hx, hxz, w, y, 0.6)
    assert (out.logp_x.double() - rx).abs().max() < 1e-2
    assert (out.logp_xz.double() - rxz).abs().max() < 1e-2
    assert (out.kl.double() - rkl).abs().max() < 1e-2
