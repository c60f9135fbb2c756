"""Config loading: defaults, YAML + dotlist layering, and errors that name the offending key."""
from __future__ import annotations

import glob
from pathlib import Path

import pytest

from p2o.config import ConfigError, RunConfig, load_config, to_yaml

REPO = Path(__file__).resolve().parents[2]


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.p2o.ratio_low == 0.01 and cfg.p2o.ratio_high == 10.0


def test_yaml_then_dotlist_layering(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("rollout:\n  n: 6\n  temperature: 0.6\ngrpo:\n  dual_clip: 3.0\n")
    cfg = load_config(str(y), ["rollout.n=8", "p2o.tau=3"])
    assert cfg.rollout.n == 8 and cfg.rollout.temperature == 0.6 and cfg.p2o.tau == 3


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(None, ["rollout.n=5", "data.arithmetic.levels=[1,4]"])
    y = tmp_path / "resolved.yaml"
    y.write_text(to_yaml(cfg))
    assert load_config(str(y)) == cfg


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs" / "**" / "*.yaml"), recursive=True)))
def test_shipped_configs_load(path):
    load_config(path)


# (yaml text or None, dotlist overrides, the key the error must name)
MALFORMED = [
    (None, ["rollout.nn=2"], "rollout.nn"),                      # unknown key
    ("rolout:\n  n: 4\n", [], "rolout"),                         # unknown section in YAML
    (None, ["rollout.n=abc"], "rollout.n"),                      # wrong type
    (None, ["train.use_kernels=maybe"], "train.use_kernels"),    # wrong bool
    (None, ["rollout.n=1"], "rollout.n"),                        # K < 2
    (None, ["p2o.tau=7", "rollout.n=6"], "p2o.tau"),             # tau > K
    (None, ["parallel.tp=2"], "parallel.tp"),                    # TP does not divide SmolLM2's 9 heads
    (None, ["parallel.pp=4"], "parallel.pp"),                    # PP does not divide 30 layers
    (None, ["grpo.loss_agg=mean"], "grpo.loss_agg"),             # not a choice
    (None, ["p2o.distill=sometimes"], "p2o.distill"),
    (None, ["p2o.ratio_low=5", "p2o.ratio_high=2"], "p2o.ratio_high"),
    (None, ["grpo.clip_low=1.5"], "grpo.clip_low"),
    (None, ["grpo.dual_clip=0.5"], "grpo.dual_clip"),
    (None, ["optim.lr=-1e-6"], "optim.lr"),
    (None, ["data.arithmetic.levels=[0,9]"], "data.arithmetic.levels"),
    (None, ["gepa.solved_at=0"], "gepa.solved_at"),
    (None, ["gepa.solved_at=1.5"], "gepa.solved_at"),
    (None, ["data.arithmetic.level_weights=[1,2]"], "data.arithmetic.level_weights"),
    (None, ["data.source=problems.csv"], "data.source"),
    (None, ["prompt.user_template=no placeholder"], "prompt.user_template"),
    (None, ["parallel.sequence_parallel=true"], "parallel.sequence_parallel"),
    (None, ["reflection.mode=teacher"], "reflection.base_url"),
    (None, ["gepa.accounting=free"], "gepa.accounting"),
    ("model: 3\n", [], "model"),                                 # section given as a scalar
    (None, ["rollout.temperature=-0.1"], "rollout.temperature"),
    (None, ["parallel.vpp=2"], "parallel.vpp"),                  # vpp without pp
    (None, ["logging.level=LOUD"], "logging.level"),
]


@pytest.mark.parametrize("yaml_text,overrides,key", MALFORMED, ids=[m[2] + str(i) for i, m in enumerate(MALFORMED)])
def test_malformed_config_names_key(tmp_path, yaml_text, overrides, key):
    path = None
    if yaml_text is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path) if path else None, overrides)
    assert info.value.key == key, str(info.value)
    assert f"'{key}'" in str(info.value)


def test_missing_file_and_bad_override_shape(tmp_path):
    with pytest.raises(ConfigError, match="--config"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["rollout.n"])


def test_model_shape_checked_from_config_json(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"num_attention_heads": 6, "num_key_value_heads": 2, "num_hidden_layers": 4}')
    load_config(None, [f"model.path={cfg}", "parallel.tp=2", "parallel.pp=2"])
    with pytest.raises(ConfigError, match="num_attention_heads = 6"):
        load_config(None, [f"model.path={cfg}", "parallel.tp=4"])
    with pytest.raises(ConfigError, match="num_key_value_heads = 2"):
        load_config(None, [f"model.path={cfg}", "parallel.tp=3"])
