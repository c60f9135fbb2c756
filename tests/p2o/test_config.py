"""Config loading: defaults, YAML + dotlist layering, choices as enums, checks in `__post_init__`, and errors
that name the offending key (every numeric field fuzzed with non-finite and out-of-range values)."""
from __future__ import annotations

import dataclasses
import glob
import json
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from p2o.config import (
    Choice,
    ConfigError,
    Engine,
    GEPAMode,
    LossAgg,
    RolloutConfig,
    RunConfig,
    choices,
    field_type,
    load_config,
    to_dict,
    to_yaml,
)

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
    (None, ["logging.level=INFO"], "logging.level"),           # removed: it was validated and never read
    # non-finite and out-of-range numbers
    (None, ["reward.timeout_s=nan"], "reward.timeout_s"),
    (None, ["rollout.top_p=0"], "rollout.top_p"),
    (None, ["rollout.top_p=1.5"], "rollout.top_p"),
    (None, ["rollout.temperature=inf"], "rollout.temperature"),
    (None, ["rollout.temperature=0"], "rollout.temperature"),
    (None, ["rollout.vllm_gpu_memory_utilization=7"], "rollout.vllm_gpu_memory_utilization"),
    (None, ["rollout.vllm_sleep_level=3"], "rollout.vllm_sleep_level"),
    (None, ["rollout.gateway_port=70000"], "rollout.gateway_port"),
    (None, ["reflection.timeout_s=-5"], "reflection.timeout_s"),
    (None, ["gepa.eval_timeout_s=0"], "gepa.eval_timeout_s"),
    (None, ["optim.beta1=1"], "optim.beta1"),
    (None, ["optim.eps=0"], "optim.eps"),
    (None, ["reward.rel_tol=1"], "reward.rel_tol"),
    (None, ["data.arithmetic.level_weights=[1,nan]"], "data.arithmetic.level_weights"),
    ("reward:\n  timeout_s: .nan\n", [], "reward.timeout_s"),        # YAML's own NaN spelling
    ("gepa:\n  budget: sometimes\n", [], "gepa.budget"),
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


# ----------------------------------------------------------------------------- choices are enums
def test_choices_are_enums_that_behave_as_strings(tmp_path):
    cfg = load_config(None, ["grpo.loss_agg=seq-mean-token-mean", "p2o.gepa_mode=async"])
    assert isinstance(cfg.grpo.loss_agg, LossAgg) and cfg.grpo.loss_agg is LossAgg.SEQ_MEAN_TOKEN_MEAN
    assert cfg.p2o.gepa_mode == "async" and cfg.p2o.gepa_mode != "sync"  # what every consumer compares with
    assert {"async": 1}[cfg.p2o.gepa_mode] == 1 and f"{cfg.p2o.gepa_mode}" == "async"
    assert json.dumps(to_dict(cfg)["p2o"]["gepa_mode"]) == '"async"'
    text = to_yaml(cfg)
    assert "loss_agg: seq-mean-token-mean" in text and "gepa_mode: async" in text and "GEPAMode" not in text
    assert OmegaConf.to_container(OmegaConf.create(text))["grpo"]["loss_agg"] == "seq-mean-token-mean"
    assert load_config(None, ["p2o.gepa_mode=ASYNC"]).p2o.gepa_mode is GEPAMode.ASYNC  # the member name works too


def test_every_choice_field_is_an_enum_with_a_valid_default():
    fields = _leaf_fields()
    choice_keys = [k for k, t in fields.items() if isinstance(t, type) and issubclass(t, Choice)]
    assert len(choice_keys) >= 19
    defaults = to_dict(RunConfig())
    for key in choice_keys:
        section, name = key.rsplit(".", 1)
        value = _get(defaults, section)[name]
        assert value in choices(key), key
    # no free-text field is secretly a choice any more
    assert field_type("grpo.loss_agg") is LossAgg and choices("grpo.loss_agg") == tuple(m.value for m in LossAgg)
    with pytest.raises(KeyError):
        choices("rollout.n")


def test_bad_choice_lists_the_values_not_the_member_names():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["p2o.distill=sometimes"])
    assert "ratio_mask" in info.value.expected and "RATIO_MASK" not in info.value.expected


