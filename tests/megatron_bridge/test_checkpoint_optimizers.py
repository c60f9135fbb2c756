"""Checkpoint save/load/resume with each Adam Megatron-Core 0.16.1 can pick: torch AdamW (the CPU fallback, a `step`
tensor per parameter) and Transformer Engine's FusedAdam (GPU, `param_group["step"]`; here `FakeTEFusedAdam`, its
CPU stand-in with TE's state layout). The Adam `step` shims of megatron_bridge.checkpoint must apply to the first
only: a per-parameter "step" makes TE's state_dict raise KeyError: 'step'.

One 1-rank launch runs, for each combination, 3 steps from the weights (ref), save-before-any-step -> load -> 3 steps,
and 1 step -> save -> load -> 2 steps; both resumed runs must end with ref's weights.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_fused_adam import FakeTEFusedAdam
from mb_workers import spawned_results
from optimizer_workers import resume_worker

from megatron_bridge.checkpoint import adam_step_per_parameter, materialise_adam_state

CONFIG = Path(__file__).parent / "configs" / "qwen3_gqa2_hd24_tied.json"
COMBOS = [("torch", "float32", False), ("torch", "float32", True),
          ("fake_te", "float32", False), ("fake_te", "float32", True), ("fake_te", "bfloat16", True)]


def test_step_layout_is_told_apart_by_optimizer():
    p = [torch.nn.Parameter(torch.randn(3))]
    assert adam_step_per_parameter(torch.optim.AdamW(p)) and adam_step_per_parameter(torch.optim.Adam(p))
    assert not adam_step_per_parameter(FakeTEFusedAdam(p))


class _Wrapped:  # what materialise_adam_state reads of a Megatron optimizer: `.optimizer`
    def __init__(self, opt):
        self.optimizer = opt


def test_fake_reproduces_te_key_error_and_materialised_state_matches_first_step():
    """The fake rejects a per-parameter "step" exactly where TE does; the state materialised for it equals what its
    first step creates, and after it the step lives in the param group only."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = FakeTEFusedAdam([w], lr=0.1, weight_decay=0.1)
    materialise_adam_state(_Wrapped(opt))
    assert set(opt.state[w]) == {"exp_avg", "exp_avg_sq"} and not opt.state[w]["exp_avg"].any()
    opt.state_dict()  # no KeyError
    opt.state[w]["step"] = torch.tensor(0.0)
    with pytest.raises(KeyError, match="step"):
        opt.state_dict()
    del opt.state[w]["step"]
    w.grad = torch.randn(4, 3)
    twin = torch.nn.Parameter(w.detach().clone())
    twin.grad = w.grad.clone()
    fresh = FakeTEFusedAdam([twin], lr=0.1, weight_decay=0.1)
    opt.step()
    fresh.step()  # lazily initialised
    torch.testing.assert_close(w, twin, rtol=0, atol=0)
    assert opt.param_groups[0]["step"] == 1 and "step" not in opt.state[w]
    torch_opt = torch.optim.AdamW([torch.nn.Parameter(torch.randn(2))])
    materialise_adam_state(_Wrapped(torch_opt))
    assert set(next(iter(torch_opt.state.values()))) == {"step", "exp_avg", "exp_avg_sq"}


def test_fake_update_is_adamw():
    """TE's AdamW-mode update equals torch's AdamW (the fake's arithmetic is the kernel's)."""
    g = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 4, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    fake, ref = FakeTEFusedAdam([a], lr=0.05, weight_decay=0.1), torch.optim.AdamW([b], lr=0.05, weight_decay=0.1)
    for _ in range(4):
        grad = torch.randn(5, 4, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        fake.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def model_dir():
    from p2o.models import resolve_model_dir

    return str(resolve_model_dir(str(CONFIG), init_seed=7))


@pytest.fixture(scope="module")
def resumed(model_dir, tmp_path_factory, worker_id):
    ckpt = tmp_path_factory.mktemp("adam_ckpt")
    return spawned_results(tmp_path_factory, worker_id, "checkpoint_optimizers", resume_worker, 1,
                           (model_dir, COMBOS, str(ckpt)))


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c[0]}-{c[1]}-{'distopt' if c[2] else 'plain'}")
def test_resume_equals_uninterrupted(resumed, combo):
    res = resumed[combo]
    adam = combo[0]
    assert res["ref_state"]["class"] == (["AdamW"] if adam == "torch" else ["FakeTEFusedAdam"])
    for name in ("fresh", "middle"):
        for key, ref in res["ref"].items():
            torch.testing.assert_close(res[name][key], ref, rtol=1e-6, atol=1e-7, msg=f"{name} {key}")
    assert res["middle_loaded_step"] == 1
    if adam == "torch":  # per-parameter step tensors, restored from the saved group step
        assert "step" in res["fresh_saved_state"]["state_keys"]
        assert res["fresh_loaded_state"]["param_steps"] == [0.0]
        assert res["middle_loaded_state"]["param_steps"] == [1.0]
    else:  # TE layout: no per-parameter step ever; the count lives in the param groups
        for state in ("ref_state", "fresh_saved_state", "fresh_loaded_state", "middle_loaded_state"):
            assert "step" not in res[state]["state_keys"], (state, res[state])
        assert res["ref_state"]["group_steps"] == [3]
        assert res["middle_loaded_state"]["group_steps"] == [1]
        assert res["fresh_loaded_state"]["group_steps"] in ([None], [])  # fresh: no step yet
