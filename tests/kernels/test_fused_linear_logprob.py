"""fused_linear_logprob against an fp64 torch reference: outputs, gradients, splits, row skipping, errors.

CPU runs use the Triton interpreter (TRITON_INTERPRET=1 from conftest) and the chunked torch fallback,
both in fp32; the GPU class repeats the checks in bf16.
"""
from __future__ import annotations

import pytest
import torch

import kernels.ops.fused_linear_logprob as flp_ops
from kernels import fused_linear_logprob
from kernels.dispatch import resolve_backend
from kernels.ops.chunked_torch import flp_dz_torch

# fp32 vs fp64: logits are sums of H=72 products of O(1) terms, so fp32 rounding is ~1e-6 relative;
# 1e-4 absolute covers log-probs around -10 and gradient entries of O(1e-2).
FP32_TOL = dict(atol=1e-4, rtol=1e-4)


def ref_logprob_entropy(hidden, weight, targets, temperature):
    """fp64 reference: materialised logits, log_softmax, gather, entropy (differentiable)."""
    z = (hidden.double() @ weight.double().T) / temperature  # [T, V]
    logsm = torch.log_softmax(z, dim=-1)
    logp = logsm.gather(1, targets[:, None])[:, 0]
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def make_inputs(T, H, V, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g).to(device=device, dtype=dtype)
    weight = (torch.randn(V, H, generator=g) * H ** -0.5 * 3).to(device=device, dtype=dtype)
    targets = torch.randint(0, V, (T,), generator=g).to(device)
    return hidden, weight, targets


def upstream(T, seed=1, zero_every=3):
    g = torch.Generator().manual_seed(seed)
    d_logp, d_ent = torch.randn(T, generator=g), torch.randn(T, generator=g)
    d_logp[::zero_every] = 0  # masked tokens: zero upstream on both outputs -> skipped rows
    d_ent[::zero_every] = 0
    return d_logp, d_ent


def run_and_grads(hidden, weight, targets, temperature, d_logp, d_ent, **kw):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    if d_ent is None:
        logp = fused_linear_logprob(h, w, targets, temperature, **kw)
        ent = None
        (logp * d_logp).sum().backward()
    else:
        logp, ent = fused_linear_logprob(h, w, targets, temperature, with_entropy=True, **kw)
        ((logp * d_logp).sum() + (ent * d_ent).sum()).backward()
    return logp, ent, h.grad, w.grad


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("T,H,V,split_v,vocab_chunk", [
    (37, 72, 1000, 384, 300),   # weird shapes: ragged row block, H tile, splits and chunks
    (5, 16, 130, None, None),   # tiny: one split, one chunk
])
@pytest.mark.parametrize("with_entropy", [True, False])
def test_matches_fp64_reference(backend, T, H, V, split_v, vocab_chunk, with_entropy):
    hidden, weight, targets = make_inputs(T, H, V)
    temperature = 0.7
    d_logp, d_ent = upstream(T)
    logp, ent, dh, dw = run_and_grads(hidden, weight, targets, temperature, d_logp, d_ent if with_entropy else None,
                                      backend=backend, split_v=split_v, vocab_chunk=vocab_chunk)
    h64 = hidden.double().requires_grad_()
    w64 = weight.double().requires_grad_()
    ref_logp, ref_ent = ref_logprob_entropy(h64, w64, targets, temperature)
    loss = (ref_logp * d_logp.double()).sum() + ((ref_ent * d_ent.double()).sum() if with_entropy else 0)
    loss.backward()
    assert logp.dtype == torch.float32 and logp.shape == (T,)
    torch.testing.assert_close(logp.double(), ref_logp.detach(), **FP32_TOL)
    assert (logp <= 0).all()
    if with_entropy:
        torch.testing.assert_close(ent.double(), ref_ent.detach(), **FP32_TOL)
    torch.testing.assert_close(dh.double(), h64.grad, **FP32_TOL)
    torch.testing.assert_close(dw.double(), w64.grad, **FP32_TOL)
    assert (dh[::3] == 0).all(), "rows with zero upstream gradient must get exactly zero dH"