def test_post_init_checks_run_on_construction_and_in_omegaconf_to_object():
    with pytest.raises(ConfigError) as info:
        RolloutConfig(top_p=0.0)
    assert info.value.key == "rollout.top_p"
    with pytest.raises(ConfigError) as info:
        RolloutConfig(engine="tpu")  # a plain string given directly is checked like a YAML value
    assert info.value.key == "rollout.engine" and "hf, vllm" in info.value.expected
    assert RolloutConfig(engine="vllm").engine is Engine.VLLM
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.from_dotlist(["rollout.top_p=0"]))
    with pytest.raises(ConfigError, match="rollout.top_p"):
        OmegaConf.to_object(merged)
    cfg = RunConfig()
    cfg.rollout.top_p = 2.0  # changed after construction: validate checks the sections again
    from p2o.config import validate
    with pytest.raises(ConfigError, match="rollout.top_p"):
        validate(cfg)


# ----------------------------------------------------------------------------- fuzz: every numeric field
def _leaf_fields(cls=RunConfig, prefix=""):
    out = {}
    for f in dataclasses.fields(cls):
        t = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            out.update(_leaf_fields(t, prefix + f.name + "."))
        else:
            out[prefix + f.name] = t
    return out


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


NUMERIC = sorted(k for k, t in _leaf_fields().items() if t in (int, float))
FLOAT_LISTS = sorted(k for k, t in _leaf_fields().items() if t == list[float])


def test_fuzz_covers_every_numeric_field():
    assert len(NUMERIC) > 80 and "reward.timeout_s" in NUMERIC and "rollout.top_p" in NUMERIC
    assert FLOAT_LISTS == ["data.arithmetic.level_weights"]


def _section(key):
    """(section class, field name) of a dotted key."""
    *path, name = key.split(".")
    cls = RunConfig
    for part in path:
        cls = typing.get_type_hints(cls)[part]
    return cls, name


@pytest.mark.parametrize("key", NUMERIC)
def test_fuzz_non_finite_and_negative_numbers_name_the_key(key):
    cls, name = _section(key)
    floats = _leaf_fields()[key] is float
    bad = [float("nan"), float("inf"), float("-inf"), -1.0, -1e-9] if floats else [-1, -(2 ** 40)]
    for value in bad:  # the section's __post_init__, which loading runs (below, and in the test above)
        with pytest.raises(ConfigError) as info:
            cls(**{name: value})
        assert info.value.key == key, (value, str(info.value))
    # through the whole loading path: the dotlist string, OmegaConf's conversion, the checks
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={'nan' if floats else -1}"])
    assert info.value.key == key and f"'{key}'" in str(info.value)


@pytest.mark.parametrize("key", FLOAT_LISTS)
def test_fuzz_float_lists(key):
    for value in ("[1,nan]", "[inf,1]", "[-1,2]"):
        with pytest.raises(ConfigError) as info:
            load_config(None, ["data.arithmetic.levels=[1,2]", f"{key}={value}"])
        assert info.value.key == key


def test_fuzz_values_within_range_load():
    """The fuzz is not vacuous: the same keys accept the defaults written back explicitly."""
    defaults = to_dict(RunConfig())
    overrides = []
    for key in NUMERIC:
        section, name = key.rsplit(".", 1)
        overrides.append(f"{key}={_get(defaults, section)[name]}")
    load_config(None, overrides)


# ----------------------------------------------------------------------------- user(x)
def test_paper_configs_use_the_authors_user_prompt():
    from p2o.prompts import AUTHORS_USER_TEMPLATE, DEFAULT_USER_TEMPLATE, user_text

    authors = "Let's think step by step and output the final answer within \\boxed{}.\nQuestion: {question}"
    assert AUTHORS_USER_TEMPLATE == authors
    paper = sorted(glob.glob(str(REPO / "configs" / "qwen3_*.yaml")) + glob.glob(str(REPO / "configs" / "scaling" / "*.yaml")))
    assert len(paper) >= 8  # P2O DeepMath/DeepScaleR, the two GRPO baselines, four scaling configs, ...
    for path in paper:
        assert load_config(path).prompt.user_template == authors, path
    assert user_text("What is 1+1?", authors) == ("Let's think step by step and output the final answer within "
                                                  "\\boxed{}.\nQuestion: What is 1+1?")
    assert load_config().prompt.user_template == DEFAULT_USER_TEMPLATE
    assert load_config(str(REPO / "configs" / "demo_cpu.yaml")).prompt.user_template == DEFAULT_USER_TEMPLATE
