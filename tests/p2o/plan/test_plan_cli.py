"""`p2o plan` end to end: the table for every preset, --json, clear errors."""
import json

import pytest

from p2o.cli import main
from p2o.plan.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_table_for_each_preset(name, capsys):
    rc = main(["plan", "--model", name, "--nodes", "1"])
    out = capsys.readouterr().out
    assert rc in (0, 1)  # 1: nothing fits (said in the table)
    assert out.splitlines()[1].startswith("#") and "TP1 PP1 DP8" in out
    assert any(line.endswith("  ok") for line in out.splitlines()) == (rc == 0)


def test_json_output(capsys):
    assert main(["plan", "--model", "Qwen3-4B", "--nodes", "2", "--json", "--top", "3", "--no-fused-logprob"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["num_params"] == PRESETS["Qwen3-4B"].num_params
    assert data["run"]["fused_logprob"] is False and len(data["layouts"]) == 3
    first = data["layouts"][0]
    assert first["feasible"] and first["memory_gib"]["logits"] > 1  # naive fp32 logits of a 2304-token row


def test_errors(capsys):
    assert main(["plan", "--model", "Qwen3-5B"]) == 2
    assert "--model: got 'Qwen3-5B'" in capsys.readouterr().err
    assert main(["plan", "--gpus-per-node", "0"]) == 2
    assert "cluster.gpus_per_node" in capsys.readouterr().err


def test_plan_from_a_run_config(repo_root, capsys):
    from p2o.config import load_config
    from p2o.plan.from_config import settings_from_config

    path = repo_root / "configs" / "scaling" / "qwen3_8b_p2o.yaml"
    model, values, layout = settings_from_config(load_config(str(path)))
    assert model == "models/Qwen3-8B" and layout == (2, 1)
    assert (values["prompts_per_step"], values["k"], values["max_response_tokens"], values["micro_batch"]) == (
        128, 6, 12288, 1)
    assert values["fused_logprob"] is True and values["dtype_bytes"] == 2 and values["vllm_gpu_memory_fraction"] == 0.4
    assert values["recompute"] is True  # train.recompute: full
    assert values["old_logprob_pass"] is True  # the paper's 2 minibatches per batch: the second one is off-policy
    demo = settings_from_config(load_config(str(repo_root / "configs" / "demo_cpu.yaml")))[1]
    assert demo["old_logprob_pass"] is False
    # options given on the command line win over the config
    assert main(["plan", "--config", str(path), "--nodes", "1", "--k", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["name"] == "Qwen3-8B" and data["run"]["k"] == 4 and data["run"]["prompts_per_step"] == 128
    assert main(["plan", "--config", str(path), "--nodes", "1", "--top", "1"]) == 0
    assert "--config layout (parallel.tp=2, parallel.pp=1): TP2 PP1 DP4: ok" in capsys.readouterr().out
    assert main(["plan", "--config", str(repo_root / "nope.yaml")]) == 2
    assert "expected an existing YAML file" in capsys.readouterr().err


def test_a_shipped_gpu_config_is_planned_on_its_target_nodes(repo_root, capsys):
    path = str(repo_root / "configs" / "scaling" / "qwen3_32b_p2o.yaml")
    assert main(["plan", "--config", path, "--top", "1"]) == 0  # 2 nodes (p2o.plan.targets): it fits there
    captured = capsys.readouterr()
    assert "written for 2 node(s) of 8xH100-80GB" in captured.err
    assert "2 x 8 GPUs" in captured.out.splitlines()[0]
    assert "--config layout (parallel.tp=4, parallel.pp=4): TP4 PP4 DP1: ok" in captured.out
    assert main(["plan", "--config", path, "--nodes", "1", "--top", "1"]) == 1  # --nodes wins: nothing fits on one
