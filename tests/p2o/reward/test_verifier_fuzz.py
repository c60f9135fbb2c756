"""Fuzz: 10 000 random and adversarial strings through the pooled verifier.

Checks: no exception escapes, every verdict is well formed, no pair exceeds its time bound (the pool
enforces it; a sample of the worst inputs is also timed one by one), and nothing is executed: code-like
answers that would create a canary file or set an environment variable leave no trace.
"""
from __future__ import annotations

import os
import random
import time

import pytest
from verifier_fuzz_inputs import TOWERS, fuzz_answer, fuzz_pairs

from p2o.config import RewardConfig
from p2o.reward import Verdict, Verifier
from p2o.reward.verdict import (
    BAD_INPUT,
    EQUAL_NUMERIC,
    EQUAL_STRING,
    EQUAL_SYMBOLIC,
    INTERNAL_ERROR,
    NO_BOXED,
    NOT_EQUAL,
    PARSE_ERROR,
    TIMEOUT,
    TOO_COMPLEX,
    TOO_LONG,
)

REASONS = {BAD_INPUT, EQUAL_NUMERIC, EQUAL_STRING, EQUAL_SYMBOLIC, INTERNAL_ERROR, NO_BOXED, NOT_EQUAL, PARSE_ERROR,
           TIMEOUT, TOO_COMPLEX, TOO_LONG, "gold_parse_error"}
TIMEOUT_S = 2.0

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("verifier_pool")]


@pytest.fixture(scope="module")
def verifier():
    with Verifier(RewardConfig(workers=2, timeout_s=TIMEOUT_S)) as v:
        yield v


def test_fuzz_10k(verifier, tmp_path):
    canary = tmp_path / "canary"
    os.environ.pop("P2O_FUZZ_CANARY", None)
    pairs = fuzz_pairs(10_000, seed=1234, canary=str(canary))
    t = time.perf_counter()
    verdicts = verifier.score_many(pairs)
    wall = time.perf_counter() - t
    assert len(verdicts) == len(pairs)
    for v in verdicts:
        assert isinstance(v, Verdict) and isinstance(v.correct, bool) and v.reason in REASONS, v
        assert v.extracted is None or isinstance(v.extracted, str)
        if v.correct:
            assert v.reason in (EQUAL_STRING, EQUAL_SYMBOLIC, EQUAL_NUMERIC)
    reasons = {v.reason for v in verdicts}
    assert {NO_BOXED, PARSE_ERROR, TOO_COMPLEX, TOO_LONG, NOT_EQUAL} <= reasons, reasons
    assert INTERNAL_ERROR not in reasons
    # nothing was executed
    assert not canary.exists()
    assert "P2O_FUZZ_CANARY" not in os.environ
    # the time bound: a pair that times out costs at most TIMEOUT_S (+ a worker restart, done in parallel)
    assert wall < 60 + verifier.timeouts * (TIMEOUT_S + 5), (wall, verifier.timeouts)


def test_worst_inputs_each_within_bound(verifier, tmp_path):
    rng = random.Random(7)
    worst = TOWERS + [fuzz_answer(rng, str(tmp_path / "c")) for _ in range(20)]
    for a in worst:
        t = time.perf_counter()
        v = verifier.score("\\boxed{" + a + "}", "x^2+1")
        dt = time.perf_counter() - t
        assert v.reason in REASONS
        assert dt < TIMEOUT_S + 5.0, (a, dt)  # bound + slack for replacing a killed worker on a busy machine
    assert not (tmp_path / "c").exists()
