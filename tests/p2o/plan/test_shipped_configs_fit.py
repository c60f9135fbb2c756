"""Every shipped GPU config fits the nodes it is written for, by the planner's own memory model.

configs/*.yaml and configs/scaling/*.yaml are loaded as they ship; `p2o.plan.targets.TARGETS` maps each GPU
config to its nodes (a new GPU config without an entry fails here). The check must be able to fail: the same
planner rejects the settings the Qwen3-4B configs shipped with before (8-row micro-batches, no fused kernel,
no recompute) on the same node.
"""
from pathlib import Path

import pytest

from p2o.config import load_config
from p2o.plan.layouts import GIB
from p2o.plan.targets import CPU_CONFIGS, TARGETS, Target, config_fit

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))
GPU = [name for name in SHIPPED if name not in CPU_CONFIGS]


def test_every_shipped_config_is_classified():
    assert GPU, "no GPU configs found"
    assert sorted(TARGETS) == GPU, "configs/ and p2o.plan.targets.TARGETS disagree"
    assert all(name in SHIPPED for name in CPU_CONFIGS)


@pytest.mark.parametrize("name", GPU)
def test_gpu_config_fits_its_target(name):
    cfg = load_config(str(REPO / "configs" / name))
    # the GPU defaults every shipped GPU config carries (docs/gpu.md)
    assert cfg.model.dtype == "bfloat16" and cfg.rollout.engine == "vllm"
    assert cfg.train.use_kernels, "train.use_kernels must be true on GPUs (no [tokens, V/TP] logits)"
    assert 1 <= cfg.grpo.micro_batch_size <= 2
    assert cfg.train.recompute in ("selective", "full")
    assert cfg.parallel.distributed_optimizer
    fit = config_fit(cfg, TARGETS[name])
    assert fit.feasible, f"{name} on {TARGETS[name]}: {fit.layout.reasons}"
    usable = TARGETS[name].cluster().gpu_mem_gib * (1 - 0.05)
    assert fit.memory.peak / GIB <= usable
    # the generation phase holds the trainer's resident state next to vLLM's share (no offload)
    m = fit.memory
    assert m.peak_generation == pytest.approx(m.overhead + m.weights + m.gradients + m.optimizer + m.vllm_generation)


@pytest.mark.parametrize("overrides, reason", [
    (["grpo.micro_batch_size=8", "train.use_kernels=false", "train.recompute=none"], "in update"),
    # (the Self-Ref server moved to its own GPUs, so only the planner can object to the policy engine's share)
    (["rollout.vllm_gpu_memory_utilization=0.9", "reflection.server=external",
      "reflection.base_url=http://node2:8002/v1"], "in generation"),
])
def test_a_config_that_does_not_fit_is_rejected(overrides, reason):
    cfg = load_config(str(REPO / "configs" / "qwen3_4b_p2o_deepmath.yaml"), overrides=overrides)
    fit = config_fit(cfg, Target(nodes=1))
    assert not fit.feasible
    assert any("out of memory" in r and reason in r for r in fit.layout.reasons), fit.layout.reasons


def test_unknown_node_type_is_a_clear_error():
    from p2o.plan.presets import PlanError

    with pytest.raises(PlanError, match="node_type"):
        Target(1, "8xA100-40GB").cluster()
