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
