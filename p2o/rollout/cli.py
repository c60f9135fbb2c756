"""`p2o serve`: serve a model behind the OpenAI-compatible gateway until interrupted.

    p2o serve --model smollm2-135m --host 127.0.0.1 --port 8000
    p2o convert megatron-to-hf --megatron runs/demo/checkpoints/step_000006/policy \
        --hf-config ~/.cache/p2o/smollm2-135m --out runs/demo/hf      # a trained policy as an HF directory
    p2o serve --config configs/demo_cpu.yaml --model runs/demo/hf rollout.max_batch_size=32

With `--reflection` it serves the run config's frozen initial model as the Self-Ref reflection model: prompts up
to reflection.context_tokens, answers up to reflection.max_tokens, vLLM's share of the GPU from
reflection.gpu_memory_utilization (what `reflection.server = subprocess` starts, and the Slurm job's reflection
component). With rollout.engine=vllm the process is a one-rank torch.distributed world of its own (vLLM's
external launcher needs one).

    p2o serve --reflection --config runs/x/config.yaml --served-model-name reflection --port 0 --endpoint-file f
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from contextlib import nullcontext
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML run config (rollout.* and model.* are used)")
    parser.add_argument("--model", default=None, help="model.path: HF dir, config.json, smollm2-135m or tiny-qwen3")
    parser.add_argument("--served-model-name", default=None, help="name reported by /v1/models (default: --model)")
    parser.add_argument("--host", default=None, help="bind address (default rollout.gateway_host)")
    parser.add_argument("--port", type=int, default=None, help="port (default rollout.gateway_port; 0 = free port)")
    parser.add_argument("--reflection", action="store_true",
                        help="serve as the Self-Ref reflection model (sizes from reflection.*)")
    parser.add_argument("--endpoint-file", default=None, help="write the URL to this file once listening")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")


def main(args: argparse.Namespace) -> int:
    from megatron_bridge.launch import single_rank_world
    from p2o.config import ConfigError, load_config
    from p2o.limits import resolve_limits
    from p2o.models import resolve_model_dir
    from p2o.rollout.factory import build_engine, build_gateway

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.path={args.model}")
    if args.host:
        overrides.append(f"rollout.gateway_host={args.host}")
    if args.port is not None:
        overrides.append(f"rollout.gateway_port={args.port}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"p2o serve: {e}")
        return 2
    model_dir = resolve_model_dir(cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed)
    # vLLM's external launcher needs a torch.distributed world: this process alone, unless under torchrun
    alone = cfg.rollout.engine == "vllm" and "RANK" not in os.environ
    limits = resolve_limits(cfg, model_dir)
    rollout, size = cfg.rollout, limits.policy_gateway
    if args.reflection:
        if limits.reflection_gateway is None:
            print("p2o serve: --reflection needs a Self-Ref config (p2o.enabled = true, reflection.mode = self)")
            return 2
        from p2o.rollout.reflection_server import server_rollout

        rollout = dataclasses.replace(server_rollout(cfg, limits), gateway_host=cfg.rollout.gateway_host,
                                      gateway_port=cfg.rollout.gateway_port)
        size = limits.reflection_gateway

    def ready(url: str) -> None:
        if args.endpoint_file:
            tmp = Path(args.endpoint_file + ".tmp")
            tmp.write_text(url + "\n")
            tmp.replace(args.endpoint_file)
        print(f"p2o serve: {cfg.model.path} ({rollout.engine} engine) listening on {url} -- Ctrl-C to stop",
              flush=True)

    with single_rank_world() if alone else nullcontext():
        engine = build_engine(rollout, cfg.model, model_dir)
        gateway = build_gateway(engine, engine.tokenizer, rollout, args.served_model_name or cfg.model.path,
                                thinking=cfg.model.thinking, size=size)
        gateway.serve_forever(ready=ready)
    return 0
