"""The candidate pool: templates, their per-instance dev scores, per-instance Pareto fronts, parent selection.

A candidate is one free-text template z (the seed is ""). Its dev vector `dev_scores[j]` is the score of
T(x_j, z) on dev instance j (in `[0, 1]`: the fraction of `eval_n` greedy/sampled responses the verifier
accepts). The per-instance front of instance j is the set of candidates that reach the best score on j,
ties included (GEPA's "program at Pareto front per val instance").

Parent selection (`select_parents`), W distinct parents per iteration drawn without replacement:

- ``frequency`` (the authors' code): every candidate on any front, weight = number of fronts it is on.
- ``pruned`` (the gepa library's `ParetoCandidateSelector`): the same after removing dominated candidates,
  where c is dominated when every front containing c also contains another surviving candidate; candidates
  are examined from the lowest mean dev score upward and removed one at a time, as the library does.
- ``paper`` (P2O Algorithm 4): candidates not Pareto-dominated on the dev vectors (>= everywhere and > once),
  weight = mean dev score (floored at `WEIGHT_FLOOR`).

All randomness comes from the `random.Random` passed in.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

WEIGHT_FLOOR = 1e-6
SELECTIONS = ("frequency", "pruned", "paper")


@dataclass
class Candidate:
    """One template in the pool; `dev_scores` is aligned with the search's dev split."""

    idx: int
    template: str
    parent: int | None
    iteration: int
    """Iteration that produced it (-1 for the seed)."""
    dev_scores: list[float]
    metric_calls_at_discovery: int = 0

    @property
    def dev_mean(self) -> float:
        return sum(self.dev_scores) / len(self.dev_scores) if self.dev_scores else 0.0


@dataclass
class Pool:
    candidates: list[Candidate] = field(default_factory=list)

    def add(self, template: str, parent: int | None, iteration: int, dev_scores: Sequence[float],
            metric_calls: int = 0) -> Candidate:
        if self.candidates and len(dev_scores) != len(self.candidates[0].dev_scores):
            raise ValueError(f"dev_scores has {len(dev_scores)} entries; the pool's dev split has "
                             f"{len(self.candidates[0].dev_scores)}")
        cand = Candidate(len(self.candidates), template, parent, iteration, [float(s) for s in dev_scores],
                         metric_calls)
        self.candidates.append(cand)
        return cand

    def __len__(self) -> int:
        return len(self.candidates)

    def index_of(self, template: str) -> int | None:
        """Index of a candidate whose template equals `template` after stripping, else None."""
        key = template.strip()
        return next((c.idx for c in self.candidates if c.template.strip() == key), None)

    def matrix(self) -> list[list[float]]:
        """Scores [num_candidates][num_dev]."""
        return [c.dev_scores for c in self.candidates]

    def best(self) -> Candidate:
        """Highest mean dev score (earliest on ties)."""
        return max(self.candidates, key=lambda c: (c.dev_mean, -c.idx))

    def to_dict(self) -> dict:
        return {"candidates": [asdict(c) for c in self.candidates]}

    @staticmethod
    def from_dict(d: dict) -> Pool:
        return Pool([Candidate(**c) for c in d["candidates"]])


# ----------------------------------------------------------------------------- fronts and weights
def instance_fronts(scores: Sequence[Sequence[float]]) -> list[set[int]]:
    """Per dev instance j, the set of candidates c with scores[c][j] == max_c' scores[c'][j] (ties included)."""
    if not scores:
        return []
    fronts = []
    for j in range(len(scores[0])):
        best = max(row[j] for row in scores)
        fronts.append({c for c, row in enumerate(scores) if row[j] == best})
    return fronts


def front_frequencies(fronts: Sequence[set[int]]) -> dict[int, int]:
    """Candidate -> number of fronts it is on (only candidates on at least one front).

    Keys are in order of first appearance, iterating each front as a set does (as the gepa library does;
    this order only breaks ties in `prune_dominated`).
    """
    freq: dict[int, int] = {}
    for front in fronts:
        for c in front:
            freq[c] = freq.get(c, 0) + 1
    return freq


def prune_dominated(fronts: Sequence[set[int]], means: Sequence[float]) -> list[set[int]]:
    """The gepa library's `remove_dominated_programs`: drop candidates whose every front has another survivor.

    Candidates are visited in order of first appearance on the fronts, stably sorted by mean dev score
    ascending; the first dominated one is removed and the scan restarts, until none is dominated.
    """
    order = list(front_frequencies(fronts))
    order.sort(key=lambda c: means[c])
    removed: set[int] = set()
    changed = True
    while changed:
        changed = False
        for c in order:
            if c in removed:
                continue
            others = set(order) - removed - {c}
            if all(front & others for front in fronts if c in front):
                removed.add(c)
                changed = True
                break
    return [{c for c in front if c not in removed} for front in fronts]


def non_dominated(scores: Sequence[Sequence[float]]) -> list[int]:
    """Candidates not Pareto-dominated: no other row is >= everywhere and > somewhere (exact duplicates both kept)."""
    keep = []
    for a, ra in enumerate(scores):
        dominated = any(all(x >= y for x, y in zip(rb, ra, strict=True)) and any(x > y for x, y in zip(rb, ra, strict=True))
                        for b, rb in enumerate(scores) if b != a)
        if not dominated:
            keep.append(a)
    return keep


def parent_weights(pool: Pool, mode: str) -> dict[int, float]:
    """Candidate -> unnormalised selection weight under `mode` (one of `SELECTIONS`)."""
    scores = pool.matrix()
    if mode == "frequency":
        return {c: float(f) for c, f in front_frequencies(instance_fronts(scores)).items()}
    if mode == "pruned":
        means = [c.dev_mean for c in pool.candidates]
        return {c: float(f) for c, f in front_frequencies(prune_dominated(instance_fronts(scores), means)).items()}
    if mode == "paper":
        return {c: max(pool.candidates[c].dev_mean, WEIGHT_FLOOR) for c in non_dominated(scores)}
    raise ValueError(f"gepa.parent_selection: got {mode!r}; expected one of {', '.join(SELECTIONS)}")


def weighted_sample_distinct(weights: dict[int, float], k: int, rng: random.Random) -> list[int]:
    """Up to k distinct keys drawn one by one with probability proportional to weight (successive sampling)."""
    items = sorted(weights.items())
    chosen: list[int] = []
    while items and len(chosen) < k:
        total = sum(w for _, w in items)
        r = rng.random() * total
        acc = 0.0
        pick = len(items) - 1
        for i, (_, w) in enumerate(items):
            acc += w
            if r < acc:
                pick = i
                break
        chosen.append(items.pop(pick)[0])
    return chosen


def select_parents(pool: Pool, num_parents: int, mode: str, rng: random.Random) -> list[int]:
    """W distinct parents; all eligible candidates (in index order) when there are at most W of them."""
    weights = parent_weights(pool, mode)
    if len(weights) <= num_parents:
        return sorted(weights)
    return weighted_sample_distinct(weights, num_parents, rng)
