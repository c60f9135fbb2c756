"""Model shapes: preset parameter counts against the published checkpoint sizes, HF config parsing, bad input."""
import json

import pytest

from p2o.plan.presets import PRESETS, ModelShape, PlanError, load_model_shape, shape_from_hf_config

# Parameter counts of the released safetensors checkpoints (model cards / index metadata).
PUBLISHED = {
    "Qwen3-0.6B": 596_049_920, "Qwen3-4B": 4_022_468_096, "Qwen3-8B": 8_190_735_360,
    "Qwen3-14B": 14_768_307_200, "Qwen3-32B": 32_762_123_264, "Qwen3-30B-A3B": 30_532_122_624,
    "Llama-3.1-8B": 8_030_261_248, "smollm2-135m": 134_515_008,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_count_matches_published(name):
    assert PRESETS[name].num_params == PUBLISHED[name]


def test_qwen3_4b_by_hand():
    # per layer: q 2560x4096, k and v 2560x1024, o 4096x2560, q/k norm 2x128, SwiGLU 3x2560x9728, 2 RMSNorms
    layer = 2560 * 4096 + 2 * 2560 * 1024 + 4096 * 2560 + 256 + 3 * 2560 * 9728 + 2 * 2560
    assert PRESETS["Qwen3-4B"].num_params == 36 * layer + 151936 * 2560 + 2560  # tied head, final norm


def test_moe_active_params():
    m = PRESETS["Qwen3-30B-A3B"]
    assert 2.9e9 < m.num_active_params < 3.4e9  # "A3B"
    assert m.num_active_params < m.num_params / 9


def test_embedded_model_matches_its_hf_config(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert shape_from_hf_config(cfg, "tiny-qwen3") == PRESETS["tiny-qwen3"]


def test_load_by_name_dir_and_file(tmp_path, tiny_model_dir):
    assert load_model_shape("qwen3-8b") is PRESETS["Qwen3-8B"]
    assert load_model_shape(str(tiny_model_dir)).hidden == 64
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "vocab_size": 100, "model_type": "llama"}))
    s = load_model_shape(str(cfg))
    assert (s.kv_heads, s.head_dim, s.tied, s.qk_norm) == (4, 8, False, False)


def test_bad_inputs_name_the_field(tmp_path):
    with pytest.raises(PlanError, match="--model.*Qwen3-4B"):
        load_model_shape("Qwen3-5B")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="readable HF config.json"):
        load_model_shape(str(tmp_path))
    bad.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(PlanError, match="'num_attention_heads'.*missing"):
        load_model_shape(str(bad))
    with pytest.raises(PlanError, match="model.kv_heads"):
        ModelShape("x", hidden=8, ffn=8, layers=1, heads=4, kv_heads=3, head_dim=2, vocab=10, tied=True)
