"""Config-level guarantees of the training algorithm's fidelity settings (no model is loaded)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from p2o.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
PAPER = sorted(CONFIGS.glob("qwen3_4b_*.yaml")) + sorted((CONFIGS / "scaling").glob("*.yaml"))


def _flat(cfg, prefix=""):
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out.update(_flat(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else {f"{prefix}{f.name}": v})
    return out


def test_no_distill_ablation_differs_from_its_paper_config_only_in_the_switch():
    base = _flat(load_config(str(CONFIGS / "qwen3_4b_p2o_deepmath.yaml")))
    ablation = _flat(load_config(str(CONFIGS / "qwen3_4b_p2o_deepmath_no_distill.yaml")))
    diff = {k: (base[k], ablation[k]) for k in base if base[k] != ablation[k]}
    assert diff == {"p2o.distill": ("ratio_mask", "none"),
                    "logging.run_dir": ("runs/qwen3_4b_p2o_deepmath", "runs/qwen3_4b_p2o_deepmath_no_distill")}


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_configs_sample_and_train_at_temperature_0_6(path):
    """Training log-probs follow rollout.temperature, so one key sets both (the authors: 0.6)."""
    assert load_config(str(path)).rollout.temperature == 0.6


def test_greedy_training_rollouts_are_refused():
    with pytest.raises(ConfigError, match="rollout.temperature.*softmax"):
        load_config(None, ["rollout.temperature=0"])


@pytest.mark.parametrize("overrides,key", [
    (["grpo.loss_agg=seq-mean-token-mean"], "grpo.loss_agg"),
    (["grpo.verl_world_size=3"], "grpo.verl_world_size"),  # 8 prompts x 4 rollouts over 3 GPUs
    (["grpo.ppo_minibatches=3", "grpo.verl_world_size=4"], "grpo.verl_world_size"),
    (["grpo.verl_max_token_len_per_gpu=575"], "grpo.verl_max_token_len_per_gpu"),  # < 512 + 64
])
def test_verl_dynamic_bsz_limits_are_checked_at_load(overrides, key):
    load_config(None, ["grpo.verl_dynamic_bsz=true", "grpo.verl_world_size=4", "grpo.verl_max_token_len_per_gpu=576"])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["grpo.verl_dynamic_bsz=true", "grpo.verl_max_token_len_per_gpu=576", *overrides])
    assert e.value.key == key
