"""The planner against a real Megatron-Core training step on CPU (gloo): memory per rank, bytes per group.

Each test spawns the ranks of one TP x PP x DP job running `p2o.plan.mcore_step.measure_rank` and compares
with `p2o.plan.memory` / `predict_comm_bytes`. Target: every term within 15%.
"""
import pytest

from p2o.plan.presets import PRESETS
from p2o.plan.validate import StepSpec, compare, run_step

TARGET = 0.15
TINY = PRESETS["tiny-qwen3"]


def _check(rows, terms):
    for r in rows:
        for term in terms:
            assert abs(r[f"err_{term}"]) <= TARGET, (r["layout"], r["rank"], term, r[f"pred_{term}"], r[f"meas_{term}"])


@pytest.mark.multiproc
@pytest.mark.xdist_group("plan_spawned_ranks")  # one spawned job at a time on 2 cores
def test_tiny_single_rank_peak_memory_within_target():
    spec = StepSpec(1, 1, 1, seq=64, micro_batch=2, micro_batches=2)
    rows = compare(TINY, spec, run_step(TINY, spec))
    _check(rows, ("weights", "gradients", "optimizer", "activations", "logits", "peak", "comm_dp"))
    r = rows[0]
    assert r["meas_logits"] > 10 * r["meas_activations"]  # V = 49152 dominates a 64-wide model: a real signal


@pytest.mark.multiproc
@pytest.mark.xdist_group("plan_spawned_ranks")  # one spawned job at a time on 2 cores
@pytest.mark.slow
def test_policy_step_tensor_parallel_memory_and_bytes(tiny_model_dir):
    """MegatronPolicy.train_step (the backend P2O trains with) at TP=2: memory per rank and TP / DP bytes."""
    spec = StepSpec(2, 1, 1, seq=32, micro_batch=2, micro_batches=2, model_dir=str(tiny_model_dir))
    rows = compare(TINY, spec, run_step(TINY, spec))
    assert len(rows) == 2 and rows[0]["backend"] == "MegatronPolicy"
    _check(rows, ("weights", "gradients", "optimizer", "activations", "logits", "peak", "comm_tp", "comm_dp"))
    assert rows[0]["meas_comm_tp"] > 4 * 2 * 32 * 2 * 64 * 4  # the [T, h] all-reduces are there
