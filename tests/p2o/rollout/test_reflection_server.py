"""Where the Self-Ref reflection model runs (`p2o.rollout.reflection_server`): the placement rules checked when the
config loads, and the out-of-process server started for real and called through the reflection client."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from p2o.config import ConfigError, ReflectionServer, load_config, to_yaml
from p2o.limits import check_placement, placement
from p2o.rollout.reflection_server import TORCHRUN_VARIABLES, ReflectionProcess, server_env, start_reflection_server

REPO = Path(__file__).resolve().parents[3]
GPU_CONFIGS = sorted(glob.glob(str(REPO / "configs" / "qwen3_4b_p2o_*.yaml")))
CUDA_VLLM = ["rollout.engine=vllm", "rollout.device=cuda"]  # "on CUDA" said by the config (no CUDA here)


def test_in_process_reflection_next_to_vllm_on_cuda_is_refused_naming_the_keys():
    with pytest.raises(ConfigError) as info:
        load_config(str(REPO / "configs" / "demo_cpu.yaml"), [*CUDA_VLLM, "reflection.server=in_process"])
    assert info.value.key == "reflection.server"
    assert "rollout.engine = vllm" in str(info.value) and "reflection.mode = self" in str(info.value)
    # the same config is fine with the server out of process, with HF rollouts, or with Teacher-Ref / P2O off
    for extra in (["reflection.server=subprocess"], ["reflection.server=auto"], ["rollout.engine=hf"],
                  ["reflection.mode=teacher", "reflection.base_url=http://t:1/v1", "reflection.model=m"],
                  ["p2o.enabled=false"]):
        load_config(str(REPO / "configs" / "demo_cpu.yaml"), [*CUDA_VLLM, "reflection.server=in_process", *extra])


def test_shares_of_the_gpu_must_leave_room_naming_both_keys():
    over = [*CUDA_VLLM, "rollout.vllm_gpu_memory_utilization=0.85", "reflection.gpu_memory_utilization=0.15"]
    with pytest.raises(ConfigError) as info:
        load_config(str(REPO / "configs" / "demo_cpu.yaml"), over)
    assert info.value.key == "reflection.gpu_memory_utilization"
    assert "rollout.vllm_gpu_memory_utilization" in str(info.value)
    # checked whatever this machine has (a login node without GPUs), and not when the server has its own GPUs
    with pytest.raises(ConfigError):
        load_config(str(REPO / "configs" / "demo_cpu.yaml"), [*over[2:], "rollout.engine=vllm"])
    load_config(str(REPO / "configs" / "demo_cpu.yaml"),
                [*over, "reflection.server=external", "reflection.base_url=http://n2:8000", "reflection.model=r"])
    load_config(str(REPO / "configs" / "demo_cpu.yaml"), [*over[:2], "reflection.gpu_memory_utilization=0.14"])
    with pytest.raises(ConfigError) as info:
        load_config(str(REPO / "configs" / "demo_cpu.yaml"), ["reflection.gpu_memory_utilization=1"])
    assert info.value.key == "reflection.gpu_memory_utilization"


def test_external_needs_a_url():
    with pytest.raises(ConfigError) as info:
        load_config(str(REPO / "configs" / "demo_cpu.yaml"), ["reflection.server=external"])
    assert info.value.key == "reflection.base_url"


def test_auto_is_a_subprocess_only_for_vllm_on_cuda():
    demo = str(REPO / "configs" / "demo_cpu.yaml")
    assert placement(load_config(demo, CUDA_VLLM)) == ReflectionServer.SUBPROCESS
    assert placement(load_config(demo, ["rollout.engine=vllm", "rollout.device=cpu"])) == (
        ReflectionServer.SUBPROCESS if _cuda() else ReflectionServer.IN_PROCESS)
    assert placement(load_config(demo, ["rollout.engine=hf", "rollout.device=cpu"])) == ReflectionServer.IN_PROCESS
    assert placement(load_config(demo, ["rollout.engine=hf", "reflection.server=subprocess"])) == \
        ReflectionServer.SUBPROCESS


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: Path(p).stem)
def test_gpu_configs_place_self_ref_out_of_the_trainer_on_cuda(path):
    """The shipped GPU configs as a GPU node sees them: Self-Ref in a server process whose share of the GPU fits
    next to the policy engine's (the default topology of slurm/p2o_qwen3.sh without a reflection component)."""
    cfg = load_config(path, ["rollout.device=cuda"])
    if cfg.reflection.mode != "self" or not cfg.p2o.enabled:
        pytest.skip("no Self-Ref in this config")
    assert cfg.rollout.engine == "vllm"
    assert placement(cfg) in (ReflectionServer.SUBPROCESS, ReflectionServer.EXTERNAL)
    check_placement(cfg)
    if placement(cfg) == ReflectionServer.SUBPROCESS:
        assert cfg.rollout.vllm_gpu_memory_utilization + cfg.reflection.gpu_memory_utilization < 1


