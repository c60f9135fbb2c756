"""Side-by-side comparison of evaluation runs with per-benchmark deltas and a paired bootstrap CI.

The first run is the baseline. For every other run, each benchmark shows its score and the delta to the
baseline, computed on the problems both runs scored (paired by problem id). The "Avg" row is the
unweighted mean over the benchmarks every run has, with a seeded paired-bootstrap confidence interval on
the delta of that average (problems resampled within each benchmark, the same draws for both runs).
"""
from __future__ import annotations

from dataclasses import dataclass

from p2o.eval.metrics import paired_bootstrap
from p2o.eval.results import RunRecord


@dataclass
class Comparison:
    """Scores (percent) per run and benchmark, deltas to the baseline, and the average's bootstrap CI."""

    labels: list[str]
    benchmarks: list[str]
    titles: list[str]
    scores: list[list[float]]
    """[run][benchmark] mean score in percent, on the problems shared by all runs."""
    average: list[float]
    ci: list[tuple[float, float, float]]
    """Per non-baseline run: (delta, low, high) of the average in percentage points."""
    shared_problems: list[int]
    confidence: float


def compare_runs(runs: list[RunRecord], samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> Comparison:
    """Compare runs on the benchmarks they all have, pairing problems by id."""
    if len(runs) < 2:
        raise ValueError("compare: give at least two run directories")
    names = [b for b in runs[0].scores if all(b in r.scores for r in runs[1:])]
    if not names:
        raise ValueError("compare: the runs have no benchmark in common")
    shared = {b: [pid for pid in runs[0].scores[b] if all(pid in r.scores[b] for r in runs[1:])] for b in names}
    empty = [b for b in names if not shared[b]]
    if empty:
        raise ValueError(f"compare: no problem ids in common for {', '.join(empty)}")
    per = [[[r.scores[b][pid] for pid in shared[b]] for b in names] for r in runs]  # [run][bench][problem]
    means = [[100 * sum(x) / len(x) for x in run] for run in per]
    ci = []
    for j in range(1, len(runs)):
        d, lo, hi = paired_bootstrap(per[0], per[j], samples=samples, seed=seed, confidence=confidence)
        ci.append((100 * d, 100 * lo, 100 * hi))
    return Comparison(labels=[r.label for r in runs], benchmarks=names, titles=[runs[0].titles[b] for b in names],
                      scores=means, average=[sum(m) / len(m) for m in means], ci=ci,
                      shared_problems=[len(shared[b]) for b in names], confidence=confidence)


def comparison_markdown(c: Comparison) -> str:
    """A Markdown table: one row per benchmark, a score column per run and a delta column per non-baseline run."""
    cols = ["Benchmark", "Problems", c.labels[0]]
    for label in c.labels[1:]:
        cols += [label, f"Δ {label}"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for i, title in enumerate(c.titles):
        cells = [title, str(c.shared_problems[i]), f"{c.scores[0][i]:.1f}"]
        for j in range(1, len(c.labels)):
            cells += [f"{c.scores[j][i]:.1f}", f"{c.scores[j][i] - c.scores[0][i]:+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**Avg**", str(sum(c.shared_problems)), f"{c.average[0]:.1f}"]
    for j in range(1, len(c.labels)):
        d, lo, hi = c.ci[j - 1]
        cells += [f"{c.average[j]:.1f}", f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"]
    lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Scores in %. Δ is against {c.labels[0]}; the Avg row gives a paired-bootstrap "
                 f"{100 * c.confidence:.0f}% interval on the difference of the averages.")
    return "\n".join(lines) + "\n"
