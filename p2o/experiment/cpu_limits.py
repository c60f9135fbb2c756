"""What this CPU can do at best: measured fp32 GEMM FLOP/s and memory bandwidth, and the floor they put under
one GRPO step.

The floor of a step is a lower bound, not a model: generation can go no faster than the larger of its
FLOPs at the GEMM rate and its weight reads at the memory bandwidth (every decode step reads every weight
once); training can go no faster than 6 x params x tokens at the GEMM rate (forward 2, backward 4), counting
only the rows with a non-zero advantage (the others cannot change the weights when there is no KL term).
Attention FLOPs are left out (they are < 2% at these lengths), so the floor is a little low.

Two floors per step: the *required* work (learning rows only, no recomputation: what any implementation must
do) and the *work done* by a side (the rows it trained, 8 x params x tokens when every layer's forward is
recomputed in the backward). The second says how close a side runs to the CPU on what it actually computed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class CPULimits:
    """Measured ceilings: `gemm_flops` in FLOP/s (fp32 torch.mm), `mem_bytes_per_s` (copy: read + write)."""

    gemm_flops: float
    mem_bytes_per_s: float
    threads: int


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_limits(gemm_n: int = 1024, copy_bytes: int = 256 * 1024 * 1024, repeats: int = 5) -> CPULimits:
    """Best-of-`repeats` fp32 [n, n] x [n, n] matmul rate and large-tensor copy bandwidth."""
    a, b = torch.randn(gemm_n, gemm_n), torch.randn(gemm_n, gemm_n)
    torch.mm(a, b)  # warm-up
    gemm_s = _best_of(lambda: torch.mm(a, b), repeats)
    src = torch.empty(copy_bytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s = _best_of(lambda: dst.copy_(src), repeats)
    return CPULimits(gemm_flops=2 * gemm_n**3 / gemm_s, mem_bytes_per_s=2 * copy_bytes / copy_s,
                     threads=torch.get_num_threads())


@dataclass
class StepWork:
    """The work of one GRPO step: `params` (all, embeddings included: tied LM head), token counts, the
    longest completion (decode steps) and bytes per parameter of the weights read during decoding."""

    params: int
    prompt_tokens: int
    completion_tokens: int
    decode_steps: int
    learning_frac: float = 1.0
    """Share of the rows trained: for the required work, those with a non-zero advantage (no KL term)."""
    bytes_per_param: int = 4
    train_flops_per_param_token: float = 6.0
    """2 forward + 4 backward; 8 with full activation recomputation (`training_flops_per_param_token`)."""


def training_flops_per_param_token(recompute: str) -> float:
    """FLOPs per parameter and token of one update pass: 6, or 8 when `recompute` is "full" (forward redone)."""
    return 8.0 if recompute == "full" else 6.0


def generation_floor_s(w: StepWork, lim: CPULimits) -> float:
    flops = 2.0 * w.params * (w.prompt_tokens + w.completion_tokens)
    weight_reads = float(w.params * w.bytes_per_param * max(w.decode_steps, 1))
    return max(flops / lim.gemm_flops, weight_reads / lim.mem_bytes_per_s)


def training_floor_s(w: StepWork, lim: CPULimits) -> float:
    """Forward + backward over `learning_frac` of the prompt + completion tokens at `train_flops_per_param_token`;
    old log-probs are not counted (not required work)."""
    return (w.train_flops_per_param_token * w.params * w.learning_frac * (w.prompt_tokens + w.completion_tokens)
            / lim.gemm_flops)


def step_floor_s(w: StepWork, lim: CPULimits) -> float:
    return generation_floor_s(w, lim) + training_floor_s(w, lim)
