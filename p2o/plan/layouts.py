"""The cluster, the run settings, and the TP x PP x DP layouts a model admits on that cluster.

    cluster = Cluster(nodes=2, gpus_per_node=8)                 # H100 80GB SXM defaults
    for layout in candidate_layouts(shape, cluster, RunSettings()):
        layout.tp, layout.pp, layout.dp, layout.reasons         # reasons == [] when it can run

A layout is *structurally* infeasible when TP does not divide the heads / KV heads or the GPUs of a node,
PP does not divide the layers, or the step's sequences cannot be split over DP ranks and micro-batches.
Memory feasibility is decided later (`p2o.plan.memory`), which adds "out of memory by X GiB" reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from p2o.plan.presets import ModelShape, PlanError

GIB = 1024 ** 3


@dataclass(frozen=True)
class Cluster:
    """Homogeneous GPU nodes. Defaults: NVIDIA H100 SXM 80GB nodes of 8 (spec-sheet numbers, not measured)."""

    nodes: int = 1
    """Nodes of the job (trainer and, when colocated, generation)."""
    gpus_per_node: int = 8
    """GPUs per node (a TP group never spans nodes)."""
    gpu_mem_gib: float = 80.0
    """Usable device memory per GPU, GiB."""
    intra_node_gbs: float = 450.0
    """Per-GPU, per-direction bandwidth inside a node (NVLink4), GB/s (1e9 bytes/s)."""
    inter_node_gbs: float = 50.0
    """Per-GPU network bandwidth between nodes (one 400 Gb/s NIC per GPU), GB/s."""
    peak_tflops: float = 989.0
    """Dense bf16 peak, TFLOP/s."""
    hbm_tbs: float = 3.35
    """Device memory bandwidth, TB/s."""
    collective_latency_us: float = 10.0
    """Latency of one small all-reduce inside a node, microseconds (a vLLM TP > 1 decode step pays 2 per layer)."""

    def __post_init__(self) -> None:
        for key in ("nodes", "gpus_per_node"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise PlanError(f"cluster.{key}", getattr(self, key), "a positive integer")
        if self.collective_latency_us < 0:
            raise PlanError("cluster.collective_latency_us", self.collective_latency_us, "a non-negative number")
        for key in ("gpu_mem_gib", "intra_node_gbs", "inter_node_gbs", "peak_tflops", "hbm_tbs"):
            if not getattr(self, key) > 0:
                raise PlanError(f"cluster.{key}", getattr(self, key), "a positive number")

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def gpu_mem_bytes(self) -> float:
        return self.gpu_mem_gib * GIB


@dataclass(frozen=True)
class RunSettings:
    """One RL step: what is generated, how the trainer is configured, and the efficiency assumptions."""

    prompts_per_step: int = 128
    """Prompts per optimizer step (the paper: 128)."""
    k: int = 6
    """Rollouts per prompt (the paper: 6)."""
    prompt_tokens: int = 256
    """Mean prompt length in tokens (templated prompts included)."""
    response_tokens: int = 2048
    """Mean response length in tokens."""
    max_response_tokens: int = 0
    """Longest response of a step, which sets the decode wall time (0: 2 x response_tokens)."""
    colocated: bool = True
    """vLLM shares the training GPUs (sleep/wake); else `generation_gpus` GPUs generate on their own."""
    generation_gpus: int = 0
    """GPUs reserved for generation when not colocated (0: half of the cluster)."""
    micro_batch: int = 1
    """Sequences per training micro-batch."""
    recompute: bool = False
    """Full activation recompute: keep only each layer's input, redo the forward in the backward."""
    distributed_optimizer: bool = True
    """Shard fp32 master weights and Adam moments over DP ranks."""
    fused_logprob: bool = True
    """Fused hidden->log-prob kernel: no [tokens, V/TP] logit buffers."""
    logits_path: str = "gathered"
    """Without the fused kernel, how log-probs are taken: gathered (the P2O backend: logits of every position,
    response rows gathered, their gradient scattered back) | labels (Megatron's own vocab-parallel loss)."""
    vllm_sleep_level: int = 1
    """0: vLLM stays resident during training; 1: weights to host, KV freed; 2: weights and KV freed."""
    vllm_gpu_memory_fraction: float = 0.5
    """Fraction of GPU memory vLLM takes for weights + KV cache + workspace while generating."""
    vllm_tp: int = 0
    """vLLM tensor-parallel size (0: the smallest within 2% of the fastest predicted generation)."""
    dtype_bytes: int = 2
    """Bytes of a training parameter / activation element (2: bf16 mixed precision; 4: fp32)."""
    flash_attention: bool = True
    """Fused kernels (Transformer Engine layers, flash attention): False models Megatron's local layer spec in
    eager torch (unfused RMSNorm, RoPE and softmax attention storing [heads, s, s] probabilities)."""
    fused_wgrad_and_adam: bool = True
    """Weight gradients accumulate straight into the fp32 buffer and Adam is fused (Transformer Engine / Apex);
    False models the torch fallback: a transient fp32 gradient of the largest weight in the backward and two
    Adam temporaries of it in the optimizer step."""
    mfu: float = 0.35
    """Model FLOP utilisation of training forward/backward (6N per token)."""
    prefill_mfu: float = 0.5
    """FLOP utilisation of vLLM prefill."""
    hbm_efficiency: float = 0.7
    """Fraction of HBM bandwidth decode achieves."""
    templated_fraction: float = 0.0
    """Fraction of rollouts generated with a GEPA template (P2O): old log-probs run on x and on x+z for them."""
    old_logprob_pass: bool = True
    """Untemplated rows get a separate old-log-prob forward. False: one optimizer step per batch with
    grpo.skip_old_logprob_pass, where they take it from the update's own forward (templated rows still get both)."""
    gepa_calls_per_epoch: int = 11040
    """GEPA metric calls (one greedy rollout each) per epoch (gepa.budget_metric_calls)."""
    steps_per_epoch: int = 315
    """Optimizer steps per epoch (DeepScaleR: 40,315 problems / 128 prompts), to amortise GEPA per step."""
    gepa_response_tokens: int = 0
    """Response length of a GEPA evaluation rollout (0: response_tokens)."""
    memory_headroom: float = 0.05
    """Fraction of GPU memory left free for allocator fragmentation: a layout fits when its peak is at most
    (1 - memory_headroom) x gpu_mem_gib."""
    overhead_gib: float = 3.0
    """Per-GPU memory that is neither tensors nor caches: CUDA contexts of both processes, NCCL buffers."""
    vocab_multiple: int = 128
    """The vocabulary is padded to a multiple of lcm(vocab_multiple, TP) (Megatron's make_vocab_size_divisible_by)."""

    def __post_init__(self) -> None:
        positive = ("prompts_per_step", "k", "prompt_tokens", "response_tokens", "micro_batch",
                    "steps_per_epoch", "vocab_multiple")
        for key in positive:
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise PlanError(f"run.{key}", getattr(self, key), "a positive integer")
        if self.vllm_sleep_level not in (0, 1, 2):
            raise PlanError("run.vllm_sleep_level", self.vllm_sleep_level, "0, 1 or 2")
        if not 0 < self.vllm_gpu_memory_fraction < 1:
            raise PlanError("run.vllm_gpu_memory_fraction", self.vllm_gpu_memory_fraction, "a number in (0, 1)")
        if self.logits_path not in ("gathered", "labels"):
            raise PlanError("run.logits_path", self.logits_path, "gathered or labels")
        if self.dtype_bytes not in (2, 4):
            raise PlanError("run.dtype_bytes", self.dtype_bytes, "2 (bf16) or 4 (fp32)")
        for key in ("mfu", "prefill_mfu", "hbm_efficiency"):
            if not 0 < getattr(self, key) <= 1:
                raise PlanError(f"run.{key}", getattr(self, key), "a number in (0, 1]")
        if not 0 <= self.templated_fraction <= 1:
            raise PlanError("run.templated_fraction", self.templated_fraction, "a number in [0, 1]")
        if self.max_response_tokens and self.max_response_tokens < self.response_tokens:
            raise PlanError("run.max_response_tokens", self.max_response_tokens,
                            f"0 or at least response_tokens = {self.response_tokens}")
        for key in ("gepa_calls_per_epoch", "gepa_response_tokens", "generation_gpus", "vllm_tp"):
            if getattr(self, key) < 0:
                raise PlanError(f"run.{key}", getattr(self, key), "a non-negative integer")
        if not 0 <= self.memory_headroom < 1:
            raise PlanError("run.memory_headroom", self.memory_headroom, "a number in [0, 1)")
        if self.overhead_gib < 0:
            raise PlanError("run.overhead_gib", self.overhead_gib, "a non-negative number")

    @property
    def sequences(self) -> int:
        """Rollouts per step (prompts x K)."""
        return self.prompts_per_step * self.k

    @property
    def seq_tokens(self) -> int:
        """Tokens of one training row: prompt + response."""
        return self.prompt_tokens + self.response_tokens

    @property
    def longest_response(self) -> int:
        return self.max_response_tokens or 2 * self.response_tokens

    @property
    def peak_seq_tokens(self) -> int:
        """Tokens of the longest training row (mean prompt + longest response): every row of a micro-batch is
        padded to it in the worst case (PP pads every micro-batch of a step to the step's longest row), so it
        sets the activation and logit memory; the mean `seq_tokens` sets the FLOPs."""
        return self.prompt_tokens + self.longest_response

    @property
    def gepa_rollouts_per_step(self) -> float:
        return self.gepa_calls_per_epoch / self.steps_per_epoch


