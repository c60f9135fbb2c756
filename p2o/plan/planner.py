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


def recommend(shape: ModelShape, cluster: Cluster, run: RunSettings) -> PlanRow | None:
    """The fastest feasible layout, or None when nothing fits."""
    rows = plan(shape, cluster, run)
    return rows[0] if rows and rows[0].feasible else None
