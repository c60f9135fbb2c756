"""Scores over per-problem verdicts: avg@n, unbiased pass@k, and a paired bootstrap for run comparisons.

For one problem with n samples of which c are correct:
- avg@n = c / n (the paper's "mean over 16 samples"; greedy decoding is the case n = 1);
- pass@k = 1 - C(n - c, k) / C(n, k), the unbiased estimator of Chen et al. (2021), defined for k <= n.
A benchmark score is the mean over its problems; the paper's "Avg" is the unweighted mean over benchmarks.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not (0 <= c <= n) or n < 1:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and n >= 1; got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in 1..n = {n}; got k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def avg_at_n(n: int, c: int) -> float:
    """Fraction of correct samples for one problem."""
    if not (0 <= c <= n) or n < 1:
        raise ValueError(f"avg_at_n: need 0 <= c <= n and n >= 1; got n={n}, c={c}")
    return c / n


def benchmark_scores(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean avg@n and pass@k over problems, from (n, c) per problem; pass@k only for k <= min n.

    Returns {'avg': ..., 'pass@1': ..., 'pass@4': ...} as fractions in [0, 1].
    """
    if not counts:
        raise ValueError("benchmark_scores: no problems")
    out = {"avg": float(np.mean([avg_at_n(n, c) for n, c in counts]))}
    min_n = min(n for n, _ in counts)
    for k in ks:
        if k <= min_n:
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
    return out


def paired_bootstrap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], samples: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Confidence interval of mean_over_benchmarks(B) - mean_over_benchmarks(A), resampling problems.

    `a[j]` and `b[j]` are per-problem scores of benchmark j for runs A and B, aligned by problem (paired).
    Each replicate resamples problems with replacement within every benchmark (the same indices for both
    runs), then averages benchmark means as the paper's "Avg" does. Returns (delta, low, high).
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap: need the same non-zero number of benchmarks for both runs")
    rng = np.random.default_rng(seed)
    deltas = np.zeros(samples)
    point = 0.0
    for xa, xb in zip(a, b, strict=True):
        da = np.asarray(xb, dtype=np.float64) - np.asarray(xa, dtype=np.float64)  # [P] paired differences
        if da.size == 0:
            raise ValueError("paired_bootstrap: a benchmark has no shared problems")
        point += da.mean() / len(a)
        idx = rng.integers(0, da.size, size=(samples, da.size))  # [S, P]
        deltas += da[idx].mean(axis=1) / len(a)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return float(point), float(low), float(high)
