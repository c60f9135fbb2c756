"""The search loop against a scripted evaluation oracle (no HTTP): coverage, accounting, resume, pauses."""
from __future__ import annotations

import json
import random

import pytest

from p2o.config import GEPAConfig
from p2o.gepa.core.assign import greedy_set_cover
from p2o.gepa.core.pool import instance_fronts
from p2o.gepa.core.reflect import Completion, Reflector
from p2o.gepa.core.result import build_result
from p2o.gepa.core.search import Search, SearchHooks, SearchState, new_state, split_hard_set
from tests.p2o.gepa.oracle import OracleEvaluator, make_problems, scripted_reflection, solves


def reflector() -> Reflector:
    return Reflector(lambda prompt: Completion(scripted_reflection(prompt)), context_tokens=8192, max_tokens=512)


def run_search(problems, cfg, hooks=None, state=None, evaluator=None):
    evaluator = evaluator or OracleEvaluator()
    state = state or new_state(problems, cfg)
    Search(problems, cfg, evaluator, reflector(), state, hooks=hooks).run()
    return state, evaluator


def test_split_sizes():
    ids = [f"p{i}" for i in range(10)]
    dev, fb = split_hard_set(ids, 300, random.Random(0))
    assert len(dev) == 5 and len(fb) == 5 and sorted(dev + fb) == sorted(ids)
    ids = [f"p{i}" for i in range(500)]
    dev, fb = split_hard_set(ids, 300, random.Random(0))
    assert len(dev) == 300 and len(fb) == 200
    with pytest.raises(ValueError, match="at least 2"):
        split_hard_set(["a"], 300, random.Random(0))


def test_search_covers_dev_and_accounts_honestly():
    problems = make_problems(36)
    cfg = GEPAConfig(num_parents=4, minibatch_size=3, budget_metric_calls=400, seed=3)
    state, ev = run_search(problems, cfg)
    byid = {p.id: p for p in problems}
    dev = state.dev_ids
    # budget: every evaluation charged; the only overshoot allowed is the last dev wave
    assert state.metric_calls == sum(ev.waves) == state.charged
    assert state.stop_reason == "budget"
    assert state.charged <= cfg.budget_metric_calls + cfg.num_parents * len(dev)
    assert max(ev.waves) <= cfg.num_parents * max(cfg.minibatch_size, len(dev))
    assert sum(s.metric_calls for s in state.iteration_stats) + len(dev) == state.metric_calls
    assert len(state.iteration_stats) == state.iteration
    # pool: seed first, every candidate's dev vector is the oracle's
    pool = state.pool
    assert pool.candidates[0].template == "" and len(pool) > 3
    for c in pool.candidates:
        assert c.dev_scores == [1.0 if solves(c.template, byid[d].question) else 0.0 for d in dev]
    # acceptance: exactly the strict improvements joined the pool
    accepted = [r for r in state.log if r.status == "accepted"]
    assert len(accepted) == len(pool) - 1
    for r in state.log:
        if r.status in ("accepted", "rejected"):
            assert (sum(r.child_scores) > sum(r.parent_scores)) == (r.status == "accepted")
            assert r.parent_scores == [1.0 if solves(pool.candidates[r.parent].template, byid[m].question) else 0.0
                                       for m in r.minibatch]
    # coverage: the pool's set cover solves every dev instance (each topic needs its hint)
    cover = greedy_set_cover(pool.matrix())
    covered = {j for c in cover for j, s in enumerate(pool.candidates[c].dev_scores) if s == 1.0}
    assert covered == set(range(len(dev)))
    assert len(cover) >= 2  # capacity 3 of 6 topics: one template cannot cover all
    # the result: fronts and a K-template assignment for every hard sample
    res = build_result(state, k=6, seed=0, budget_total=cfg.budget_metric_calls, accounting=cfg.accounting)
    fronts = instance_fronts(pool.matrix())
    assert res.fronts == {d: sorted(f) for d, f in zip(dev, fronts, strict=True)}
    assert set(res.assignment) == {p.id for p in problems}
    for pid, temps in res.assignment.items():
        assert len(temps) == 6
        if pid in dev:  # a covered dev instance only gets templates that solve it
            assert all(solves(t, byid[pid].question) for t in temps)


def test_minibatches_without_replacement_across_the_run():
    problems = make_problems(40)
    cfg = GEPAConfig(num_parents=2, minibatch_size=3, budget_metric_calls=150, seed=1)
    state, _ = run_search(problems, cfg)
    drawn = [m for r in state.log for m in r.minibatch]
    n_fb = len(state.feedback_ids)
    first = drawn[:n_fb - n_fb % 3]
    assert len(first) == len(set(first))  # no repeats before the feedback set is exhausted