@dataclass
class Layout:
    """Training parallelism: TP x PP x DP = training GPUs. `reasons` lists why it cannot run ([] = feasible)."""

    tp: int
    pp: int
    dp: int
    reasons: list[str] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def feasible(self) -> bool:
        return not self.reasons

    @property
    def name(self) -> str:
        return f"TP{self.tp} PP{self.pp} DP{self.dp}"


def training_gpus(cluster: Cluster, run: RunSettings) -> int:
    """GPUs the trainer uses: all of them when colocated, else the cluster minus the generation GPUs."""
    if run.colocated:
        return cluster.world
    gen = run.generation_gpus or cluster.world // 2
    if not 0 < gen < cluster.world:
        raise PlanError("run.generation_gpus", gen, f"between 1 and {cluster.world - 1} GPUs (of {cluster.world}) "
                        "when not colocated")
    return cluster.world - gen


def generation_gpus(cluster: Cluster, run: RunSettings) -> int:
    return cluster.world if run.colocated else cluster.world - training_gpus(cluster, run)


def _divisors(n: int) -> list[int]:
    return [i for i in range(1, n + 1) if n % i == 0]


def structural_reasons(shape: ModelShape, cluster: Cluster, run: RunSettings, tp: int, pp: int, dp: int) -> list[str]:
    """Why TP x PP x DP cannot run this model at all (independent of memory)."""
    reasons = []
    if shape.heads % tp:
        reasons.append(f"TP={tp} does not divide {shape.heads} attention heads")
    if shape.kv_heads % tp:
        reasons.append(f"TP={tp} does not divide {shape.kv_heads} KV heads")
    if cluster.gpus_per_node % tp:
        reasons.append(f"TP={tp} spans nodes ({cluster.gpus_per_node} GPUs per node)")
    if shape.layers % pp:
        reasons.append(f"PP={pp} does not divide {shape.layers} layers")
    if run.sequences % (dp * run.micro_batch):
        reasons.append(f"{run.sequences} sequences per step do not split into DP={dp} x micro-batch {run.micro_batch}")
    return reasons


def candidate_layouts(shape: ModelShape, cluster: Cluster, run: RunSettings) -> list[Layout]:
    """Every TP x PP x DP factorisation of the training GPUs (TP, PP up to 64), with structural reasons."""
    gpus = training_gpus(cluster, run)
    if run.vllm_tp > gpus and run.colocated:
        raise PlanError("run.vllm_tp", run.vllm_tp, f"at most the {gpus} GPUs of the cluster")
    out = []
    for tp in _divisors(gpus):
        if tp > 64:
            continue
        for pp in _divisors(gpus // tp):
            if pp > 64:
                continue
            dp = gpus // (tp * pp)
            out.append(Layout(tp, pp, dp, structural_reasons(shape, cluster, run, tp, pp, dp)))
    return out
