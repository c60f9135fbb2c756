"""The parts of a training run, built once from the config (`build_runtime`) and closed at the end.

The trainer (`p2o.train.loop.Trainer`) holds each part as a typed field; tests replace any of them:

    control    DistributedControl  rank identity, barriers and object broadcasts on the gloo control group
    policy     PolicyBackend       this rank's part of the Megatron policy (every rank)
    reference  the frozen initial policy when grpo.kl_coef > 0 (KL reference; rebuilt from model.path on resume)
    rollout    RolloutService      generation phases, verifier, weight sync, plain-prompt evaluation
    gepa       GEPARound           the GEPA service's jobs (rank 0, P2O on; None elsewhere)
    metrics    MetricsSink         metrics.jsonl / TensorBoard / W&B, progress bars, GPU samples (rank 0 writes)

Rank 0 owns the rollout side: the scheduler and the OpenAI-compatible gateway in front of the policy's engine
(which the GEPA service uses to score candidates with the current policy), the frozen initial model behind a
second gateway for Self-Ref reflection (`p2o.rollout.reflection_server`), the verifier, the GEPA client (and, when
`gepa.service_url` is empty, the GEPA service as a child process on 127.0.0.1), and the metrics sinks.
With `rollout.engine=vllm` every rank builds an engine (vLLM's `external_launcher` needs every rank to build it
together); see `p2o.train.rollout_service`.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from p2o.config import RunConfig, to_dict, to_yaml
from p2o.data import load_eval_problems, load_train_problems
from p2o.data.problem import Problem
from p2o.limits import check_prompt_lengths, resolve_limits
from p2o.models import resolve_model_dir
from p2o.train.distributed_control import DistributedControl, ProcessGroupControl
from p2o.train.gepa_round import GEPARound, ServiceGEPARound, endpoint_args, start_gepa_service
from p2o.train.metrics_sink import MetricsSink, RunMetrics
from p2o.train.policy import PolicyBackend
from p2o.train.rollout_service import EngineRolloutService, RolloutService

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What `build_runtime` builds for a `Trainer`; `close` releases it in reverse order of construction."""

    run_dir: Path
    control: DistributedControl
    policy: PolicyBackend
    rollout: RolloutService
    metrics: MetricsSink
    train_problems: list[Problem]
    gepa: GEPARound | None = None
    reference: Any = None
    model_dir: Path | None = None
    """The resolved initial model's HF directory (config and tokenizer of the run-end HF export)."""
    """The frozen initial policy when grpo.kl_coef > 0 (`logprobs(batch)` like the policy's)."""
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.closers):
            try:
                fn()
            except Exception as e:  # closing must not mask the run's own error
                log.warning("while closing: %s", e)


def advertised_url(url: str) -> str:
    """A URL other nodes can use: a wildcard bind address (0.0.0.0, ::) is replaced by this host's name."""
    for wildcard in ("0.0.0.0", "[::]", "::"):
        prefix = f"http://{wildcard}:"
        if url.startswith(prefix):
            return f"http://{socket.gethostname()}:" + url[len(prefix):]
    return url


