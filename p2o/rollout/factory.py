"""Build the configured engine (and its gateway) from `RolloutConfig` + `ModelConfig`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from p2o.config import ModelConfig, RolloutConfig
from p2o.limits import GatewaySize
from p2o.rollout.engine import RolloutEngine
from p2o.rollout.gateway import Gateway
from p2o.rollout.serving import GatewayLimits

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; 'cuda' without CUDA is an error naming rollout.device."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("rollout.device: got 'cuda' but CUDA is not available; use 'cpu' or 'auto'")
    return device


def build_engine(rollout: RolloutConfig, model: ModelConfig, model_dir: str | Path, **kwargs: Any) -> RolloutEngine:
    """The engine named by `rollout.engine` for the HF model directory `model_dir`."""
    if rollout.engine == "vllm":
        from p2o.rollout.vllm_engine import VLLMEngine

        if rollout.vllm_sleep_level not in (1, 2):
            raise ValueError(f"rollout.vllm_sleep_level: got {rollout.vllm_sleep_level}; expected 1 or 2")
        return VLLMEngine(str(model_dir), tp=rollout.vllm_tp, sleep_level=rollout.vllm_sleep_level,
                          gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
                          kv_cache_bytes=rollout.vllm_kv_cache_bytes, execution=rollout.vllm_execution,
                          dtype=model.dtype, seed=rollout.seed, max_prompt_tokens=rollout.max_prompt_tokens, **kwargs)
    from p2o.rollout.hf_engine import HFEngine

    return HFEngine.from_pretrained(model_dir, device=resolve_device(rollout.device), dtype=_DTYPES[model.dtype],
                                    max_batch_size=rollout.max_batch_size, seed=rollout.seed,
                                    max_prompt_tokens=rollout.max_prompt_tokens, **kwargs)


def gateway_limits(rollout: RolloutConfig, thinking: str = "off", size: GatewaySize | None = None) -> GatewayLimits:
    """The gateway's request limits: sizes from `size` (`p2o.limits.resolve_limits`, which derives them from the
    whole config: the policy gateway must serve GEPA's scoring requests, the reflection gateway the meta-prompt),
    else from `rollout` alone; queue timeout and thinking convention from `rollout` / `thinking`."""
    from p2o.prompts import chat_template_kwargs

    if size is None:
        size = GatewaySize(max_prompt_tokens=rollout.max_prompt_tokens,
                           max_tokens=rollout.gateway_max_tokens or rollout.max_new_tokens,
                           max_n=max(rollout.max_batch_size, rollout.n), max_body_bytes=rollout.gateway_max_body_bytes)
    return GatewayLimits(max_body_bytes=size.max_body_bytes, max_prompt_tokens=size.max_prompt_tokens,
                         max_tokens=size.max_tokens, max_n=size.max_n,
                         request_timeout_s=rollout.gateway_request_timeout_s,
                         chat_template_kwargs=chat_template_kwargs(thinking))


def build_gateway(engine: RolloutEngine, tokenizer: Any, rollout: RolloutConfig, model_name: str,
                  thinking: str = "off", size: GatewaySize | None = None) -> Gateway:
    """A gateway (not started) with the configured host, port, queue and limits (`gateway_limits`)."""
    return Gateway(engine, tokenizer, model_name=model_name, host=rollout.gateway_host, port=rollout.gateway_port,
                   max_batch_sequences=rollout.max_batch_size, max_queue=rollout.gateway_max_queue,
                   limits=gateway_limits(rollout, thinking, size), token_env=rollout.gateway_token_env)
