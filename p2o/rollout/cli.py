"""`p2o serve`: serve a model behind the OpenAI-compatible gateway until interrupted.

    p2o serve --model smollm2-135m --host 127.0.0.1 --port 8000
    p2o convert megatron-to-hf --megatron runs/demo/checkpoints/step_000006/policy \
        --hf-config ~/.cache/p2o/smollm2-135m --out runs/demo/hf      # a trained policy as an HF directory
    p2o serve --config configs/demo_cpu.yaml --model runs/demo/hf rollout.max_batch_size=32

The same command serves the frozen initial model as the Self-Ref reflection model. With rollout.engine=vllm
the process is a one-rank torch.distributed world of its own (vLLM's external launcher needs one).
"""
from __future__ import annotations

import argparse
import logging
import os
from contextlib import nullcontext

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML run config (rollout.* and model.* are used)")
    parser.add_argument("--model", default=None, help="model.path: HF dir, config.json, smollm2-135m or tiny-qwen3")
    parser.add_argument("--served-model-name", default=None, help="name reported by /v1/models (default: --model)")
    parser.add_argument("--host", default=None, help="bind address (default rollout.gateway_host)")
    parser.add_argument("--port", type=int, default=None, help="port (default rollout.gateway_port; 0 = free port)")
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
    with single_rank_world() if alone else nullcontext():
        engine = build_engine(cfg.rollout, cfg.model, model_dir)
        gateway = build_gateway(engine, engine.tokenizer, cfg.rollout, args.served_model_name or cfg.model.path,
                                thinking=cfg.model.thinking, size=resolve_limits(cfg, model_dir).policy_gateway)
        gateway.serve_forever(ready=lambda url: print(f"p2o serve: {cfg.model.path} ({cfg.rollout.engine} engine) "
                                                      f"listening on {url} -- Ctrl-C to stop", flush=True))
    return 0
