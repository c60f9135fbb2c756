"""Plain-torch, vocabulary-chunked implementations of the log-prob kernels' two primitives.

This is the CPU production path (and the reference the Triton kernels mirror). Peak extra memory is a
few [T, chunk] fp32 tiles, never [T, V]. Both primitives work on one vocabulary shard ``weight`` and on
targets already shifted into the shard's local ids (``y_local``; out-of-shard ids are simply not found).

- ``*_partials``: per-chunk `SoftmaxStats` ([P, T] / [P, T, E]) to be merged by `merge_partials`.
- ``*_dz``: the logit gradient dL/dl of one vocabulary chunk [Ta, c1 - c0] (l = h W^T, z = l / temperature).
"""
from __future__ import annotations

import torch

from kernels.dispatch import acc_dtype
from kernels.ops.vocab_stats import SoftmaxStats


def _target_logit(z: torch.Tensor, y_chunk: torch.Tensor) -> torch.Tensor:
    """z[t, y_chunk[t]] where 0 <= y_chunk[t] < z.shape[1], else 0.  z: [T, C], y_chunk: [T] long."""
    inside = (y_chunk >= 0) & (y_chunk < z.shape[1])
    picked = z.gather(1, y_chunk.clamp(0, z.shape[1] - 1)[:, None])[:, 0]
    return torch.where(inside, picked, torch.zeros_like(picked))


def _onehot_add_(dz: torch.Tensor, y_chunk: torch.Tensor, value: torch.Tensor) -> None:
    """dz[t, y_chunk[t]] += value[t] for the rows whose target lies in the chunk."""
    inside = ((y_chunk >= 0) & (y_chunk < dz.shape[1])).nonzero()[:, 0]
    dz[inside, y_chunk[inside]] += value[inside]


def logits_chunk(hidden: torch.Tensor, weight_chunk: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """[T, C] scaled logits of one vocabulary chunk, fp32 (fp64 for fp64 inputs)."""
    return (hidden @ weight_chunk.T).to(acc_dtype(hidden.dtype)) * inv_temp


def flp_partials_torch(hidden: torch.Tensor, weight: torch.Tensor, y_local: torch.Tensor, inv_temp: float,
                       with_entropy: bool, chunk: int) -> SoftmaxStats:
    """Per-chunk lse, target logit and (with_entropy) E_p[z]: SoftmaxStats with [P, T] / [P, T, E] fields."""
    T = hidden.shape[0]
    if weight.shape[0] == 0:  # an empty shard: no chunks (merge_partials: lse -inf, target 0, expectations 0)
        return SoftmaxStats(hidden.new_zeros(0, T, dtype=torch.float32), hidden.new_zeros(0, T, dtype=torch.float32),
                            hidden.new_zeros(0, T, 1 if with_entropy else 0, dtype=torch.float32))
    lses, tgts, exps = [], [], []
    for c0 in range(0, weight.shape[0], chunk):
        z = logits_chunk(hidden, weight[c0:c0 + chunk], inv_temp)  # [T, C]
        lse = torch.logsumexp(z, dim=1)
        lses.append(lse)
        tgts.append(_target_logit(z, y_local - c0))
        if with_entropy:
            exps.append((torch.softmax(z, dim=1) * z).sum(dim=1, keepdim=True))
        else:
            exps.append(z.new_zeros(z.shape[0], 0))
    return SoftmaxStats(torch.stack(lses), torch.stack(tgts), torch.stack(exps))


def flp_dz_torch(hidden: torch.Tensor, weight_chunk: torch.Tensor, y_chunk: torch.Tensor, lse: torch.Tensor,
                 ez: torch.Tensor | None, g: torch.Tensor, e: torch.Tensor | None, inv_temp: float) -> torch.Tensor:
    """dL/dl for one chunk: inv_temp * (g (onehot - p) - e p (z - E_p z)); [Ta, C] in weight's dtype."""
    z = logits_chunk(hidden, weight_chunk, inv_temp)
    p = torch.exp(z - lse[:, None])
    dz = -g[:, None] * p
    if e is not None:
        dz -= e[:, None] * p * (z - ez[:, None])
    _onehot_add_(dz, y_chunk, g)
    return (dz * inv_temp).to(weight_chunk.dtype)


def dual_partials_torch(hidden_x: torch.Tensor, hidden_xz: torch.Tensor, weight: torch.Tensor,
                        y_local: torch.Tensor, inv_temp: float, with_kl: bool,
                        chunk: int) -> tuple[SoftmaxStats, SoftmaxStats]:
    """Per-chunk stats of both contexts; the x+z stats carry E_{p_xz}[z_xz - z_x] when with_kl."""
    parts_x, parts_xz = [], []
    T = hidden_x.shape[0]
    if weight.shape[0] == 0:  # an empty shard: no chunks
        empty = hidden_x.new_zeros(0, T, dtype=torch.float32)
        return (SoftmaxStats(empty, empty, empty.new_zeros(0, T, 0)),
                SoftmaxStats(empty, empty, empty.new_zeros(0, T, 1 if with_kl else 0)))
    both = torch.cat([hidden_x, hidden_xz])  # [2T, H]: one GEMM per chunk reads each weight chunk once
    for c0 in range(0, weight.shape[0], chunk):
        z = logits_chunk(both, weight[c0:c0 + chunk], inv_temp)
        zx, zxz = z[:T], z[T:]
        yc = y_local - c0
        lse_xz = torch.logsumexp(zxz, dim=1)
        parts_x.append((torch.logsumexp(zx, dim=1), _target_logit(zx, yc), zx.new_zeros(zx.shape[0], 0)))
        ekl = ((torch.exp(zxz - lse_xz[:, None]) * (zxz - zx)).sum(dim=1, keepdim=True) if with_kl
               else zx.new_zeros(zx.shape[0], 0))
        parts_xz.append((lse_xz, _target_logit(zxz, yc), ekl))

    def stack(parts):
        return SoftmaxStats(*(torch.stack(f) for f in zip(*parts, strict=True)))
    return stack(parts_x), stack(parts_xz)


def dual_dz_torch(hidden_x: torch.Tensor, hidden_xz: torch.Tensor | None, weight_chunk: torch.Tensor,
                  y_chunk: torch.Tensor, lse_x: torch.Tensor, lse_xz: torch.Tensor | None, g: torch.Tensor,
                  k: torch.Tensor | None, inv_temp: float) -> torch.Tensor:
    """dL/dl_x for one chunk: inv_temp * (g (onehot - p_x) + k (p_x - p_xz)); the x+z branch gets no gradient."""
    p_x = torch.exp(logits_chunk(hidden_x, weight_chunk, inv_temp) - lse_x[:, None])
    dz = -g[:, None] * p_x
    if k is not None:
        p_xz = torch.exp(logits_chunk(hidden_xz, weight_chunk, inv_temp) - lse_xz[:, None])
        dz += k[:, None] * (p_x - p_xz)
    _onehot_add_(dz, y_chunk, g)
    return (dz * inv_temp).to(weight_chunk.dtype)
