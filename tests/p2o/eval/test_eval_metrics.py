"""avg@n, unbiased pass@k and the paired bootstrap, against hand-computed values and independent references."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from p2o.eval.metrics import avg_at_n, benchmark_scores, paired_bootstrap, pass_at_k


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 2, 2, 1 - 1 / 6),        # 1 - C(2,2)/C(4,2)
    (16, 1, 4, 0.25),            # 1 - C(15,4)/C(16,4) = 1 - 1365/1820
    (16, 4, 1, 0.25),            # pass@1 = c/n
    (5, 0, 3, 0.0),
    (5, 5, 5, 1.0),
    (6, 3, 4, 1.0),              # n - c < k: every k-subset holds a correct sample
    (10, 3, 2, 1 - 21 / 45),     # 1 - C(7,2)/C(10,2)
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_comb_and_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                ref = 1 - math.comb(n - c, k) / math.comb(n, k)
                # enumeration: fraction of k-subsets of the n samples that hold at least one correct one
                samples = [1] * c + [0] * (n - c)
                subsets = list(itertools.combinations(samples, k))
                enum = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12) == pytest.approx(enum)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be in 1..n = 4"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        avg_at_n(2, 3)


def test_benchmark_scores_fixed_verdicts():
    # three problems with 4 samples each: 4, 2 and 0 correct
    s = benchmark_scores([(4, 4), (4, 2), (4, 0)], ks=(1, 2, 4, 8))
    assert s["avg"] == pytest.approx(0.5)
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["pass@2"] == pytest.approx((1 + 5 / 6 + 0) / 3)
    assert s["pass@4"] == pytest.approx(2 / 3)
    assert "pass@8" not in s  # k > n is not defined
    assert benchmark_scores([(1, 1), (1, 0), (1, 1), (1, 1)], ks=(1,)) == {"avg": 0.75, "pass@1": 0.75}


def test_paired_bootstrap():
    rng = np.random.default_rng(1)
    a = [rng.integers(0, 2, 60).astype(float), rng.random(30)]
    b = [np.clip(a[0] + (rng.random(60) < 0.2), 0, 1), a[1] + 0.1]
    d, lo, hi = paired_bootstrap(a, b, samples=2000, seed=3)
    expected = ((b[0] - a[0]).mean() + 0.1) / 2
    assert d == pytest.approx(expected)
    assert lo < d < hi and lo > 0  # B is better on every resample of benchmark 2 and never worse on 1
    assert paired_bootstrap(a, b, samples=2000, seed=3) == (d, lo, hi)  # seeded
    same = paired_bootstrap(a, a, samples=100, seed=0)
    assert same == (0.0, 0.0, 0.0)
    # the CI of a constant shift has zero width
    assert paired_bootstrap([[0.0, 1.0]], [[0.5, 1.5]], samples=50)[1:] == pytest.approx((0.5, 0.5))
