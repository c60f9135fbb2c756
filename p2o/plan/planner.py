"""Rank every TP x PP x DP layout of a model on a cluster: memory, step time, and why a layout cannot run.

    rows = plan(load_model_shape("Qwen3-8B"), Cluster(nodes=2), RunSettings())
    best = rows[0]            # feasible layouts first, fastest step first
"""
from __future__ import annotations

from dataclasses import dataclass

from p2o.plan.layouts import Cluster, Layout, RunSettings, candidate_layouts
from p2o.plan.memory import MemoryTerms, layout_memory, memory_reasons
from p2o.plan.presets import ModelShape
from p2o.plan.throughput import StepTime, resolve_vllm_tp, step_time


@dataclass
class PlanRow:
    """One layout's verdict: memory of its worst rank, predicted step time, and reasons ([] = feasible)."""

    layout: Layout
    memory: MemoryTerms
    time: StepTime

    @property
    def feasible(self) -> bool:
        return self.layout.feasible

    def as_dict(self) -> dict:
        return {"tp": self.layout.tp, "pp": self.layout.pp, "dp": self.layout.dp, "feasible": self.feasible,
                "reasons": list(self.layout.reasons), "memory_gib": self.memory.as_gib(),
                "time_s": self.time.as_dict()}


def plan(shape: ModelShape, cluster: Cluster, run: RunSettings) -> list[PlanRow]:
    """Every candidate layout, feasible ones first by predicted step time, then infeasible by peak memory."""
    run = resolve_vllm_tp(shape, cluster, run)
    rows = []
    for layout in candidate_layouts(shape, cluster, run):
        terms = layout_memory(shape, cluster, layout, run)
        if not layout.reasons:  # memory reasons only matter once the layout can be built at all
            layout.reasons.extend(memory_reasons(shape, cluster, layout, run, terms))
        rows.append(PlanRow(layout, terms, step_time(shape, cluster, layout, run)))
    rows.sort(key=lambda r: (not r.feasible, r.time.total_s if r.feasible else r.memory.peak, r.memory.peak))
    return rows


def recommend(shape: ModelShape, cluster: Cluster, run: RunSettings, tolerance: float = 0.02) -> PlanRow | None:
    """The simplest feasible layout (fewest model-parallel GPUs TP x PP, then least PP) whose predicted step is
    within `tolerance` of the fastest; None when nothing fits. Differences of a few percent are below what
    the step-time model can resolve, and smaller TP x PP means less communication to get wrong."""
    rows = [r for r in plan(shape, cluster, run) if r.feasible]
    if not rows:
        return None
    best = rows[0].time.total_s
    close = [r for r in rows if r.time.total_s <= best * (1 + tolerance)]
    return min(close, key=lambda r: (r.layout.tp * r.layout.pp, r.layout.pp, r.time.total_s))
