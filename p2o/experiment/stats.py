"""Intervals for experiments with few seeds and paired comparisons of per-problem results.

- `t_interval`: Student-t interval of a mean over seeds (n >= 2; the spread between seeds is the only error
  term, so with 3 seeds the interval is wide: t(0.975, 2) = 4.30).
- `paired_delta`: the difference of two runs' mean per-unit scores with `p2o.eval.compare`'s paired bootstrap,
  units paired by key (e.g. "seed:problem" pairs, so both runs are resampled on the same problems and seeds).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

# two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30; larger df use the normal 1.960
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the multiplier of a two-sided 95% interval."""
    if df < 1:
        raise ValueError(f"t_quantile_975: df {df}; expected >= 1")
    return _T975[df - 1] if df <= len(_T975) else 1.960


def t_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a two-sided 95% t-interval over `values` (one per seed); low/high are None for
    fewer than two values."""
    if not values:
        raise ValueError("t_interval: no values")
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None, None
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def paired_delta(base: dict[str, float], other: dict[str, float], samples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float, int]:
    """(delta, low, high, units) of mean(other) - mean(base) over the keys both have, with a 95% paired
    bootstrap (`p2o.eval.compare.compare_runs`: the same resampled units for both), as fractions."""
    from p2o.eval.compare import compare_runs
    from p2o.eval.results import RunRecord

    def record(label: str, scores: dict[str, float]) -> RunRecord:
        return RunRecord(path=Path(label), label=label, info={}, titles={"m": "m"}, scores={"m": scores})

    c = compare_runs([record("base", base), record("other", other)], samples=samples, seed=seed)
    d, lo, hi = c.ci[0]
    return d / 100, lo / 100, hi / 100, c.shared_problems[0]


def fmt_interval(m: float | None, lo: float | None, hi: float | None, digits: int = 3) -> str:
    """'m [lo, hi]', or 'm' without bounds, or '-' without a value; a value that rounds to zero prints without a
    sign ('0', not '-0')."""
    if m is None:
        return "-"

    def f(x: float) -> str:
        return f"{x if round(x, digits) != 0 else 0.0:.{digits}f}"

    if lo is None or hi is None:
        return f(m)
    return f"{f(m)} [{f(lo)}, {f(hi)}]"