def test_the_dry_run_says_where_the_reflection_model_runs(capsys):
    from p2o.cli import main

    assert main(["train", "--config", str(REPO / "configs" / "demo_cpu.yaml"), "--dry-run", *CUDA_VLLM]) == 0
    assert "`p2o serve --reflection` process of its own (vllm engine, 0.2 of rank 0's GPU)" in capsys.readouterr().out


def test_server_env_leaves_the_trainers_world(monkeypatch):
    for k in TORCHRUN_VARIABLES:
        monkeypatch.setenv(k, "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("P2O_GATEWAY_TOKEN", "tok")
    env = server_env()
    assert not any(k in env for k in TORCHRUN_VARIABLES) and "TORCHELASTIC_RUN_ID" not in env
    assert env["P2O_GATEWAY_TOKEN"] == "tok"  # the trainer's gateway key protects the server too


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_subprocess_server_answers_the_reflection_client(engine, tmp_path, tiny_model_dir, hd32_model_dir,
                                                         monkeypatch):
    """`reflection.server = subprocess`: the run starts `p2o serve --reflection` as a real child process on
    127.0.0.1 (with vLLM: a one-rank world of its own, although the trainer's torchrun variables are set); the
    reflection client calls it through the openai client, with the run's gateway key, a meta-prompt longer than
    the policy's prompt limit (the server is sized from reflection.*), and the server ends on stop."""
    from p2o.gepa.adapters.reflection_client import ReflectionClient
    from p2o.limits import resolve_limits
    from p2o.rollout.reflection_server import SERVED_MODEL_NAME

    model, extra = tiny_model_dir, ["rollout.engine=hf"]
    if engine == "vllm":
        from tests.p2o.rollout.helpers import require_vllm

        require_vllm()
        model, extra = hd32_model_dir, ["rollout.engine=vllm", "rollout.vllm_kv_cache_bytes=67108864"]

    monkeypatch.setenv("P2O_GATEWAY_TOKEN", "reflection-test-key")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # as under torchrun: the child must not join
        monkeypatch.setenv(k, {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}[k])
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(str(REPO / "configs" / "demo_cpu.yaml"),
                      [f"model.path={model}", *extra, "rollout.device=cpu",
                       "rollout.max_prompt_tokens=40", "rollout.gateway_host=127.0.0.1", "reflection.server=subprocess",
                       "reflection.max_tokens=8", "reflection.temperature=0", f"logging.run_dir={run}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    limits = resolve_limits(cfg, model)
    server = start_reflection_server(cfg, limits, None, model, run)
    assert isinstance(server, ReflectionProcess) and server.process.poll() is None
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert f"({engine} engine) listening on {server.url}" in server.log_path.read_text()
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
        models = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer reflection-test-key"}).json()
        assert [m["id"] for m in models["data"]] == [SERVED_MODEL_NAME]
        assert httpx.get(server.url + "/v1/models").status_code == 401  # the run's gateway key is required

        refl = cfg.reflection
        refl.base_url, refl.model, refl.api_key_env, refl.retries = server.url + "/v1", SERVED_MODEL_NAME, \
            "P2O_GATEWAY_TOKEN", 0
        client = ReflectionClient(refl)
        prompt = "Improve this instruction for solving arithmetic word problems. " * 12
        from transformers import AutoTokenizer

        assert len(AutoTokenizer.from_pretrained(model)(prompt)["input_ids"]) > cfg.rollout.max_prompt_tokens
        completion = client(prompt)
        client.close()
        assert isinstance(completion.text, str) and completion.finish_reason in ("stop", "length")
        assert client.calls == 1 and client.failures == 0
    finally:
        server.stop()
    assert server.process.returncode is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)


@pytest.mark.slow
def test_the_server_listens_on_reflection_port(tmp_path, tiny_model_dir):
    """reflection.port pins the server's port (the Slurm job registers it with its GEPA service)."""
    import socket

    from p2o.limits import resolve_limits

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(str(REPO / "configs" / "demo_cpu.yaml"),
                      [f"model.path={tiny_model_dir}", "rollout.engine=hf", "rollout.device=cpu",
                       "reflection.server=subprocess", f"reflection.port={port}", f"logging.run_dir={run}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    server = start_reflection_server(cfg, resolve_limits(cfg, tiny_model_dir), None, tiny_model_dir, run)
    try:
        assert server.url == f"http://127.0.0.1:{port}"
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
    finally:
        server.stop()
    with pytest.raises(ConfigError) as info:
        load_config(str(REPO / "configs" / "demo_cpu.yaml"), ["reflection.port=70000"])
    assert info.value.key == "reflection.port"


def test_a_failing_server_names_its_log(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("rollout: {engine: nonsense}\n")
    with pytest.raises(RuntimeError, match="server.log"):
        ReflectionProcess.start(bad, tmp_path, "127.0.0.1", tmp_path / "srv", timeout_s=120)
    assert (tmp_path / "srv" / "server.log").read_text()


def test_serve_reflection_refuses_a_config_without_self_ref():
    r = subprocess.run([sys.executable, "-m", "p2o.cli", "serve", "--reflection", "--model", "tiny-qwen3",
                        "p2o.enabled=false"], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "--reflection" in r.stdout
