"""Planner settings from a run config: `p2o plan --config run.yaml` plans the run that config describes.

    shape_name, settings, (tp, pp) = settings_from_config(load_config("configs/scaling/qwen3_8b_p2o.yaml"))

Mapped: model.path -> the model; rollout.prompts_per_step, rollout.n -> prompts and K; rollout.max_new_tokens ->
the longest response (the mean stays the planner's, capped by it); rollout.max_prompt_tokens caps the prompt;
grpo.micro_batch_size; parallel.distributed_optimizer; train.use_kernels -> the fused log-prob kernel;
train.recompute full -> full recompute (selective recomputes core attention, which the fused attention the
planner assumes does not store anyway: planned as none);
model.dtype -> bytes per element; rollout.vllm_*; gepa.budget_metric_calls (0 when p2o.enabled is false);
grpo.skip_old_logprob_pass with one optimizer step per batch -> no separate old-log-prob pass.
Mean lengths are not in a config: the planner's defaults (or --prompt-tokens / --response-tokens) apply.
"""
from __future__ import annotations

from dataclasses import fields

from p2o.algo.grpo import update_is_on_policy
from p2o.plan.layouts import RunSettings


def settings_from_config(cfg) -> tuple[str, dict, tuple[int, int]]:
    """(model path, RunSettings field values, the config's (tp, pp)) of a `p2o.config.RunConfig`."""
    defaults = {f.name: f.default for f in fields(RunSettings)}
    r = cfg.rollout
    response = min(defaults["response_tokens"], r.max_new_tokens)
    values = dict(
        prompts_per_step=r.prompts_per_step, k=r.n, prompt_tokens=min(defaults["prompt_tokens"], r.max_prompt_tokens),
        response_tokens=response, max_response_tokens=r.max_new_tokens, micro_batch=cfg.grpo.micro_batch_size,
        distributed_optimizer=cfg.parallel.distributed_optimizer, fused_logprob=cfg.train.use_kernels,
        recompute=cfg.train.recompute == "full",
        dtype_bytes=2 if cfg.model.dtype == "bfloat16" else 4, vllm_sleep_level=r.vllm_sleep_level,
        vllm_gpu_memory_fraction=r.vllm_gpu_memory_utilization, vllm_tp=r.vllm_tp,
        gepa_calls_per_epoch=cfg.gepa.budget_metric_calls if cfg.p2o.enabled else 0,
        old_logprob_pass=not update_is_on_policy(cfg.grpo),
    )
    return cfg.model.path, values, (cfg.parallel.tp, cfg.parallel.pp)
