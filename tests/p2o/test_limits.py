"""Cross-component limits (`p2o.limits`): derived values, and errors that name both keys and both values."""
from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from p2o.config import ConfigError, load_config, to_yaml
from p2o.limits import check_prompt_lengths, reflection_rollout, resolve_limits
from p2o.rollout.factory import gateway_limits

REPO = Path(__file__).resolve().parents[2]
PAPER = sorted(glob.glob(str(REPO / "configs" / "qwen3_4b_p2o_*.yaml")) + glob.glob(str(REPO / "configs" / "scaling" / "*.yaml")))


def model_json(tmp_path: Path, max_pos: int) -> str:
    p = tmp_path / f"model_{max_pos}.json"
    p.write_text(json.dumps({"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                             "max_position_embeddings": max_pos}))
    return str(p)


def test_paper_configs_derive_a_policy_gateway_that_serves_gepa():
    assert len(PAPER) >= 6
    for path in PAPER:
        cfg = load_config(path)
        assert cfg.gepa.eval_max_tokens == 12288
        assert cfg.rollout.gateway_max_tokens == 12288  # derived: max(max_new_tokens, eval_max_tokens)
        limits = resolve_limits(cfg)
        assert limits.policy_gateway.max_tokens >= cfg.gepa.eval_max_tokens
        assert limits.reflection_gateway.max_prompt_tokens == 32768 - 2048
        assert limits.reflection_gateway.max_tokens == 2048


def test_gateway_limit_below_gepa_eval_max_tokens_names_both_keys():
    path = str(REPO / "configs" / "qwen3_4b_p2o_deepmath.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["rollout.gateway_max_tokens=4096"])
    msg = str(info.value)
    assert info.value.key == "gepa.eval_max_tokens"
    assert "12288" in msg and "rollout.gateway_max_tokens" in msg and "4096" in msg
    with pytest.raises(ConfigError, match="rollout.gateway_max_tokens = 12288"):
        load_config(path, ["rollout.gateway_max_tokens=12288", "gepa.eval_max_tokens=12289"])
    assert load_config(path, ["rollout.gateway_max_tokens=16000"]).rollout.gateway_max_tokens == 16000
    # without P2O the gateway serves no GEPA request: no constraint, and the derived limit is the rollouts'
    cfg = load_config(path, ["p2o.enabled=false"])
    assert cfg.rollout.gateway_max_tokens == cfg.rollout.max_new_tokens
    load_config(path, ["p2o.enabled=false", "rollout.gateway_max_tokens=4096"])


def test_derived_policy_gateway_max_tokens_and_max_n():
    cfg = load_config(None, ["rollout.max_new_tokens=100", "gepa.eval_max_tokens=300", "gepa.eval_n=80",
                             "rollout.max_batch_size=16"])
    assert cfg.rollout.gateway_max_tokens == 300
    lim = gateway_limits(cfg.rollout, "off", resolve_limits(cfg).policy_gateway)
    assert (lim.max_tokens, lim.max_n, lim.max_prompt_tokens) == (300, 80, cfg.rollout.max_prompt_tokens)
    assert load_config(None, ["rollout.max_new_tokens=500", "gepa.eval_max_tokens=300"]).rollout.gateway_max_tokens == 500


def test_engine_length_against_the_model(tmp_path):
    model = model_json(tmp_path, 1024)
    load_config(None, [f"model.path={model}", "rollout.max_prompt_tokens=512", "rollout.max_new_tokens=512",
                       "gepa.eval_max_tokens=64", "reflection.max_tokens=128"])
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"model.path={model}", "rollout.max_prompt_tokens=512", "rollout.max_new_tokens=513"])
    msg = str(info.value)
    assert info.value.key == "rollout.max_new_tokens" and "513" in msg
    assert "rollout.max_prompt_tokens = 512" in msg and "max_position_embeddings = 1024" in msg
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"model.path={model}", "rollout.max_prompt_tokens=512", "rollout.max_new_tokens=64",
                           "gepa.eval_max_tokens=600", "reflection.max_tokens=128"])
    assert info.value.key == "gepa.eval_max_tokens" and "rollout.max_prompt_tokens = 512" in str(info.value)


