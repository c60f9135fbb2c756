"""Limits one component imposes on another: derived or checked in one place, when the config loads.

A run sends requests across these boundaries; each request's size must fit its receiver's limit, or every
such request fails (GEPA once scored those failures as 0, and a whole run silently became plain GRPO):

- GEPA candidate scoring -> the policy gateway: max_tokens = gepa.eval_max_tokens must fit
  rollout.gateway_max_tokens, n = gepa.eval_n the gateway's n limit, the prompt T(x, z)
  rollout.max_prompt_tokens, the requests in flight (gepa.eval_concurrency) rollout.gateway_max_queue;
- the Self-Ref reflector -> the reflection gateway: the meta-prompt (fitted to reflection.context_tokens -
  reflection.max_tokens - 64) and max_tokens = reflection.max_tokens;
- rollouts and GEPA scoring -> the policy engine: prompt + response tokens within the model's
  max_position_embeddings; the Self-Ref reflector -> the frozen model: reflection.context_tokens likewise;
- the Self-Ref server -> the policy engine: not in the trainer's process with vLLM on CUDA, and its share of
  the GPU with the policy's (`p2o.rollout.reflection_server.check_placement`);
- problems -> rollouts: every prompt x within rollout.max_prompt_tokens (`check_prompt_lengths`, at train
  start, once the tokenizer is loaded).

Derived values (filled in by `RunLimits.apply`, so `p2o config show` and the saved config.yaml hold them):

- `rollout.gateway_max_tokens` = 0 -> max(rollout.max_new_tokens, gepa.eval_max_tokens) with P2O on, else
  rollout.max_new_tokens. A value set explicitly is checked against gepa.eval_max_tokens instead.
- `reflection.context_tokens` = 0 -> in self mode min(max_position_embeddings, 32768) when the model's
  config.json is readable here, else 32768 (the authors' reflection server: vLLM with max-model-len 32768).

The model's max_position_embeddings comes from its config.json (`p2o.config.read_hf_config`: embedded models
too); a model that is not readable on this machine (e.g. a checkpoint only on the cluster) skips the model
checks, and the plan says so. Every error is a `ConfigError` naming both keys and both values.

    limits = resolve_limits(cfg)          # raises ConfigError
    limits.apply(cfg)                     # fills in the derived values
    policy_gateway = limits.policy_gateway    # GatewaySize: max_prompt_tokens, max_tokens, max_n
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2o.config import ConfigError, Engine, ReflectionMode, ReflectionServer, RunConfig, read_hf_config
from p2o.gepa.core.reflect import PROMPT_MARGIN_TOKENS

DEFAULT_REFLECTION_CONTEXT_TOKENS = 32768
"""The reflection context when it cannot be derived from the model (the authors' Self-Ref server)."""

REFLECTION_BYTES_PER_TOKEN = 32
"""Bound on the JSON bytes of one meta-prompt token (escaped UTF-8), to size the reflection gateway's body limit."""


@dataclass(frozen=True)
class GatewaySize:
    """What one gateway accepts (sizes only; `p2o.rollout.factory.gateway_limits` adds the rest)."""

    max_prompt_tokens: int
    max_tokens: int
    max_n: int
    max_body_bytes: int


@dataclass(frozen=True)
class RunLimits:
    model_max_len: int | None
    """max_position_embeddings of model.path; None when its config.json is not readable here."""
    policy_gateway: GatewaySize
    policy_max_tokens_from: str
    """How policy_gateway.max_tokens was obtained ('set: rollout.gateway_max_tokens' or the derivation)."""
    reflection_context_tokens: int
    reflection_context_from: str
    """'set', 'default' or the derivation."""
    reflection_gateway: GatewaySize | None
    """The Self-Ref reflection gateway (P2O on, reflection.mode = self); None otherwise."""
    reflection_prompt_budget: int
    """Tokens the meta-prompt is fitted into: context_tokens - max_tokens - PROMPT_MARGIN_TOKENS."""
    notes: tuple[str, ...] = ()
    """Checks that could not run here, and why."""

    def apply(self, cfg: RunConfig) -> RunConfig:
        """Write the derived values into `cfg` (idempotent: they then read as set and pass the same checks)."""
        cfg.rollout.gateway_max_tokens = self.policy_gateway.max_tokens
        cfg.reflection.context_tokens = self.reflection_context_tokens
        return cfg


def model_max_len(path: str | Path) -> int | None:
    """max_position_embeddings of a model (directory, config.json or embedded name) when its config is readable
    here; None otherwise. Raises ConfigError naming model.path when the config is broken."""
    hf = read_hf_config(str(path))
    value = hf.get("max_position_embeddings") if hf else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError("model.path", str(path), f"a config.json with a positive integer "
                                                   f"max_position_embeddings (got {value!r})")
    return value


def resolve_limits(cfg: RunConfig, model_dir: str | Path | None = None) -> RunLimits:
    """Check every cross-component limit of `cfg` and derive the unset ones; raises `ConfigError`.

    `model_dir`: the resolved model directory when the caller has it (the training run does), else the
    model's config is read from model.path where possible."""
    r, g, refl = cfg.rollout, cfg.gepa, cfg.reflection
    length = model_max_len(model_dir if model_dir is not None else cfg.model.path)
    model = f"max_position_embeddings = {length} of model.path = {cfg.model.path!r}"
    gepa_on = cfg.p2o.enabled
    notes = [] if length else [f"model.path = {cfg.model.path!r} is not readable here: the checks against the "
                               "model's max_position_embeddings run when it is (e.g. on the training node)"]

    # GEPA scores candidates through the policy gateway
    if r.gateway_max_tokens:
        max_tokens, max_tokens_from = r.gateway_max_tokens, "set: rollout.gateway_max_tokens"
        if gepa_on and g.eval_max_tokens > max_tokens:
            raise ConfigError("gepa.eval_max_tokens", g.eval_max_tokens,
                              f"at most rollout.gateway_max_tokens = {max_tokens}: GEPA scores candidates through "
                              "the policy gateway, which refuses larger requests (raise rollout.gateway_max_tokens, "
                              "or set it to 0 to derive it)")
    elif gepa_on:
        max_tokens = max(r.max_new_tokens, g.eval_max_tokens)
        max_tokens_from = "max(rollout.max_new_tokens, gepa.eval_max_tokens)"
    else:
        max_tokens, max_tokens_from = r.max_new_tokens, "rollout.max_new_tokens"
    policy = GatewaySize(max_prompt_tokens=r.max_prompt_tokens, max_tokens=max_tokens,
                         max_n=max(r.max_batch_size, r.n, g.eval_n if gepa_on else 1),
                         max_body_bytes=r.gateway_max_body_bytes)
    if gepa_on and g.eval_concurrency > r.gateway_max_queue:
        raise ConfigError("gepa.eval_concurrency", g.eval_concurrency,
                          f"at most rollout.gateway_max_queue = {r.gateway_max_queue} (the policy gateway refuses "
                          "requests beyond its queue with 429)")

    # the engine holds prompt + response within the model's positions
    if length:
        if r.max_prompt_tokens + r.max_new_tokens > length:
            raise ConfigError("rollout.max_new_tokens", r.max_new_tokens,
                              f"rollout.max_prompt_tokens + rollout.max_new_tokens <= {length} ({model}); "
                              f"rollout.max_prompt_tokens = {r.max_prompt_tokens}")
        if gepa_on and r.max_prompt_tokens + max_tokens > length:
            key = "rollout.gateway_max_tokens" if r.gateway_max_tokens else "gepa.eval_max_tokens"
            raise ConfigError(key, max_tokens if r.gateway_max_tokens else g.eval_max_tokens,
                              f"rollout.max_prompt_tokens + {key} <= {length} ({model}); "
                              f"rollout.max_prompt_tokens = {r.max_prompt_tokens}")

    # the reflection model's context
    self_mode = refl.mode == ReflectionMode.SELF
    if refl.context_tokens:
        context, context_from = refl.context_tokens, "set"
    elif self_mode and length:
        context = min(length, DEFAULT_REFLECTION_CONTEXT_TOKENS)
        context_from = f"min(max_position_embeddings, {DEFAULT_REFLECTION_CONTEXT_TOKENS})"
    else:
        context, context_from = DEFAULT_REFLECTION_CONTEXT_TOKENS, "default"
    if gepa_on and self_mode and length and context > length:
        raise ConfigError("reflection.context_tokens", context,
                          f"at most {length} ({model}): Self-Ref reflection runs on the frozen initial model")
    budget = context - refl.max_tokens - PROMPT_MARGIN_TOKENS
    if gepa_on and budget <= 0:  # plain GRPO has no reflection model
        raise ConfigError("reflection.max_tokens", refl.max_tokens,
                          f"less than reflection.context_tokens - {PROMPT_MARGIN_TOKENS} = "
                          f"{context - PROMPT_MARGIN_TOKENS} (reflection.context_tokens = {context}; the "
                          "meta-prompt needs room in the context)")
    check_placement(cfg)  # where the Self-Ref model runs, against the policy engine
    reflection = None
    if gepa_on and self_mode:
        reflection = GatewaySize(max_prompt_tokens=context - refl.max_tokens, max_tokens=refl.max_tokens, max_n=1,
                                 max_body_bytes=max(r.gateway_max_body_bytes, REFLECTION_BYTES_PER_TOKEN * context))
    return RunLimits(model_max_len=length, policy_gateway=policy, policy_max_tokens_from=max_tokens_from,
                     reflection_context_tokens=context, reflection_context_from=context_from,
                     reflection_gateway=reflection, reflection_prompt_budget=budget, notes=tuple(notes))


def reflection_rollout(cfg: RunConfig, limits: RunLimits):
    """The `RolloutConfig` the Self-Ref reflection engine and gateway are built from: a free port, and prompts
    up to the reflection context (the policy's rollout.max_prompt_tokens would refuse the meta-prompt)."""
    size = limits.reflection_gateway
    if size is None:
        raise ValueError("no reflection gateway in this run (P2O off, or reflection.mode = teacher)")
    return dataclasses.replace(cfg.rollout, gateway_port=0, max_prompt_tokens=size.max_prompt_tokens,
                               gateway_max_tokens=size.max_tokens, gateway_max_body_bytes=size.max_body_bytes)


def check_prompt_lengths(cfg: RunConfig, tokenizer: Any, problems: Sequence[Any], source: str = "data.source") -> int:
    """Every problem's prompt x, rendered exactly as for rollouts, fits rollout.max_prompt_tokens (a longer one
    would fail its step mid-run). Returns the longest prompt in tokens; raises ConfigError naming the problem.

    Templated prompts T(x, z) add up to a reflection answer's length (at most reflection.max_tokens); a GEPA
    scoring request over the limit fails its GEPA job with an error naming rollout.max_prompt_tokens."""
    from p2o import prompts

    longest = 0
    for p in problems:
        ids = prompts.encode(tokenizer, prompts.messages(p.question, None, cfg.prompt.user_template,
                                                         cfg.prompt.system), cfg.model.thinking)
        if len(ids) > cfg.rollout.max_prompt_tokens:
            raise ConfigError("rollout.max_prompt_tokens", cfg.rollout.max_prompt_tokens,
                              f"at least {len(ids)}: the prompt of problem {p.id!r} in {source} = "
                              f"{getattr(cfg.data, source.split('.')[-1], '')!r} has {len(ids)} tokens")
        longest = max(longest, len(ids))
    return longest


# ----------------------------------------------------------------------------- where Self-Ref runs
def cuda_generation(cfg: RunConfig) -> bool:
    """True when the policy engine generates on CUDA: rollout.device = cuda, or auto (vLLM: any) with CUDA here."""
    if cfg.rollout.device == "cuda":
        return True
    if cfg.rollout.device == "cpu" and cfg.rollout.engine != Engine.VLLM:
        return False
    import torch

    return torch.cuda.is_available()


def placement(cfg: RunConfig) -> ReflectionServer:
    """`reflection.server` with auto resolved for this machine (`cuda_generation`)."""
    server = cfg.reflection.server
    if server != ReflectionServer.AUTO:
        return server
    if cfg.rollout.engine == Engine.VLLM and cuda_generation(cfg):
        return ReflectionServer.SUBPROCESS
    return ReflectionServer.IN_PROCESS


def check_placement(cfg: RunConfig) -> None:
    """The Self-Ref placement against the policy engine; raises ConfigError naming the keys.

    - in_process with rollout.engine = vllm on CUDA is refused (one CuMemAllocator per process: sleeping the
      policy engine would unmap the reflection engine's memory);
    - a vLLM server process (subprocess or auto) on rank 0's GPU next to the vLLM policy engine: the two
      gpu_memory_utilization fractions must sum to < 1. Checked whatever this machine has (the config may be
      checked on a login node without GPUs)."""
    refl, r = cfg.reflection, cfg.rollout
    if not cfg.p2o.enabled or refl.mode != ReflectionMode.SELF or r.engine != Engine.VLLM:
        return
    if refl.server == ReflectionServer.IN_PROCESS and cuda_generation(cfg):
        raise ConfigError("reflection.server", str(refl.server),
                          "subprocess or external (or auto) with rollout.engine = vllm on CUDA and "
                          "reflection.mode = self: vLLM has one CuMemAllocator per process, and sleeping the policy "
                          "engine would unmap an in-process reflection engine's memory")
    if refl.server in (ReflectionServer.AUTO, ReflectionServer.SUBPROCESS):
        total = r.vllm_gpu_memory_utilization + refl.gpu_memory_utilization
        if total >= 1:
            raise ConfigError("reflection.gpu_memory_utilization", refl.gpu_memory_utilization,
                              f"less than 1 - rollout.vllm_gpu_memory_utilization = "
                              f"{1 - r.vllm_gpu_memory_utilization:.3g} (the Self-Ref server process shares rank "
                              f"0's GPU with the policy's vLLM engine; their sum is {total:.3g}); or run it on its "
                              "own GPUs: reflection.server = external")


def describe_placement(cfg: RunConfig) -> str:
    """Where `placement(cfg)` serves the frozen model, in words (for `p2o train --dry-run`)."""
    where = placement(cfg)
    if where == ReflectionServer.EXTERNAL:
        return f"served at reflection.base_url = {cfg.reflection.base_url}"
    if where == ReflectionServer.IN_PROCESS:
        return "an HF engine in rank 0's process behind a second gateway"
    share = (f", {cfg.reflection.gpu_memory_utilization:g} of rank 0's GPU" if cfg.rollout.engine == Engine.VLLM
             else "")
    return f"a `p2o serve --reflection` process of its own ({cfg.rollout.engine} engine{share})"
