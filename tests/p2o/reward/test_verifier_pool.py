"""`Verifier`: the public API over real worker processes (timeouts, replacement, threads, lifetime)."""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from p2o.config import RewardConfig
from p2o.reward import Verdict, Verifier

pytestmark = pytest.mark.xdist_group("verifier_pool")

# a true identity of degree 400: it passes the numeric pre-check, then sympy's expand takes many seconds
SLOW = "\\boxed{(a+b)^{200}(a-b)^{200}}"
SLOW_GOLD = "(a^2-b^2)^{200}"


@pytest.fixture(scope="module")
def verifier():
    with Verifier(RewardConfig(workers=2, timeout_s=1.0)) as v:
        yield v


def test_verdict_record():
    v = Verdict(True, "5", "equal_string")
    assert v.to_dict() == {"correct": True, "extracted": "5", "reason": "equal_string"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.correct = False  # type: ignore[misc]


def test_score(verifier):
    assert verifier.score("so \\boxed{\\frac{1}{2}}", "0.5") == Verdict(True, "\\frac{1}{2}", "equal_symbolic")
    assert verifier.score("so \\boxed{21}", "12") == Verdict(False, "21", "not_equal")
    assert verifier.score("the answer is 12", "12") == Verdict(False, None, "no_boxed")
    assert verifier.score("\\boxed{" + "1" * 2000 + "}", "1").reason == "too_long"


@pytest.mark.parametrize("response, answer", [(None, "1"), ("\\boxed{1}", None), (3, 4), (b"\\boxed{1}", "1")])
def test_bad_input_never_raises(verifier, response, answer):
    assert verifier.score(response, answer) == Verdict(False, None, "bad_input")


def test_score_many_keeps_order(verifier):
    pairs = [(f"\\boxed{{{k}}}", str(k if k % 3 else k + 1)) for k in range(150)]
    pairs.insert(40, ("no box", "1"))
    pairs.insert(80, ("x", None))  # type: ignore[arg-type]
    pairs.insert(90, "not a pair")  # type: ignore[arg-type]
    got = verifier.score_many(pairs)
    assert len(got) == len(pairs)
    assert got[40].reason == "no_boxed" and got[80].reason == "bad_input" and got[90].reason == "bad_input"
    rest = [v for k, v in enumerate(got) if k not in (40, 80, 90)]
    assert [v.correct for v in rest] == [k % 3 != 0 for k in range(150)]
    assert [v.extracted for v in rest] == [str(k) for k in range(150)]
    assert verifier.score_many([]) == []


def test_timeout_kills_and_replaces_the_worker(verifier):
    before = verifier.timeouts
    t = time.perf_counter()
    v = verifier.score(SLOW, SLOW_GOLD)
    dt = time.perf_counter() - t
    assert v.reason == "timeout" and not v.correct and v.extracted.startswith("(a+b)")
    assert dt < 1.0 + 3.0, dt  # the bound, plus scheduling slack on a loaded machine
    assert verifier.timeouts == before + 1
    # the pool still answers, including the pairs after a timeout inside one chunk
    got = verifier.score_many([("\\boxed{1}", "1"), (SLOW, SLOW_GOLD), ("\\boxed{2}", "2"), ("\\boxed{3}", "4")])
    assert [g.reason for g in got] == ["equal_string", "timeout", "equal_string", "not_equal"]


def test_concurrent_threads(verifier):
    pairs = [(f"\\boxed{{\\frac{{{k}}}{{{k + 1}}}}}", f"{2 * k}/{2 * k + 2}") for k in range(1, 60)]
    results: list[list[Verdict]] = []
    errors: list[BaseException] = []

    def work():
        try:
            results.append(verifier.score_many(pairs))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)] + \
              [threading.Thread(target=lambda: results.append([verifier.score(*pairs[0])]))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors
    assert sum(len(r) for r in results) == 4 * len(pairs) + 1
    assert all(v.correct for r in results for v in r)


def test_close_and_context_manager():
    v = Verifier(RewardConfig(workers=1, timeout_s=5.0))
    assert v.score("\\boxed{2}", "2").correct
    v.close()
    v.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        v.score("\\boxed{2}", "2")
    with Verifier(RewardConfig(workers=1, fallback="last_number")) as v2:
        assert v2.score("it is 7", "7").correct


@pytest.mark.parametrize("kwargs, key", [({"fallback": "guess"}, "reward.fallback"),
                                         ({"workers": 0}, "reward.workers"),
                                         ({"timeout_s": 0.0}, "reward.timeout_s"),
                                         ({"max_answer_chars": 0}, "reward.max_answer_chars")])
def test_config_errors_name_the_field(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Verifier(RewardConfig(**kwargs))


def test_worker_killed_by_the_os_is_replaced():
    """A worker that dies mid-pair (OOM killer, segfault) gives internal_error; the pool keeps serving."""
    with Verifier(RewardConfig(workers=1, timeout_s=60.0)) as v:
        assert v.score("\\boxed{1}", "1").correct  # the worker is up
        worker = v._pool._idle.queue[0]
        result: list[Verdict] = []
        th = threading.Thread(target=lambda: result.append(v.score(SLOW, SLOW_GOLD)))
        th.start()
        time.sleep(1.0)
        worker.proc.kill()
        th.join(timeout=60)
        assert result == [Verdict(False, SLOW[7:-1], "internal_error")]
        assert v.score("\\boxed{2}", "2").correct
