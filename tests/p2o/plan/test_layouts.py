"""Layouts: enumeration, structural and memory reasons, bad cluster / run input."""
import pytest

from p2o.plan.layouts import Cluster, RunSettings, candidate_layouts, training_gpus
from p2o.plan.planner import plan, recommend
from p2o.plan.presets import PRESETS, PlanError


def _by_name(rows):
    return {r.layout.name: r for r in rows}


def test_every_factorisation_is_listed():
    layouts = candidate_layouts(PRESETS["Qwen3-4B"], Cluster(nodes=1), RunSettings())
    assert sorted((x.tp, x.pp, x.dp) for x in layouts) == sorted(
        (tp, pp, 8 // (tp * pp)) for tp in (1, 2, 4, 8) for pp in (1, 2, 4, 8) if 8 % (tp * pp) == 0)


def test_structural_reasons():
    rows = _by_name(plan(PRESETS["smollm2-135m"], Cluster(nodes=1, gpus_per_node=4), RunSettings()))
    assert "TP=2 does not divide 9 attention heads" in rows["TP2 PP1 DP2"].layout.reasons
    assert "PP=4 does not divide 30 layers" in rows["TP1 PP4 DP1"].layout.reasons
    assert rows["TP1 PP1 DP4"].feasible
    rows = _by_name(plan(PRESETS["Qwen3-8B"], Cluster(nodes=2), RunSettings()))
    assert "TP=16 spans nodes (8 GPUs per node)" in rows["TP16 PP1 DP1"].layout.reasons
    odd = _by_name(plan(PRESETS["Qwen3-4B"], Cluster(nodes=1), RunSettings(prompts_per_step=3, k=3)))
    assert any("9 sequences per step do not split into DP=2" in r for r in odd["TP4 PP1 DP2"].layout.reasons)


def test_out_of_memory_says_by_how_much():
    rows = plan(PRESETS["Qwen3-32B"], Cluster(nodes=1), RunSettings())
    oom = [r for r in rows if any(x.startswith("out of memory by") for x in r.layout.reasons)]
    assert oom
    for r in oom:
        over = float(r.layout.reasons[0].split("by ")[1].split(" GiB")[0])
        assert over == pytest.approx(r.memory.peak / 2**30 - 0.95 * 80, abs=0.06)  # 5% headroom
        assert "76.0 GiB usable" in r.layout.reasons[0]
    assert recommend(PRESETS["Qwen3-32B"], Cluster(nodes=1, gpu_mem_gib=24), RunSettings()) is None


def test_ranking_puts_fastest_feasible_first():
    rows = plan(PRESETS["Qwen3-8B"], Cluster(nodes=2), RunSettings())
    feasible = [r for r in rows if r.feasible]
    assert rows[0].feasible and feasible == rows[: len(feasible)]
    times = [r.time.total_s for r in feasible]
    assert times == sorted(times)


def test_bad_cluster_and_run():
    with pytest.raises(PlanError, match="cluster.nodes"):
        Cluster(nodes=0)
    with pytest.raises(PlanError, match="cluster.gpu_mem_gib"):
        Cluster(gpu_mem_gib=-1)
    with pytest.raises(PlanError, match="run.vllm_sleep_level"):
        RunSettings(vllm_sleep_level=3)
    with pytest.raises(PlanError, match="run.vllm_gpu_memory_fraction"):
        RunSettings(vllm_gpu_memory_fraction=1.5)
    with pytest.raises(PlanError, match="run.generation_gpus"):
        training_gpus(Cluster(nodes=1), RunSettings(colocated=False, generation_gpus=8))
    assert training_gpus(Cluster(nodes=1), RunSettings(colocated=False)) == 4


def test_recommend_prefers_the_simplest_near_fastest_layout():
    best = recommend(PRESETS["Qwen3-4B"], Cluster(nodes=1), RunSettings())
    fastest = plan(PRESETS["Qwen3-4B"], Cluster(nodes=1), RunSettings())[0]
    assert best.feasible and best.time.total_s <= fastest.time.total_s * 1.02
    assert best.layout.tp * best.layout.pp <= fastest.layout.tp * fastest.layout.pp
