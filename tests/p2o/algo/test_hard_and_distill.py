"""Hard-sample mining and context-distillation masks."""
from __future__ import annotations

import math

import pytest
import torch

from p2o.algo.distill import context_ratio_mask, distill_old_logprobs
from p2o.algo.hard_samples import HardStore, is_hard
from p2o.data.problem import Problem


@pytest.mark.parametrize("rewards,tau,expected", [
    ([0] * 6, 2, True), ([1, 0, 0, 0, 0, 0], 2, True), ([1, 1, 0, 0, 0, 0], 2, False),
    ([1, 0, 0, 0, 0, 0], 1, False), ([1, 1, 1, 0, 0, 0], 4, True), ([1] * 6, 6, False),
])
def test_tau_counts_correct_rollouts(rewards, tau, expected):
    assert is_hard(rewards, [False] * 6, 6, tau, "untemplated") is expected
    assert is_hard(rewards, [False] * 6, 6, tau, "all") is expected


def test_untemplated_vs_all():
    rewards = [1, 1, 1, 0, 0, 0]
    templated = [True, True, True, True, True, False]  # templates solved it, the plain prompt did not
    assert is_hard(rewards, templated, 6, 2, "untemplated") is True
    assert is_hard(rewards, templated, 6, 2, "all") is False
    # all rollouts templated: untemplated mode falls back to all of them
    assert is_hard(rewards, [True] * 6, 6, 2, "untemplated") is False


def test_hard_store_round_trip(tmp_path):
    s = HardStore(keep_responses=1)
    s.add(Problem("p1", "q", "3"), 0, [0, 1, 0], ["a", "b", "c"])
    assert "p1" in s and s.samples["p1"].failed_responses == ["a"] and s.samples["p1"].num_correct == 1
    s.save(tmp_path / "hard.json")
    t = HardStore()
    import json
    t.load_dict(json.loads((tmp_path / "hard.json").read_text()))
    assert t.samples["p1"] == s.samples["p1"]


def test_context_ratio_mask_bounds_in_log_space():
    lp_x = torch.tensor([0.0, 0.0, 0.0, -50.0, 0.0])
    lp_xz = torch.tensor([0.0, math.log(100.0) + 1e-4, -math.log(10.0) + 1e-4, 0.0, -math.log(10.0) - 1e-3])
    # ratios: 1, ~0.01-, ~10-, e^-50, >10
    assert context_ratio_mask(lp_x, lp_xz, 0.01, 10.0).tolist() == [True, False, True, False, False]


def test_distill_modes():
    lp_x, lp_xz = torch.tensor([-1.0, -9.0]), torch.tensor([-1.5, -1.0])
    old, m = distill_old_logprobs("ratio_mask", lp_x, lp_xz, 0.01, 10)
    assert torch.equal(old, lp_x) and m.tolist() == [1.0, 0.0]
    old, m = distill_old_logprobs("replace_prompts", lp_x, lp_xz, 0.01, 10)
    assert torch.equal(old, lp_x) and m.tolist() == [1.0, 1.0]
    old, m = distill_old_logprobs("fix_importance_ratio", lp_x, lp_xz, 0.01, 10)
    assert torch.equal(old, lp_xz) and m.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="p2o.distill"):
        distill_old_logprobs("nope", lp_x, lp_xz, 0.01, 10)
