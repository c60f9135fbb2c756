"""Chi-square goodness of fit without scipy (Wilson-Hilferty approximation of the chi-square quantile)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

_Z = {0.999: 3.090232, 0.9999: 3.719016}


def chi2_quantile(df: int, q: float = 0.999) -> float:
    z = _Z[q]
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def assert_follows(draws: Sequence[Hashable], weights: Mapping[Hashable, float], q: float = 0.999) -> float:
    """Fail when the draws are implausible under P(k) = w_k / sum(w) (and on any draw outside the support)."""
    counts = Counter(draws)
    assert set(counts) <= set(weights), f"drawn outside the support: {set(counts) - set(weights)}"
    total = sum(weights.values())
    n = len(draws)
    stat = sum((counts.get(k, 0) - n * w / total) ** 2 / (n * w / total) for k, w in weights.items())
    df = max(1, len(weights) - 1)
    assert stat < chi2_quantile(df, q), f"chi2 = {stat:.1f} >= {chi2_quantile(df, q):.1f} (df {df})"
    return stat
