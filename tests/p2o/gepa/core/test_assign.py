"""Greedy set cover and the K-template assignment distribution (chi-square on many draws)."""
from __future__ import annotations

import random

import pytest

from p2o.gepa.core.assign import assign_templates, draw_weights, greedy_set_cover
from p2o.gepa.core.pool import Pool
from tests.p2o.gepa.stats import assert_follows


def make_pool() -> Pool:
    pool = Pool()
    pool.add("", None, -1, [0, 0, 0, 0, 0, 1])        # covers {5}
    pool.add("A", 0, 0, [1, 1, 1, 0, 0, 0])           # covers {0,1,2}   mean .5
    pool.add("B", 0, 0, [0, 1, 1, 1, 0, 0])           # covers {1,2,3}
    pool.add("C", 1, 1, [0, 0, 0, 1, 1, 0.5])         # covers {3,4}     mean .417
    pool.add("D", 1, 1, [0, 0, 0, 0, 0, 0])           # covers nothing
    return pool


def test_greedy_set_cover():
    assert greedy_set_cover(make_pool().matrix()) == [1, 3, 0]
    assert greedy_set_cover([[0, 0], [0.5, 0]]) == []
    assert greedy_set_cover([]) == []


def test_solved_at_lowers_the_coverage_bar():
    scores = [[0.25, 0.0, 0.0], [0.0, 0.5, 0.25], [0.0, 0.0, 0.0]]  # e.g. eval_n = 4: fractions of correct samples
    assert greedy_set_cover(scores) == []                              # the paper's rule: every sample correct
    assert greedy_set_cover(scores, solved_at=0.5) == [1]
    assert greedy_set_cover(scores, solved_at=0.25) == [1, 0]          # any sample correct (pass@4)
    pool = Pool()
    for template, row in zip(["", "A", "B"], scores, strict=True):
        pool.add(template, None, -1, row)
    cover = greedy_set_cover(pool.matrix(), solved_at=0.25)
    out = assign_templates(pool, cover, ["d0", "d1", "d2"], [], k=8, rng=random.Random(0), solved_at=0.25)
    assert set(out["d0"]) == {""} and set(out["d1"]) == {"A"}           # only the candidates that solved it
    assert set(out["d2"]) == {"A"}                                      # ditto; d2 is solved by A at 0.25
    assert assign_templates(pool, greedy_set_cover(pool.matrix()), ["d0"], [], 4, random.Random(0)) == {}


def test_assignment_follows_the_specified_distribution():
    pool = make_pool()
    cover = greedy_set_cover(pool.matrix())
    dev = [f"d{j}" for j in range(6)]
    feedback = ["f0", "f1"]
    means = {c: pool.candidates[c].dev_mean for c in cover}
    means[0] = max(means[0], 1e-6)
    out = assign_templates(pool, cover, dev, feedback, k=6000, rng=random.Random(0))
    index = {pool.candidates[c].template: c for c in cover}
    # feedback samples: all covered templates, weight = mean dev score
    assert_follows([index[t] for t in out["f0"]], means)
    # dev sample 3 is solved by C (covered) and B (not covered): only C
    assert set(out["d3"]) == {"C"}
    # dev sample 5 is solved by the seed only
    assert set(out["d5"]) == {""}
    # dev sample 1: solved by A (and B, not covered) -> A only
    assert draw_weights(pool, cover, 1) == {1: pytest.approx(0.5)}


def test_assignment_options_and_empty_cover():
    pool = make_pool()
    cover = greedy_set_cover(pool.matrix())
    out = assign_templates(pool, cover, ["d0"], ["f0", "f1"], k=6, rng=random.Random(1), same_template_in_group=True)
    assert all(len(set(v)) == 1 and len(v) == 6 for v in out.values())
    out = assign_templates(pool, cover, ["d0"], ["f0"], k=4, rng=random.Random(1), leave_one_untemplated=True)
    assert all(v[-1] == "" and len(v) == 4 for v in out.values())
    zero = Pool()
    zero.add("", None, -1, [0, 0, 0])
    assert assign_templates(zero, greedy_set_cover(zero.matrix()), ["a"], ["b"], 6, random.Random(0)) == {}
