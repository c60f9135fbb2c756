"""Per-GPU memory of one RL step, term by term and phase by phase (pure arithmetic, bytes).

Terms (docs/scaling.md gives every formula with its derivation):

- weights, gradients, optimizer states of the pipeline stage a rank holds, sharded by TP
  (norm weights replicated) and, for optimizer states under the distributed optimizer, by DP;
- activations stored for the backward by the micro-batches in flight on that stage (1F1B: the first
  stage holds min(PP, M) of them), per layer per token from the tensors each op saves; full recompute
  keeps only each layer's input plus one layer's working set;
- the LM-head logit buffer of the last stage: naive = [tokens, V/TP] logits in the compute dtype plus
  fp32 log-softmax and its gradient; the fused kernel keeps only per-token statistics;
- the colocated vLLM engine: `vllm_gpu_memory_fraction` x GPU memory while generating; during training
  nothing at sleep levels 1 and 2 (level 1 parks the weights in host memory), everything at level 0.

A phase's peak is the sum of what is resident during that phase; a rank's peak is the largest over its
phases, and a layout's is the worst rank (first or last pipeline stage).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from p2o.plan.layouts import GIB, Cluster, Layout, RunSettings
from p2o.plan.presets import ModelShape

PHASES = ("generation", "old_logprob", "update")


@dataclass
class StageParams:
    """Parameter elements held by one TP rank of one pipeline stage."""

    layers: int
    embedding: int
    head: int
    other: int

    @property
    def total(self) -> int:
        return self.layers + self.embedding + self.head + self.other


@dataclass
class MemoryTerms:
    """Bytes resident on one GPU, by term. `peak_*` are the phase sums (see module docstring)."""

    stage: str
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    vllm_generation: float
    vllm_training: float
    overhead: float
    peak_generation: float
    peak_old_logprob: float
    peak_update: float

    @property
    def peak(self) -> float:
        return max(self.peak_generation, self.peak_old_logprob, self.peak_update)

    @property
    def peak_phase(self) -> str:
        peaks = dict(zip(PHASES, (self.peak_generation, self.peak_old_logprob, self.peak_update)))
        return max(peaks, key=peaks.get)

    def as_gib(self) -> dict[str, float | str]:
        return {k: (v / GIB if isinstance(v, float | int) else v) for k, v in asdict(self).items()} | {
            "peak": self.peak / GIB, "peak_phase": self.peak_phase}


def padded_vocab(shape: ModelShape, tp: int, multiple: int) -> int:
    """Megatron pads V up to a multiple of `multiple` x TP so each TP rank gets an equal slice."""
    m = multiple * tp
    return math.ceil(shape.vocab / m) * m


def layer_params_per_rank(shape: ModelShape, tp: int) -> int:
    """One layer on one TP rank: matmul weights split by TP; RMSNorm (and q/k norm) weights replicated."""
    a, g, d, h = shape.heads, shape.kv_heads, shape.head_dim, shape.hidden
    matmul = h * (a + 2 * g) * d + a * d * h
    replicated = 2 * h + (2 * d if shape.qk_norm else 0)
    if shape.experts:
        return (matmul + shape.experts * 3 * h * shape.moe_ffn) // tp + replicated + h * shape.experts
    return (matmul + 3 * h * shape.ffn) // tp + replicated


def stage_params(shape: ModelShape, layout: Layout, run: RunSettings, stage: int) -> StageParams:
    """Parameters of pipeline stage `stage` (0-based) on one TP rank.

    The first stage holds the embedding [V_pad/TP, h]; the last the final norm and the LM head, which is a
    second copy of the embedding when tied and PP > 1 (Megatron keeps both and all-reduces their grads).
    """
    first, last = stage == 0, stage == layout.pp - 1
    emb = padded_vocab(shape, layout.tp, run.vocab_multiple) * shape.hidden // layout.tp
    head = emb if last and (not shape.tied or layout.pp > 1) else 0
    return StageParams(layers=layer_params_per_rank(shape, layout.tp) * (shape.layers // layout.pp),
                       embedding=emb if first else 0, head=head, other=shape.hidden if last else 0)


def activation_bytes_per_token_layer(shape: ModelShape, run: RunSettings, tp: int, seq: int) -> float:
    """Bytes one token leaves saved for the backward in one layer on one TP rank (no recompute, no SP).

    Saved tensors (b = bytes per element): the two RMSNorm inputs and outputs 4h; the fused QKV output
    (a+2g)d/t (q/k-norm inputs and v); q and k after norm and RoPE (a+g)d/t; the attention output a d/t;
    the SwiGLU fc1 output 2f/t and its product f/t (f = top-k x expert width for MoE). Unfused attention
    additionally repeats k and v to all a heads, 2(a-g)d/t, and stores the softmax probabilities a s/t
    (s = sequence length), which fused attention recomputes.
    """
    a, g, d, h = shape.heads, shape.kv_heads, shape.head_dim, shape.hidden
    f = shape.experts_per_token * shape.moe_ffn if shape.experts else shape.ffn
    elems = 4 * h + ((a + 2 * g) + (a + g) + a) * d / tp + 3 * f / tp
    if not run.flash_attention:
        elems += 2 * (a - g) * d / tp + a * seq / tp
    return elems * run.dtype_bytes


def logits_bytes(shape: ModelShape, run: RunSettings, tp: int, tokens: int, training: bool) -> float:
    """LM-head buffer of `tokens` tokens on one TP rank of the last stage.

    Naive: logits [tokens, V_pad/TP] in the compute dtype plus the fp32 log-softmax that is kept; training
    adds the fp32 gradient of the logits. Fused kernel: per-token fp32 statistics (lse, target logit).
    """
    if run.fused_logprob:
        return tokens * 8.0
    vp = padded_vocab(shape, tp, run.vocab_multiple) / tp
    return tokens * vp * (run.dtype_bytes + 4 + (4 if training else 0))


def stage_memory(shape: ModelShape, cluster: Cluster, layout: Layout, run: RunSettings, stage: int,
                 micro_batches: int) -> MemoryTerms:
    """Memory terms and phase peaks of pipeline stage `stage` with `micro_batches` per DP rank and step."""
    params = stage_params(shape, layout, run, stage).total
    b = run.dtype_bytes
    weights = params * b
    gradients = params * 4.0  # gradients accumulate (and are reduced) in fp32
    opt_per_param = 12.0 if b == 2 else 8.0  # bf16: fp32 master + Adam m, v; fp32: m, v
    optimizer = params * opt_per_param / (layout.dp if run.distributed_optimizer else 1)

    seq = run.seq_tokens
    tokens_mb = seq * run.micro_batch
    layers = shape.layers // layout.pp
    per_layer = activation_bytes_per_token_layer(shape, run, layout.tp, seq) * tokens_mb
    in_flight = min(layout.pp - stage, micro_batches)
    if run.recompute:
        activations = in_flight * layers * tokens_mb * shape.hidden * b + per_layer
    else:
        activations = in_flight * layers * per_layer
    last = stage == layout.pp - 1
    logits_train = logits_bytes(shape, run, layout.tp, tokens_mb, training=True) if last else 0.0
    logits_infer = logits_bytes(shape, run, layout.tp, tokens_mb, training=False) if last else 0.0

    vllm_gen = run.vllm_gpu_memory_fraction * cluster.gpu_mem_bytes
    vllm_train = vllm_gen if (run.colocated and run.vllm_sleep_level == 0) else 0.0
    overhead = run.overhead_gib * GIB
    state = weights + gradients + optimizer
    if run.colocated:
        resident_gen = weights + (0.0 if run.offload_during_generation else gradients + optimizer)
        peak_gen = overhead + resident_gen + vllm_gen
    else:
        peak_gen = overhead + vllm_gen  # the separate generation GPUs
    peak_old = overhead + state + vllm_train + per_layer + logits_infer
    peak_update = overhead + state + vllm_train + activations + logits_train
    name = "first" if stage == 0 else ("last" if last else f"stage{stage}")
    if layout.pp == 1:
        name = "only"
    return MemoryTerms(name, weights, gradients, optimizer, activations, logits_train, vllm_gen, vllm_train,
                       overhead, peak_gen, peak_old, peak_update)


def micro_batches_per_rank(run: RunSettings, layout: Layout) -> int:
    """Micro-batches each DP rank runs per optimizer step (sequences / (DP x micro-batch), at least 1)."""
    return max(1, run.sequences // (layout.dp * run.micro_batch))


def layout_memory(shape: ModelShape, cluster: Cluster, layout: Layout, run: RunSettings) -> MemoryTerms:
    """The worst rank of a layout: the first or last pipeline stage, whichever peaks higher."""
    m = micro_batches_per_rank(run, layout)
    stages = {0, layout.pp - 1}
    return max((stage_memory(shape, cluster, layout, run, s, m) for s in stages), key=lambda t: t.peak)


def vllm_kv_budget_bytes(shape: ModelShape, cluster: Cluster, run: RunSettings, workspace_gib: float = 1.0) -> float:
    """KV-cache bytes per vLLM instance: fraction x memory x vllm_tp minus bf16 weights and a workspace per GPU."""
    per_gpu = run.vllm_gpu_memory_fraction * cluster.gpu_mem_bytes - workspace_gib * GIB
    return per_gpu * run.vllm_tp - shape.num_params * 2.0


def memory_reasons(shape: ModelShape, cluster: Cluster, layout: Layout, run: RunSettings,
                   terms: MemoryTerms) -> list[str]:
    """'out of memory by X GiB in <phase> (<stage> stage)' and 'vLLM cannot hold ...' reasons."""
    reasons = []
    over = terms.peak - cluster.gpu_mem_bytes
    if over > 0:
        reasons.append(f"out of memory by {over / GIB:.1f} GiB in {terms.peak_phase} ({terms.stage} stage)")
    kv = vllm_kv_budget_bytes(shape, cluster, run)
    need = (run.prompt_tokens + run.longest_response) * shape.kv_bytes_per_token_bf16
    if kv < need:
        reasons.append(f"vLLM (TP={run.vllm_tp}, fraction {run.vllm_gpu_memory_fraction}) has "
                       f"{max(kv, 0) / GIB:.1f} GiB of KV cache, less than one sequence needs ({need / GIB:.2f} GiB)")
    return reasons
