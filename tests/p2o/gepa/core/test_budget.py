"""GEPA budget: `budget: auto` is the authors' per-round budget (dspy's auto_budget, 72 candidates), recomputed from
each round's dev size; a fixed `budget_metric_calls` stays an option. Expected values are computed by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from p2o.config import GEPAConfig, load_config
from p2o.gepa.core.search import Search, auto_budget, dev_count, metric_budget, new_state
from p2o.gepa.service.jobs import JobManager
from p2o.gepa.service.protocol import GEPAJobSpec
from tests.p2o.gepa.core.test_search import reflector
from tests.p2o.gepa.oracle import OracleEvaluator, make_problems

REPO = Path(__file__).resolve().parents[4]


def test_auto_budget_hand_computed():
    # C = 72 (heavy_4): trials N = int(max(4 log2 72 = 24.7, 1.5 * 72 = 108)) = 108;
    # V + 5*72 + 35*108 + ((108 + 1) // 5 + 1) V = V + 360 + 3780 + 22 V = 23 V + 4140
    assert auto_budget(72, 300) == 300 + 360 + 3780 + 22 * 300 == 11040
    assert auto_budget(72, 150) == 7590 and auto_budget(72, 100) == 6440 and auto_budget(72, 1) == 4163
    for v in range(0, 601, 37):
        assert auto_budget(72, v) == 23 * v + 4140
    # C = 6 (dspy light): N = int(max(4 log2 6 = 10.34, 9)) = 10; V + 30 + 350 + (11 // 5 + 1) V = 4 V + 380
    assert auto_budget(6, 50) == 4 * 50 + 380
    # C = 2: N = int(max(4, 3)) = 4 < 5 full-eval steps, one extra final evaluation: V + 10 + 140 + 3 V
    assert auto_budget(2, 10) == 4 * 10 + 150


def test_dev_count_matches_the_split():
    assert dev_count(1000, 300) == 300 and dev_count(450, 300) == 300
    assert dev_count(449, 300) == 224 and dev_count(10, 300) == 5
    state = new_state(make_problems(449), GEPAConfig(dev_size=300))
    assert len(state.dev_ids) == dev_count(449, 300)


def test_metric_budget_fixed_or_auto():
    assert metric_budget(GEPAConfig(budget_metric_calls=40), 300) == 40
    auto = GEPAConfig(budget="auto", budget_metric_calls=40)
    assert metric_budget(auto, 300) == 11040 and metric_budget(auto, 224) == 23 * 224 + 4140


def test_paper_configs_use_auto_budget():
    for name in ("qwen3_4b_p2o_deepmath.yaml", "qwen3_4b_p2o_deepscaler.yaml", "scaling/qwen3_8b_p2o.yaml"):
        gepa = load_config(str(REPO / "configs" / name)).gepa
        assert gepa.budget == "auto" and gepa.dev_size == 300
        assert metric_budget(gepa, dev_count(5000, gepa.dev_size)) == 11040
        assert metric_budget(gepa, dev_count(200, gepa.dev_size)) == 6440  # a round with 200 hard samples


def test_search_spends_the_auto_budget_of_its_own_dev_set():
    problems = make_problems(12)  # dev = 6 of 12: 23 * 6 + 4140 = 4278 metric calls
    cfg = GEPAConfig(budget="auto", dev_size=300, num_parents=4, minibatch_size=3, seed=3, no_improvement_iters=0)
    state = new_state(problems, cfg)
    search = Search(problems, cfg, OracleEvaluator(), reflector(), state)
    assert search.budget == 4278
    search.run()
    assert state.stop_reason == "budget"
    assert 4278 - 2 * 3 <= state.charged <= 4278 + len(state.dev_ids) * 4  # honest: stops when 2B no longer fits


def test_job_status_reports_the_rounds_auto_budget(tmp_path):
    spec = GEPAJobSpec(problems=make_problems(10), policy_url="http://127.0.0.1:9/v1", policy_model="p",
                       gepa={"budget": "auto"}, reflection={"base_url": "http://127.0.0.1:9/v1", "model": "r"})
    jobs = JobManager(tmp_path)  # not started: submit only records the job
    job_id, created = jobs.submit(spec)
    assert created and jobs.status(job_id).budget_total == 23 * 5 + 4140
    with pytest.raises(Exception, match="gepa.budget"):
        jobs.submit(GEPAJobSpec(problems=make_problems(4), policy_url="http://127.0.0.1:9/v1", policy_model="p",
                                gepa={"budget": "sometimes"},
                                reflection={"base_url": "http://127.0.0.1:9/v1", "model": "r"}))


@pytest.mark.parametrize("accounting", ["honest", "authors"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_bounds_hold_for_real_searches(accounting, seed):
    """The dry run's upper bounds on scoring requests and reflection calls, against searches that ran."""
    from p2o.gepa.core.reflect import Completion, Reflector
    from p2o.gepa.core.search import round_bounds
    from tests.p2o.gepa.oracle import scripted_reflection

    calls = []

    def complete(prompt: str) -> Completion:
        calls.append(prompt)
        return Completion(scripted_reflection(prompt))

    problems = make_problems(30)
    cfg = GEPAConfig(budget_metric_calls=120, accounting=accounting, num_parents=4, minibatch_size=3, seed=seed)
    state = new_state(problems, cfg)
    Search(problems, cfg, OracleEvaluator(), Reflector(complete, 8192, 512), state).run()
    bounds = round_bounds(cfg, len(state.dev_ids))
    assert state.stop_reason == "budget" and bounds.budget == 120
    assert state.metric_calls <= bounds.max_metric_calls and len(calls) <= bounds.max_reflection_calls
    assert state.metric_calls > bounds.max_metric_calls / 4  # the bound is not vacuous