def test_entropy_only_gradient_and_temperature_one():
    hidden, weight, targets = make_inputs(19, 40, 300, seed=3)
    d_logp = torch.zeros(19)
    d_ent = torch.randn(19)
    _, ent, dh, dw = run_and_grads(hidden, weight, targets, 1.0, d_logp, d_ent, split_v=128)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    _, ref_ent = ref_logprob_entropy(h64, w64, targets, 1.0)
    (ref_ent * d_ent.double()).sum().backward()
    torch.testing.assert_close(ent.double(), ref_ent.detach(), **FP32_TOL)
    torch.testing.assert_close(dh.double(), h64.grad, **FP32_TOL)
    torch.testing.assert_close(dw.double(), w64.grad, **FP32_TOL)


def test_split_partials_write_every_row_and_split():
    """The forward buffer is NaN-poisoned: any (split, row, column) the kernel skips stays NaN."""
    hidden, weight, targets = make_inputs(37, 72, 1000)
    parts = flp_ops.flp_partials_triton(hidden, weight, targets, 1.0, True, split_v=256)
    assert parts.lse.shape == (4, 37) and torch.isfinite(parts.lse).all()
    assert torch.isfinite(parts.target).all() and torch.isfinite(parts.expect).all()


def test_dz_kernel_matches_torch_chunk_and_writes_every_element():
    hidden, weight, targets = make_inputs(37, 72, 1000)
    lse = torch.logsumexp(hidden.double() @ weight.double().T, -1).float()
    ez, g, e = torch.randn(37), torch.randn(37), torch.randn(37)
    c0, c1 = 300, 701  # a ragged chunk in the middle of the vocabulary
    args = (hidden, weight[c0:c1], targets - c0, lse, ez, g, e, 1.0)
    dz = flp_ops.flp_dz_triton(*args)  # NaN-poisoned before the launch
    assert torch.isfinite(dz).all()
    torch.testing.assert_close(dz, flp_dz_torch(*args), atol=1e-5, rtol=1e-4)


def test_zero_gradient_rows_are_skipped(monkeypatch):
    hidden, weight, targets = make_inputs(37, 72, 1000)
    seen_rows = []
    real = flp_ops.flp_dz_triton

    def spy(h, *a):
        seen_rows.append(h.shape[0])
        return real(h, *a)
    monkeypatch.setattr(flp_ops, "flp_dz_triton", spy)
    d_logp = torch.zeros(37)
    d_logp[[2, 11, 30]] = 1.0
    _, _, dh, dw = run_and_grads(hidden, weight, targets, 1.0, d_logp, None, vocab_chunk=512)
    assert seen_rows == [3, 3], "backward must recompute logits only for the 3 rows with non-zero gradient"
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    (ref_logprob_entropy(h64, w64, targets, 1.0)[0] * d_logp.double()).sum().backward()
    torch.testing.assert_close(dh.double(), h64.grad, **FP32_TOL)
    torch.testing.assert_close(dw.double(), w64.grad, **FP32_TOL)

    seen_rows.clear()
    _, _, dh, dw = run_and_grads(hidden, weight, targets, 1.0, torch.zeros(37), None)
    assert seen_rows == [] and (dh == 0).all() and (dw == 0).all()


def test_gradcheck_fp64_torch_backend():
    hidden, weight, targets = make_inputs(6, 5, 23, dtype=torch.float64)
    hidden.requires_grad_()
    weight.requires_grad_()

    def f(h, w):
        logp, ent = fused_linear_logprob(h, w, targets, 0.9, with_entropy=True, backend="torch", split_v=7,
                                         vocab_chunk=128)
        return logp, ent
    assert torch.autograd.gradcheck(f, (hidden, weight), eps=1e-6, atol=1e-6)


