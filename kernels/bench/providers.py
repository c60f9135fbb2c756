"""What each benchmarked provider runs: a setup function per provider returning a loss closure.

Every provider computes the per-token log-prob of the targets (and, where it can, the entropy) from
hidden [T, H] and an LM head [V, H], then reduces them with fixed random upstream weights to a scalar,
so `full` = forward + backward of the same work for all. Baselines that are not installed are reported as
skipped, never faked.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

TEMPERATURE = 0.6


@dataclass
class Case:
    """One benchmark shape and its tensors (leaves require grad)."""

    T: int
    H: int
    V: int
    hidden: torch.Tensor
    hidden_xz: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    d_logp: torch.Tensor
    d_ent: torch.Tensor

    @property
    def leaves(self) -> list[torch.Tensor]:
        return [self.hidden, self.weight]


def make_case(T: int, H: int, V: int, device: str, dtype: torch.dtype, seed: int = 0) -> Case:
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)
    hidden = randn(T, H).requires_grad_()
    hidden_xz = randn(T, H)
    weight = randn(V, H, scale=H ** -0.5).requires_grad_()
    targets = torch.randint(0, V, (T,), generator=g, device=device)
    return Case(T, H, V, hidden, hidden_xz, weight, targets, torch.randn(T, generator=g, device=device),
                torch.randn(T, generator=g, device=device))


def eager_logprob_entropy(hidden, weight, targets, temperature=TEMPERATURE):
    """Materialised-logits reference: fp32 logits [T, V], log_softmax, gather, entropy."""
    z = (hidden @ weight.T).float() / temperature
    lsm = torch.log_softmax(z, dim=-1)
    return lsm.gather(1, targets[:, None])[:, 0], -(lsm.exp() * lsm).sum(-1)


LossFn = Callable[[], torch.Tensor]


def setup_fused(c: Case, backend: str = "auto") -> LossFn:
    from kernels import fused_linear_logprob

    def loss():
        logp, ent = fused_linear_logprob(c.hidden, c.weight, c.targets, TEMPERATURE, with_entropy=True,
                                         backend=backend)
        return (logp * c.d_logp).sum() + (ent * c.d_ent).sum()
    return loss


def setup_eager(c: Case) -> LossFn:
    def loss():
        logp, ent = eager_logprob_entropy(c.hidden, c.weight, c.targets)
        return (logp * c.d_logp).sum() + (ent * c.d_ent).sum()
    return loss


def setup_compile(c: Case) -> LossFn:
    fn = torch.compile(eager_logprob_entropy)

    def loss():
        logp, ent = fn(c.hidden, c.weight, c.targets)
        return (logp * c.d_logp).sum() + (ent * c.d_ent).sum()
    return loss


def setup_liger(c: Case) -> LossFn:
    """Liger-Kernel fused linear cross entropy, reduction='none' (log-prob only; Liger has no entropy here)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy  # optional dependency

    def loss():
        out = liger_fused_linear_cross_entropy(c.hidden / TEMPERATURE, c.weight, c.targets, reduction="none")
        nll = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)  # (loss, z_loss) in some versions
        return (-nll.float() * c.d_logp).sum()
    return loss


def setup_cce(c: Case) -> LossFn:
    """Apple Cut Cross-Entropy, reduction='none' (log-prob only)."""
    from cut_cross_entropy import linear_cross_entropy  # optional dependency

    def loss():
        nll = linear_cross_entropy(c.hidden / TEMPERATURE, c.weight, c.targets, reduction="none")
        return (-nll.float() * c.d_logp).sum()
    return loss


def setup_gemm(c: Case) -> LossFn:
    """The bare LM-head GEMM h @ W^T (bf16 in, bf16 out, no reduction after it): the measured compute ceiling."""
    def loss():
        with torch.no_grad():
            return c.hidden @ c.weight.T
    return loss


