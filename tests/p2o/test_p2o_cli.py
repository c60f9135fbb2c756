"""The `p2o` entry point: help, subcommand dispatch, config and data commands."""
from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2o import __version__
from p2o.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(glob.glob(str(REPO / "configs" / "*.yaml")) + glob.glob(str(REPO / "configs" / "*" / "*.yaml")))


def _p2o(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2o.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    r = _p2o("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert name in r.stdout


def test_config_show_prints_resolved_yaml_and_errors():
    r = _p2o("config", "show", "rollout.n=7")
    assert r.returncode == 0 and "'n': 7" in r.stdout  # YAML quotes the key n
    r = _p2o("config", "show", "rollout.n=1")
    assert r.returncode == 2 and "rollout.n" in r.stderr


def test_config_show_with_a_file_and_overrides_as_documented(capsys):
    assert main(["config", "show", "--config", str(REPO / "configs" / "demo_cpu.yaml"), "rollout.n=7",
                 "grpo.loss_agg=seq-mean-token-mean"]) == 0
    out = capsys.readouterr().out
    assert "'n': 7" in out and "loss_agg: seq-mean-token-mean" in out and "path: smollm2-135m" in out
    assert main(["config", "show", "rollout.n=5", "--config", str(REPO / "configs" / "demo_cpu.yaml")]) == 0
    assert "'n': 5" in capsys.readouterr().out


def test_version():
    r = _p2o("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"p2o {__version__}"


# ----------------------------------------------------------------------------- the dry run
def test_shipped_configs_are_all_found():
    names = {str(Path(p).relative_to(REPO)) for p in SHIPPED}
    assert {"configs/demo_cpu.yaml", "configs/qwen3_4b_p2o_deepmath.yaml", "configs/qwen3_4b_p2o_deepscaler.yaml",
            "configs/scaling/qwen3_32b_p2o.yaml", "configs/slurm_test_cpu.yaml"} <= names and len(names) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=[str(Path(p).relative_to(REPO / "configs")) for p in SHIPPED])
def test_dry_run_passes_every_shipped_config(path, capsys):
    assert main(["train", "--config", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out and "policy gateway" in out and "budgets" in out
    if "gepa:" in Path(path).read_text():  # a P2O config: the gateway serves GEPA's scoring requests
        max_tokens = int(out.split("max_tokens <= ")[1].split()[0])
        scoring = int(out.split("GEPA scoring     max_tokens ")[1].split(",")[0])
        assert max_tokens >= scoring and "GEPA per round" in out
    assert main(["config", "check", "--config", path]) == 0
    assert capsys.readouterr().out.replace("p2o config check", "p2o train") == out


@pytest.mark.parametrize("overrides,keys", [
    (["gepa.eval_max_tokens=20000", "rollout.gateway_max_tokens=16384"], ["gepa.eval_max_tokens", "20000",
                                                                          "rollout.gateway_max_tokens", "16384"]),
    (["rollout.gateway_max_tokens=4096"], ["gepa.eval_max_tokens", "12288", "rollout.gateway_max_tokens", "4096"]),
    (["reflection.context_tokens=2048"], ["reflection.max_tokens", "2048", "reflection.context_tokens"]),
    (["rollout.top_p=nan"], ["rollout.top_p"]),
])
def test_dry_run_fails_naming_both_keys(overrides, keys, capsys):
    paper = str(REPO / "configs" / "qwen3_4b_p2o_deepmath.yaml")
    assert main(["train", "--config", paper, "--dry-run", *overrides]) == 2
    err = capsys.readouterr().err
    for key in keys:
        assert key in err, (key, err)


def test_dry_run_loads_no_model_and_no_torch(tmp_path):
    code = ("import sys; from p2o.cli import main; "
            f"rc = main(['train', '--config', {str(REPO / 'configs' / 'demo_cpu.yaml')!r}, '--dry-run']); "
            "heavy = [m for m in ('torch', 'transformers', 'megatron', 'openai') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout and not (tmp_path / "runs").exists()  # nothing imported, nothing written


def test_data_arithmetic(capsys):
    assert main(["data", "arithmetic", "--n", "3", "--levels", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["meta"]["level"] == 1 for r in rows)


@pytest.mark.slow  # `p2o doctor` imports every backend in subprocesses
def test_doctor_json():
    r = _p2o("doctor", "--json")
    assert r.returncode == 0
    names = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert names["torch"]["available"] and "gpu" in names


def test_log_level_value_is_not_taken_for_the_command(capsys):
    assert main(["--log-level", "WARNING", "data", "arithmetic", "--n", "1"]) == 0
    assert main(["--log-level=ERROR", "data", "arithmetic", "--n", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_http_client_request_lines_are_quiet_unless_debugging():
    import logging

    for level, expected in (("info", logging.WARNING), ("debug", logging.NOTSET)):
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        assert main(["--log-level", level, "data", "arithmetic", "--n", "1"]) == 0
        assert logging.getLogger("httpx").level == expected
        assert logging.getLogger("httpcore").level == expected