def build_runtime(cfg: RunConfig) -> Runtime:
    """Collective (every rank): the process groups, the policy (and reference), the engines and, on rank 0, the
    gateways, verifier, metrics and the GEPA round."""
    from transformers import AutoTokenizer

    from megatron_bridge.parallel import init_parallel
    from megatron_bridge.policy import MegatronPolicy, MegatronScorer

    layout = init_parallel(cfg.parallel, seed=cfg.train.seed)
    control = ProcessGroupControl.create(timedelta(minutes=cfg.parallel.control_timeout_min))
    torch.manual_seed(cfg.train.seed)
    run_dir = Path(cfg.logging.run_dir)
    if control.is_rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        model_dir = resolve_model_dir(cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed)
    control.barrier()  # the others wait (on the control group) while rank 0 fetches or converts the model
    model_dir = resolve_model_dir(cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_problems, eval_problems = load_train_problems(cfg.data), load_eval_problems(cfg.data)
    resolve_limits(cfg, model_dir)  # the limits again, against the resolved model, before anything heavy
    check_prompt_lengths(cfg, tokenizer, train_problems, "data.source")
    check_prompt_lengths(cfg, tokenizer, eval_problems, "data.eval_source")
    policy = MegatronPolicy.from_config(cfg, model_dir, layout)
    reference = MegatronScorer.frozen(cfg, model_dir, layout) if cfg.grpo.kl_coef > 0 else None
    closers: list[Callable[[], Any]] = [lambda: policy.close() if hasattr(policy, "close") else None]
    rollout = EngineRolloutService(cfg, run_dir, control, policy, tokenizer, eval_problems)
    metrics = RunMetrics(cfg, run_dir)
    rt = Runtime(run_dir=run_dir, control=control, policy=policy, rollout=rollout, metrics=metrics, model_dir=model_dir,
                 train_problems=train_problems, reference=reference, closers=closers)
    if cfg.rollout.engine == "vllm":
        _build_engines(cfg, control, rollout, model_dir)
    if control.is_rank0:
        _build_rank0(cfg, rt, rollout, metrics, model_dir)
    return rt


def _build_engines(cfg: RunConfig, control: DistributedControl, rollout: EngineRolloutService, model_dir: Path) -> None:
    """Collective: every rank builds its vLLM engine (together, as vLLM's external launcher requires); with several
    ranks, rank 0's becomes a `CollectiveEngine` over all of them (`p2o.rollout.phases`)."""
    from p2o.rollout.factory import build_engine
    from p2o.rollout.phases import CollectiveEngine, PhaseGroup

    if control.world_size % cfg.rollout.vllm_tp:
        raise ValueError(f"rollout.vllm_tp: got {cfg.rollout.vllm_tp}; expected a divisor of the number of ranks "
                         f"({control.world_size})")
    rollout.engine = build_engine(cfg.rollout, cfg.model, model_dir)
    if control.world_size > 1:
        rollout.phases = PhaseGroup(cfg.rollout.vllm_tp, timedelta(minutes=cfg.parallel.control_timeout_min))
        if control.is_rank0:
            rollout.engine = CollectiveEngine(rollout.engine, rollout.phases, seed=cfg.rollout.seed)
    log.info("rank %d: vLLM engine ready (%d replica(s) of vllm_tp=%d)", control.rank,
             control.world_size // cfg.rollout.vllm_tp, cfg.rollout.vllm_tp)


def _build_rank0(cfg: RunConfig, rt: Runtime, rollout: EngineRolloutService, metrics: RunMetrics,
                 model_dir: Path) -> None:
    from p2o.reward import Verifier
    from p2o.rollout.factory import build_engine, build_gateway
    from p2o.telemetry.gpu import GPUSampler
    from p2o.telemetry.metrics import MetricsLogger

    (rt.run_dir / "config.yaml").write_text(to_yaml(cfg))
    metrics.logger = MetricsLogger(rt.run_dir, cfg.logging.tensorboard, cfg.logging.wandb, run_name=rt.run_dir.name,
                                   config=to_dict(cfg))
    rt.closers.append(metrics.close)
    metrics.gpu_sampler = GPUSampler()
    rollout.verifier = Verifier(cfg.reward)
    rt.closers.append(rollout.verifier.close)
    limits = resolve_limits(cfg, model_dir)
    if rollout.engine is None:
        rollout.engine = build_engine(cfg.rollout, cfg.model, model_dir)
    rollout.gateway = build_gateway(rollout.engine, rollout.tokenizer, cfg.rollout, "policy", cfg.model.thinking,
                                    limits.policy_gateway).start()
    rt.closers.append(rollout.gateway.stop)
    rollout.gateway.scheduler.pause()
    if not cfg.p2o.enabled:
        return
    reflection_url = None
    if cfg.reflection.mode == "self":  # Self-Ref: the frozen initial model, where reflection.server says
        from p2o.rollout.reflection_server import start_reflection_server

        reflection_gateway = start_reflection_server(cfg, limits, rollout.tokenizer, model_dir, rt.run_dir)
        if reflection_gateway is not None:  # None: external, at reflection.base_url
            rt.closers.append(reflection_gateway.stop)
            reflection_url = advertised_url(reflection_gateway.url)
    from p2o.gepa.service.client import GEPAClient

    token = os.environ.get(cfg.gepa.token_env)
    if not token:
        token = secrets.token_hex(16)
        os.environ[cfg.gepa.token_env] = token  # the child service reads the same variable
    policy_url = advertised_url(rollout.gateway.url)
    url = cfg.gepa.service_url
    if not url:
        process, url = start_gepa_service(rt.run_dir, cfg.gepa.token_env,
                                          endpoint_args(cfg, policy_url, reflection_url))
        rt.closers.append(lambda: (process.terminate(), process.wait(timeout=30)))
    rt.gepa = ServiceGEPARound(cfg, rt.run_dir, GEPAClient(url, token), policy_url, reflection_url)
