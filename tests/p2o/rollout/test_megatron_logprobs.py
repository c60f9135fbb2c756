"""Behaviour log-probs of the HF engine vs the Megatron training backend, before and after a weight sync
through the export stream (one gloo rank; fp32)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


def test_engine_logprobs_match_megatron_policy_across_a_weight_sync(tiny_model_dir, tmp_path):
    pytest.importorskip("megatron.core")
    from megatron_bridge.launch import spawn
    from tests.p2o.rollout.rollout_megatron_worker import engine_vs_policy_worker

    out = tmp_path / "res.pt"
    spawn(engine_vs_policy_worker, 1, (str(tiny_model_dir), str(out)))
    res = torch.load(out)
    assert res["moved"] > 1e-3, "the training step must change the policy"
    for k in "01":
        assert res[f"engine{k}"].shape == res[f"policy{k}"].shape
        torch.testing.assert_close(res[f"engine{k}"], res[f"policy{k}"], atol=1e-4, rtol=0)