def test_authors_accounting_first_two_iterations_free():
    problems = make_problems(24)
    cfg = GEPAConfig(num_parents=3, minibatch_size=3, budget_metric_calls=60, seed=2, accounting="authors")
    snapshots = []
    state, ev = run_search(problems, cfg, hooks=SearchHooks(checkpoint=lambda s: snapshots.append(
        (s.iteration, s.charged, s.metric_calls, s.pending is None))))
    # nothing charged until iteration 2 starts, although evaluations happened
    early = [c for it, c, m, idle in snapshots if it < 2]
    assert set(early) == {0} and state.metric_calls > state.charged
    assert state.iteration >= 3
    # from iteration 2: B per parent + |dev| per accepted child
    charged_by_log = sum(len(r.minibatch) + (len(state.dev_ids) if r.status == "accepted" else 0)
                         for r in state.log if r.iteration >= 2)
    assert state.charged == charged_by_log


def test_resume_from_any_checkpoint_gives_the_same_search():
    problems = make_problems(30)
    cfg = GEPAConfig(num_parents=3, minibatch_size=3, budget_metric_calls=250, seed=5)
    saved: list[str] = []
    ref, ref_ev = run_search(problems, cfg, hooks=SearchHooks(checkpoint=lambda s: saved.append(json.dumps(s.to_dict()))))
    for k in (1, 3, len(saved) // 2, len(saved) - 2):
        state = SearchState.from_dict(json.loads(saved[k]))
        resumed, ev = run_search(problems, cfg, state=state)
        assert [c.template for c in resumed.pool.candidates] == [c.template for c in ref.pool.candidates]
        assert [(r.status, r.parent, r.minibatch) for r in resumed.log] == [(r.status, r.parent, r.minibatch) for r in ref.log]
        assert resumed.metric_calls == ref.metric_calls  # nothing charged twice
        assert sum(ev.waves) == ref.metric_calls - json.loads(saved[k])["metric_calls"]


class FlakyEvaluator(OracleEvaluator):
    """Reports every pair unavailable while `down` is set."""

    def __init__(self, down_calls: int):
        super().__init__()
        self.down_calls = down_calls

    def evaluate(self, items):
        if self.down_calls > 0:
            self.down_calls -= 1
            from p2o.gepa.core.evaluate import EvalOutcome
            return [EvalOutcome(error="Connection refused") for _ in items]
        return super().evaluate(items)


def test_task_model_down_pauses_then_resumes():
    problems = make_problems(20)
    cfg = GEPAConfig(num_parents=2, minibatch_size=3, budget_metric_calls=80, seed=0, pause_poll_s=0.01)
    events = []
    hooks = SearchHooks(on_pause=lambda r: events.append(("pause", r)), on_resume=lambda: events.append(("resume",)),
                        sleep=lambda s: None)
    state, ev = run_search(problems, cfg, hooks=hooks, evaluator=FlakyEvaluator(down_calls=3))
    assert events[0][0] == "pause" and "Connection refused" in events[0][1]
    assert events[3] == ("resume",)
    assert state.stop_reason == "budget" and state.metric_calls == sum(ev.waves)


def test_cancel_during_pause_stops():
    problems = make_problems(20)
    cfg = GEPAConfig(num_parents=2, budget_metric_calls=80, pause_poll_s=0.01)
    flag = {"stop": None}
    hooks = SearchHooks(on_pause=lambda r: flag.update(stop="cancelled"), should_stop=lambda: flag["stop"],
                        sleep=lambda s: None)
    state, _ = run_search(problems, cfg, hooks=hooks, evaluator=FlakyEvaluator(down_calls=100))
    assert state.stop_reason == "cancelled" and len(state.pool) == 0


def test_no_improvement_and_wall_time_stoppers():
    problems = make_problems(20)
    # a reflector whose answers are always unusable: nothing is ever accepted
    bad = Reflector(lambda p: Completion("no fence here"), context_tokens=4096, max_tokens=256)
    cfg = GEPAConfig(num_parents=2, budget_metric_calls=10_000, no_improvement_iters=3)
    state = new_state(problems, cfg)
    Search(problems, cfg, OracleEvaluator(), bad, state).run()
    assert state.stop_reason == "no_improvement" and state.iteration == 3
    assert state.counters["unusable"] == 3  # one parent (the seed) per iteration
    ticks = iter(range(0, 10_000, 10))
    cfg = GEPAConfig(num_parents=2, budget_metric_calls=10_000, max_wall_s=25)
    state = new_state(problems, cfg)
    Search(problems, cfg, OracleEvaluator(), bad, state, hooks=SearchHooks(clock=lambda: next(ticks))).run()
    assert state.stop_reason == "wall_time" and state.wall_s >= 25


def test_seed_templates_start_in_the_pool_and_are_charged():
    problems = make_problems(12)
    cfg = GEPAConfig(num_parents=2, minibatch_size=2, budget_metric_calls=60, seed=1,
                     seed_templates=["Hints: kiwi, mango", "  ", "Hints: kiwi, mango"])
    state, ev = run_search(problems, cfg)
    byid = {p.id: p for p in problems}
    first = [c for c in state.pool.candidates if c.iteration == -1]
    assert [c.template for c in first] == ["", "Hints: kiwi, mango"]  # blank and duplicate seeds dropped
    assert ev.waves[0] == 2 * len(state.dev_ids) and state.charged == state.metric_calls
    assert first[1].dev_scores == [1.0 if solves("Hints: kiwi, mango", byid[d].question) else 0.0
                                   for d in state.dev_ids]
