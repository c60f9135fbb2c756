"""Fronts and parent-selection weights, cross-checked against the gepa library (0.1.4) on random score matrices."""
from __future__ import annotations

import random

import pytest
from gepa.core.state import GEPAState, ValsetEvaluation
from gepa.gepa_utils import remove_dominated_programs
from gepa.strategies.candidate_selector import ParetoCandidateSelector

from p2o.gepa.core.pool import (
    Pool,
    instance_fronts,
    non_dominated,
    parent_weights,
    select_parents,
    weighted_sample_distinct,
)
from tests.p2o.gepa.stats import assert_follows


def random_pool(rng: random.Random, n_cand: int, n_dev: int, levels: list[float]) -> Pool:
    pool = Pool()
    for c in range(n_cand):
        pool.add(f"t{c}", None if c == 0 else rng.randrange(c), c - 1, [rng.choice(levels) for _ in range(n_dev)])
    return pool


def library_state(pool: Pool) -> GEPAState:
    cands = pool.candidates
    state = GEPAState({"template": cands[0].template},
                      ValsetEvaluation({}, dict(enumerate(cands[0].dev_scores))))
    for c in cands[1:]:
        state.update_state_with_new_program([c.parent], {"template": c.template},
                                            ValsetEvaluation({}, dict(enumerate(c.dev_scores))), None, 0)
    return state


def normalised(w: dict) -> dict:
    total = sum(w.values())
    return {k: v / total for k, v in w.items() if v}


@pytest.mark.parametrize("levels", [[0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.25, 0.5, 0.75, 1.0]])
def test_fronts_and_pruned_weights_equal_the_library(levels):
    rng = random.Random(len(levels))
    for trial in range(60):
        pool = random_pool(rng, rng.randint(1, 12), rng.randint(1, 15), levels)
        state = library_state(pool)
        lib_fronts = state.get_pareto_front_mapping()
        assert [lib_fronts[j] for j in range(len(lib_fronts))] == instance_fronts(pool.matrix())
        # the library's ParetoCandidateSelector samples uniformly from a list holding each surviving program
        # once per (pruned) front it is on: that distribution, computed exactly
        pruned = remove_dominated_programs(lib_fronts, scores=state.per_program_tracked_scores)
        lib_freq: dict[int, float] = {}
        for front in pruned.values():
            for p in front:
                lib_freq[p] = lib_freq.get(p, 0) + 1
        assert normalised(parent_weights(pool, "pruned")) == pytest.approx(normalised(lib_freq)), trial
        # without pruning: the authors' frequency weights
        raw: dict[int, float] = {}
        for front in lib_fronts.values():
            for p in front:
                raw[p] = raw.get(p, 0) + 1
        assert normalised(parent_weights(pool, "frequency")) == pytest.approx(normalised(raw))


def test_library_selector_draws_follow_our_pruned_weights():
    pool = random_pool(random.Random(7), 9, 12, [0.0, 0.0, 1.0])
    selector = ParetoCandidateSelector(random.Random(0))
    state = library_state(pool)
    draws = [selector.select_candidate_idx(state) for _ in range(6000)]
    assert_follows(draws, parent_weights(pool, "pruned"))


def test_paper_mode_is_non_dominated_weighted_by_mean():
    pool = Pool()
    pool.add("", None, -1, [0, 0, 1, 0])      # dominated by 1
    pool.add("a", 0, 0, [1, 0, 1, 0])
    pool.add("b", 0, 0, [0, 1, 0, 0])
    pool.add("c", 1, 1, [1, 0, 1, 0])         # duplicate vector of 1: both kept
    assert non_dominated(pool.matrix()) == [1, 2, 3]
    assert parent_weights(pool, "paper") == {1: 0.5, 2: 0.25, 3: 0.5}
    zero = Pool()
    zero.add("", None, -1, [0, 0])
    assert parent_weights(zero, "paper") == {0: 1e-6}


def test_select_parents_distinct_and_weighted():
    weights = {0: 5.0, 1: 1.0, 2: 3.0, 3: 1.0}
    rng = random.Random(0)
    firsts = []
    for _ in range(4000):
        picks = weighted_sample_distinct(weights, 3, rng)
        assert len(set(picks)) == 3
        firsts.append(picks[0])
    assert_follows(firsts, weights)
    pool = random_pool(random.Random(1), 5, 6, [0.0, 1.0])
    eligible = parent_weights(pool, "frequency")
    assert select_parents(pool, 16, "frequency", random.Random(0)) == sorted(eligible)
    with pytest.raises(ValueError, match="parent_selection"):
        parent_weights(pool, "best")