def setup_dual(c: Case) -> LossFn:
    """Both contexts' log-probs in one pass: the same outputs and gradients as `two-single`."""
    from kernels import dual_context_logprob

    def loss():
        out = dual_context_logprob(c.hidden, c.hidden_xz, c.weight, c.targets, TEMPERATURE)
        return (out.logp_x * c.d_logp).sum() + (out.logp_xz * c.d_ent).sum()
    return loss


def setup_dual_kl(c: Case) -> LossFn:
    """The dual pass plus the full-vocabulary KL(p_xz || p_x) and its gradient (no single-pass equivalent)."""
    from kernels import dual_context_logprob

    def loss():
        out = dual_context_logprob(c.hidden, c.hidden_xz, c.weight, c.targets, TEMPERATURE, with_kl=True)
        return (out.logp_x * c.d_logp).sum() + (out.kl * c.d_ent).sum()
    return loss


def setup_single(c: Case) -> LossFn:
    """One context's log-probs (no entropy): the unit the dual pass is compared with (target: dual <= 1.3x)."""
    from kernels import fused_linear_logprob

    def loss():
        return (fused_linear_logprob(c.hidden, c.weight, c.targets, TEMPERATURE) * c.d_logp).sum()
    return loss


def setup_two_single(c: Case) -> LossFn:
    """Baseline of the dual pass: the single-context kernel run once per context."""
    from kernels import fused_linear_logprob

    def loss():
        lp_x = fused_linear_logprob(c.hidden, c.weight, c.targets, TEMPERATURE)
        with torch.no_grad():
            lp_xz = fused_linear_logprob(c.hidden_xz, c.weight, c.targets, TEMPERATURE)
        return (lp_x * c.d_logp).sum() + (lp_xz * c.d_ent).sum()
    return loss


def setup_grpo_fused(c: Case) -> LossFn:
    from kernels import fused_linear_grpo_loss

    old = torch.full((c.T,), -2.0, device=c.hidden.device)
    mask = torch.ones(c.T, device=c.hidden.device)

    def loss():
        return fused_linear_grpo_loss(c.hidden, c.weight, c.targets, old, c.d_logp, mask / c.T, clip_low=0.2,
                                      clip_high=0.2, dual_clip=3.0, kl_coef=0.0, kl_type="k3",
                                      temperature=TEMPERATURE).loss
    return loss


def setup_grpo_eager(c: Case) -> LossFn:
    old = torch.full((c.T,), -2.0, device=c.hidden.device)

    def loss():
        logp, _ = eager_logprob_entropy(c.hidden, c.weight, c.targets)
        ratio = torch.exp(logp - old)
        pg = torch.maximum(-c.d_logp * ratio, -c.d_logp * ratio.clamp(0.8, 1.2))
        pg = torch.where(c.d_logp < 0, torch.minimum(-c.d_logp * 3.0, pg), pg)
        return pg.sum() / c.T
    return loss


# provider -> (kernel family, setup, FLOP multiplier of 2*T*H*V for the forward)
PROVIDERS: dict[str, tuple[str, Callable[[Case], LossFn], int]] = {
    "fused": ("logprob", setup_fused, 1),
    "eager": ("logprob", setup_eager, 1),
    "compile": ("logprob", setup_compile, 1),
    "liger": ("logprob", setup_liger, 1),
    "cce": ("logprob", setup_cce, 1),
    "gemm": ("logprob", setup_gemm, 1),
    "single": ("dual_context", setup_single, 1),
    "dual": ("dual_context", setup_dual, 2),
    "dual-kl": ("dual_context", setup_dual_kl, 2),
    "two-single": ("dual_context", setup_two_single, 2),
    "grpo-fused": ("grpo_loss", setup_grpo_fused, 1),
    "grpo-eager": ("grpo_loss", setup_grpo_eager, 1),
}


def try_setup(name: str, case: Case) -> tuple[LossFn | None, str]:
    """(loss closure, '') or (None, why it is skipped) for a provider that is not installed."""
    try:
        return PROVIDERS[name][1](case), ""
    except ImportError as e:
        return None, f"not installed ({e.name})"