def test_reflection_context_derived_from_the_model_and_checked(tmp_path):
    small = model_json(tmp_path, 4096)
    cfg = load_config(None, [f"model.path={small}", "reflection.max_tokens=512"])
    assert cfg.reflection.context_tokens == 4096  # min(max_position_embeddings, 32768)
    limits = resolve_limits(cfg)
    assert limits.reflection_gateway.max_prompt_tokens == 4096 - 512
    assert limits.reflection_prompt_budget == 4096 - 512 - 64
    frozen = reflection_rollout(cfg, limits)
    assert (frozen.max_prompt_tokens, frozen.gateway_max_tokens, frozen.gateway_port) == (3584, 512, 0)
    assert load_config(None, [f"model.path={model_json(tmp_path, 40960)}"]).reflection.context_tokens == 32768
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"model.path={small}", "reflection.context_tokens=8192"])
    assert info.value.key == "reflection.context_tokens" and "8192" in str(info.value)
    assert "max_position_embeddings = 4096" in str(info.value)
    # a teacher has its own context: not checked against the policy model
    teacher = ["reflection.mode=teacher", "reflection.base_url=http://teacher:8000", "reflection.model=kimi"]
    assert load_config(None, [f"model.path={small}", "reflection.context_tokens=131072", *teacher]).reflection.context_tokens == 131072
    assert resolve_limits(load_config(None, teacher)).reflection_gateway is None
    # the meta-prompt needs room next to the answer
    with pytest.raises(ConfigError) as info:
        load_config(None, ["reflection.context_tokens=2048", "reflection.max_tokens=2000"])
    assert info.value.key == "reflection.max_tokens" and "reflection.context_tokens = 2048" in str(info.value)
    # plain GRPO has no reflection model: its settings are not held against a small model
    grpo = load_config(None, [f"model.path={model_json(tmp_path, 2048)}", "p2o.enabled=false"])
    assert resolve_limits(grpo).reflection_gateway is None
    with pytest.raises(ConfigError):
        load_config(None, [f"model.path={model_json(tmp_path, 2048)}"])


def test_default_config_fits_the_default_model():
    cfg = load_config()  # smollm2-135m: 8192 positions
    assert cfg.reflection.context_tokens == 8192
    assert resolve_limits(cfg).model_max_len == 8192


def test_unreadable_model_skips_the_model_checks_and_says_so():
    limits = resolve_limits(load_config(None, ["model.path=models/not-here", "rollout.max_new_tokens=100000"]))
    assert limits.model_max_len is None and "not readable here" in limits.notes[0]


def test_gepa_concurrency_against_the_gateway_queue():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["gepa.eval_concurrency=64", "rollout.gateway_max_queue=32"])
    assert info.value.key == "gepa.eval_concurrency" and "rollout.gateway_max_queue = 32" in str(info.value)


def test_resolved_config_reloads_to_the_same_values(tmp_path):
    cfg = load_config(str(REPO / "configs" / "demo_cpu.yaml"))
    y = tmp_path / "resolved.yaml"
    y.write_text(to_yaml(cfg))
    assert load_config(str(y)) == cfg


def test_prompt_lengths_against_max_prompt_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    from p2o.data.problem import Problem

    tiny_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = load_config(None, ["model.path=tiny-qwen3", "rollout.max_prompt_tokens=64"])
    ok = [Problem("short", "What is 2+2?", "4")]
    assert 0 < check_prompt_lengths(cfg, tiny_tokenizer, ok) <= 64
    long = ok + [Problem("long-one", "one " * 200, "1")]
    with pytest.raises(ConfigError) as info:
        check_prompt_lengths(cfg, tiny_tokenizer, long)
    assert info.value.key == "rollout.max_prompt_tokens" and "'long-one'" in str(info.value)


def test_embedded_model_shapes_match_their_configs(tiny_model_dir, smollm2_dir):
    from p2o.config import EMBEDDED_MODEL_SHAPES

    for name, d in (("tiny-qwen3", tiny_model_dir), ("smollm2-135m", smollm2_dir)):
        real = json.loads((Path(d) / "config.json").read_text())
        assert {k: real[k] for k in EMBEDDED_MODEL_SHAPES[name]} == EMBEDDED_MODEL_SHAPES[name], name