def test_bad_inputs_name_the_argument():
    hidden, weight, targets = make_inputs(4, 8, 50)
    with pytest.raises(ValueError, match=r"targets\[2\] = 50"):
        bad = targets.clone()
        bad[2] = 50
        fused_linear_logprob(hidden, weight, bad, backend="torch")
    with pytest.raises(ValueError, match="targets must be a long tensor"):
        fused_linear_logprob(hidden, weight, targets.int(), backend="torch")
    with pytest.raises(ValueError, match="weight"):
        fused_linear_logprob(hidden, weight[:, :4], targets, backend="torch")
    with pytest.raises(TypeError, match="share a dtype"):
        fused_linear_logprob(hidden, weight.double(), targets, backend="torch")
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_logprob(hidden, weight, targets, 0.0, backend="torch")
    with pytest.raises(ValueError, match="kernel backend"):
        fused_linear_logprob(hidden, weight, targets, backend="cuda")


def test_dispatch(monkeypatch):
    from kernels.dispatch import BACKENDS
    from p2o.config import choices
    assert choices("train.kernel_backend") == BACKENDS
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "triton"  # TRITON_INTERPRET=1 in tests
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_backend("triton", cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
class TestGPUBf16:
    """bf16 inputs on GPU: |kernel - fp64| <= |torch bf16 eager - fp64| + tol (Cut Cross-Entropy's rule)."""

    # bf16 logits carry ~3 significant digits: 1e-2 absolute on log-probs/entropy (verl uses 1e-3 / 5e-3 for
    # fp32 outputs of bf16 GEMMs at H>=896; our kernel keeps fp32 accumulation so it is never worse than eager).
    TOL = 1e-2

    @pytest.mark.parametrize("T,H,V", [(37, 72, 1000), (4097, 256, 32001)])
    def test_bf16_matches_reference(self, T, H, V):
        hidden, weight, targets = make_inputs(T, H, V, dtype=torch.bfloat16, device="cuda")
        d_logp, d_ent = upstream(T)
        d_logp, d_ent = d_logp.cuda(), d_ent.cuda()
        logp, ent, dh, dw = run_and_grads(hidden, weight, targets, 0.7, d_logp, d_ent)
        h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
        ref_logp, ref_ent = ref_logprob_entropy(h64, w64, targets, 0.7)
        ((ref_logp * d_logp.double()).sum() + (ref_ent * d_ent.double()).sum()).backward()
        z16 = (hidden @ weight.T).float() / 0.7
        eager = torch.log_softmax(z16, -1).gather(1, targets[:, None])[:, 0].double()
        eager_err = (eager - ref_logp.detach()).abs()
        assert ((logp.double() - ref_logp.detach()).abs() <= eager_err + self.TOL).all()
        assert (ent.double() - ref_ent.detach()).abs().max() < 5 * self.TOL
        # gradients: bf16 dz and bf16 GEMM outputs; compare relative to the gradient's scale
        for got, want in ((dh, h64.grad), (dw, w64.grad)):
            scale = want.abs().max()
            assert ((got.double() - want).abs().max() / scale) < 2e-2


def test_row_blocked_dh_update(monkeypatch):
    """dH is accumulated in row blocks when the product would exceed the temporary budget."""
    import kernels.ops.backward_loop as loop
    monkeypatch.setattr(loop, "TEMP_BYTES", 8 * 72 * 4)  # 8 rows of H=72 fp32 per update
    hidden, weight, targets = make_inputs(37, 72, 1000)
    d_logp, d_ent = upstream(37)
    _, _, dh, dw = run_and_grads(hidden, weight, targets, 0.7, d_logp, d_ent, backend="torch", vocab_chunk=256)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref_logp, ref_ent = ref_logprob_entropy(h64, w64, targets, 0.7)
    ((ref_logp * d_logp.double()).sum() + (ref_ent * d_ent.double()).sum()).backward()
    torch.testing.assert_close(dh.double(), h64.grad, **FP32_TOL)
    torch.testing.assert_close(dw.double(), w64.grad, **FP32_TOL)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_empty_batch(backend):
    hidden = torch.zeros(0, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    logp, ent = fused_linear_logprob(hidden, weight, torch.zeros(0, dtype=torch.long), with_entropy=True,
                                     backend=backend)
    (logp.sum() + ent.sum()).backward()
    assert logp.shape == ent.shape == (0,) and (weight.grad == 0).all()
