"""The node type and node count each shipped GPU config is written for, and whether it fits there.

    fit = config_fit(load_config("configs/qwen3_4b_p2o_deepmath.yaml"), TARGETS["qwen3_4b_p2o_deepmath.yaml"])
    fit.feasible, fit.memory.peak, fit.layout.reasons

A run config says what it trains, not where: the Slurm script takes the node count from `NODES` (default 1)
and the GPUs from `GPUS_PER_NODE` (default 8). This table is the documented mapping from a shipped config
(path relative to configs/) to the nodes it is meant for; docs/gpu.md prints it, and a test checks that every
GPU config in configs/ has an entry and fits its target by the planner's own memory model
(`p2o plan --config <file>` plans a shipped config on its target and shows the same verdict).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from p2o.plan.from_config import settings_from_config
from p2o.plan.layouts import Cluster, Layout, RunSettings, structural_reasons
from p2o.plan.memory import layout_memory, memory_reasons
from p2o.plan.planner import PlanRow
from p2o.plan.presets import PlanError, load_model_shape
from p2o.plan.throughput import step_time

H100_80GB = Cluster()
"""NVIDIA H100 SXM 80GB, 8 per node (NVLink within a node, one 400 Gb/s NIC per GPU): the Cluster defaults."""

NODE_TYPES: dict[str, Cluster] = {"8xH100-80GB": H100_80GB}


@dataclass(frozen=True)
class Target:
    """Where a config runs: `nodes` nodes of `node_type` (a NODE_TYPES key)."""

    nodes: int = 1
    node_type: str = "8xH100-80GB"

    def cluster(self) -> Cluster:
        if self.node_type not in NODE_TYPES:
            raise PlanError("node_type", self.node_type, "one of " + ", ".join(NODE_TYPES))
        return dataclasses.replace(NODE_TYPES[self.node_type], nodes=self.nodes)


CPU_CONFIGS = ("demo_cpu.yaml", "slurm_test_cpu.yaml")
"""Shipped configs that run on CPUs (the demo, the local Slurm tests): not planned."""

TARGETS: dict[str, Target] = {
    # the paper runs: one node of 8 x H100 80GB (the authors: 8 GPUs; slurm/p2o_qwen3.sh's defaults)
    "qwen3_4b_grpo.yaml": Target(1),
    "qwen3_4b_grpo_k12.yaml": Target(1),
    "qwen3_4b_p2o_deepmath.yaml": Target(1),
    "qwen3_4b_p2o_deepmath_no_distill.yaml": Target(1),
    "qwen3_4b_p2o_deepscaler.yaml": Target(1),
    # the scaling configs: the node count whose recommended layout each file holds (its header)
    "scaling/qwen3_4b_p2o.yaml": Target(1),
    "scaling/qwen3_8b_p2o.yaml": Target(1),
    "scaling/qwen3_14b_p2o.yaml": Target(1),
    "scaling/qwen3_32b_p2o.yaml": Target(2),
}
"""Shipped GPU config (relative to configs/) -> the nodes it is written for."""


CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def target_of(config_path: str | Path) -> Target | None:
    """The target of a shipped GPU config given by path (a copy elsewhere has none: None)."""
    try:
        name = Path(config_path).resolve().relative_to(CONFIGS_DIR).as_posix()
    except ValueError:
        return None
    return TARGETS.get(name)


def config_shape(cfg):
    """The planner's shape of a config's model: its config.json when present here, else the preset named like
    the checkpoint directory (models/Qwen3-4B -> Qwen3-4B)."""
    try:
        return load_model_shape(cfg.model.path)
    except PlanError:
        return load_model_shape(Path(cfg.model.path).name)


def config_fit(cfg, target: Target, **overrides) -> PlanRow:
    """The planner's verdict on a run config's own layout (parallel.tp x parallel.pp, DP from the rest of the
    GPUs) on its target: memory terms, step time, and reasons ([] = it fits). `overrides` replace RunSettings
    fields (e.g. the mean lengths, which a config does not state)."""
    _, values, (tp, pp) = settings_from_config(cfg)
    run = RunSettings(**(values | overrides))
    shape = config_shape(cfg)
    cluster = target.cluster()
    if cluster.world % (tp * pp):
        raise PlanError("parallel.tp x parallel.pp", tp * pp, f"a divisor of the target's {cluster.world} GPUs")
    layout = Layout(tp, pp, cluster.world // (tp * pp))  # the trainer takes every GPU (vLLM is colocated)
    layout.reasons.extend(structural_reasons(shape, cluster, run, tp, pp, layout.dp))
    terms = layout_memory(shape, cluster, layout, run)
    layout.reasons.extend(memory_reasons(shape, cluster, layout, run, terms))
    return PlanRow(layout, terms, step_time(shape, cluster, layout, run))
