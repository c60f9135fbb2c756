"""Per-GPU memory of one RL step, term by term and phase by phase (pure arithmetic, bytes).

Terms (docs/scaling.md gives every formula with its derivation):

- weights, gradients, optimizer states of the pipeline stage a rank holds, sharded by TP
  (norm weights replicated) and, for optimizer states under the distributed optimizer, by DP;
- activations stored for the backward by the micro-batches in flight on that stage (1F1B: the first
  stage holds min(PP, M) of them), per layer per token from the tensors each op saves; full recompute
  keeps only each layer's input plus one layer's working set;
- the LM-head logit buffers of the last stage without the fused kernel (`logits_bytes`: two [tokens, V/TP]
  buffers in the compute dtype for the P2O backend); the fused kernel keeps only per-token statistics;
- without fused weight-gradient accumulation and a fused Adam (the torch fallback, e.g. on CPU): a
  transient fp32 weight gradient while the activations are alive (the LM head's on the last stage, which
  the backward meets first; else the largest layer matrix), two Adam temporaries of the largest weight;
- the colocated vLLM engine: `vllm_gpu_memory_fraction` x GPU memory while generating; during training
  nothing at sleep levels 1 and 2 (level 1 parks the weights in host memory), everything at level 0.
  The trainer does not offload while vLLM generates: its weights, fp32 gradient buffers and optimizer states
  stay on the GPU, so the generation phase holds them and vLLM's share together.

Activations and logits are sized for the longest training row (`RunSettings.peak_seq_tokens`: mean prompt +
longest response), since the micro-batch that holds it sets the peak; step times use the mean length.

A phase's peak is the sum of what is resident during that phase; a rank's peak is the largest over its
phases, and a layout's is the worst rank (first or last pipeline stage).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from p2o.plan.layouts import GIB, Cluster, Layout, RunSettings
from p2o.plan.presets import ModelShape

PHASES = ("generation", "old_logprob", "update")
VLLM_WORKSPACE_GIB = 1.0
"""vLLM's activation / sampling workspace per GPU inside its memory fraction (not KV cache)."""


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
    wgrad_temp: float
    adam_temp: float
    vllm_generation: float
    """vLLM's whole share while generating: fraction x GPU memory (= weights + KV cache + workspace)."""
    vllm_weights: float
    """vLLM's bf16 weights on one GPU (2 x params / vllm_tp)."""
    vllm_kv_cache: float
    """vLLM's KV cache on one GPU while generating."""
    vllm_training: float
    """What vLLM keeps on the GPU during training: everything at sleep level 0, nothing at 1 and 2."""
    host_vllm: float
    """Host memory per GPU vLLM uses while asleep: its weights at sleep level 1, nothing at 0 and 2."""
    overhead: float
    peak_generation: float
    peak_old_logprob: float
    peak_update: float

    @property
    def peak(self) -> float:
        return max(self.peak_generation, self.peak_old_logprob, self.peak_update)

    @property
    def peak_phase(self) -> str:
        peaks = dict(zip(PHASES, (self.peak_generation, self.peak_old_logprob, self.peak_update), strict=True))
        return max(peaks, key=peaks.get)

    def as_gib(self) -> dict[str, float | str]:
        return {k: (v / GIB if isinstance(v, float | int) else v) for k, v in asdict(self).items()} | {
            "peak": self.peak / GIB, "peak_phase": self.peak_phase}


def padded_vocab(shape: ModelShape, tp: int, multiple: int) -> int:
    """V padded up to a multiple of lcm(`multiple`, TP), as the Megatron bridge does, so each TP rank gets an
    equal slice and the padded size is the same for TP 1, 2, 4, 8 when `multiple` is 128."""
    m = math.lcm(multiple, tp)
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

    Elements per token (b bytes each; a, g heads / KV heads of width d, f the SwiGLU width, t = TP):

    fused (TE layers, flash attention): layer input and norm output for attention and MLP 4h; the QKV
    output (a+2g)d/t; q, k after q/k norm and after RoPE 2(a+g)d/t (once without q/k norm); the attention
    output a d/t; fc1 output 2f/t and the SwiGLU product f/t.
    unfused (local spec, eager torch): each RMSNorm keeps its normalised input and output (2 x width), so
    6h with the two residual sums; QKV (a+2g)d/t; q/k norm (if any) 2(a+g)d/t; RoPE outputs (a+g)d/t; k and v
    repeated to all a heads 2ad/t (when g < a); q's layout copy, the rotate-half concat and the context
    3ad/t; softmax probabilities a s/t; fc1 2f/t, silu f/t and the product f/t.
    MoE: f = top-k x expert width (router and permutation buffers not modelled).
    """
    a, g, d, h = shape.heads, shape.kv_heads, shape.head_dim, shape.hidden
    f = shape.experts_per_token * shape.moe_ffn if shape.experts else shape.ffn
    qk = 2 if shape.qk_norm else 1
    if run.flash_attention:
        elems = 4 * h + ((a + 2 * g) + qk * (a + g) + a) * d / tp + 3 * f / tp
    else:
        repeat = 2 * a if g < a else 0
        qk_rope = 3 if shape.qk_norm else 1  # q/k norm: normalised input and output; RoPE: its output
        elems = (6 * h + ((a + 2 * g) + qk_rope * (a + g) + repeat + 3 * a) * d / tp + a * seq / tp
                 + 4 * f / tp)
    return elems * run.dtype_bytes


def logits_bytes(shape: ModelShape, run: RunSettings, tp: int, tokens: int) -> float:
    """LM-head buffers of a micro-batch of `tokens` tokens on one TP rank of the last stage, at their peak
    (the start of the backward, when the LM head's weight gradient is formed).

    gathered (the P2O backend without the fused kernel): the gradient of the [tokens, V_pad/TP] logits,
    scattered back from the response rows, and its contiguous copy for the LM-head backward, both in the
    compute dtype: 2 x b bytes per logit. labels (Megatron's vocab-parallel cross-entropy on every
    position): the fp32 softmax, whose gradient is formed in place, plus the compute-dtype logits when that
    dtype is not fp32. Fused kernel: per-token fp32 statistics (lse, target logit).
    """
    if run.fused_logprob:
        return tokens * 8.0
    vp = padded_vocab(shape, tp, run.vocab_multiple) / tp
    if run.logits_path == "gathered":
        return tokens * vp * 2 * run.dtype_bytes
    return tokens * vp * (4 + (run.dtype_bytes if run.dtype_bytes != 4 else 0))


def largest_weight(shape: ModelShape, tp: int, vocab_rows: int, with_vocab: bool) -> int:
    """Elements of the largest weight matrix on a rank: fc1 or QKV, or the embedding / LM-head slice."""
    a, g, d, h = shape.heads, shape.kv_heads, shape.head_dim, shape.hidden
    f = shape.moe_ffn if shape.experts else shape.ffn
    mats = [h * 2 * f // tp, h * (a + 2 * g) * d // tp]
    if with_vocab:
        mats.append(vocab_rows * h // tp)
    return max(mats)


def stage_memory(shape: ModelShape, cluster: Cluster, layout: Layout, run: RunSettings, stage: int,
                 micro_batches: int) -> MemoryTerms:
    """Memory terms and phase peaks of pipeline stage `stage` with `micro_batches` per DP rank and step."""
    sp = stage_params(shape, layout, run, stage)
    params = sp.total
    b = run.dtype_bytes
    weights = params * b
    gradients = params * 4.0  # gradients accumulate (and are reduced) in fp32
    opt_per_param = 12.0 if b == 2 else 8.0  # bf16: fp32 master + Adam m, v; fp32: m, v
    optimizer = params * opt_per_param / (layout.dp if run.distributed_optimizer else 1)

    seq = run.peak_seq_tokens  # the longest micro-batch sets the peak
    tokens_mb = seq * run.micro_batch
    layers = shape.layers // layout.pp
    per_layer = activation_bytes_per_token_layer(shape, run, layout.tp, seq) * tokens_mb
    in_flight = min(layout.pp - stage, micro_batches)
    # the unfused count keeps each layer's output, so the stage's input (embedding output or the tensor
    # received from the previous stage) is one more [T, h]
    stage_input = 0.0 if run.flash_attention else tokens_mb * shape.hidden * b
    if run.recompute:
        activations = in_flight * layers * tokens_mb * shape.hidden * b + per_layer
    else:
        activations = in_flight * (layers * per_layer + stage_input)
    last = stage == layout.pp - 1
    logits = logits_bytes(shape, run, layout.tp, tokens_mb) if last else 0.0
    if run.fused_wgrad_and_adam:
        wgrad_temp = adam_temp = 0.0
    else:
        vocab = padded_vocab(shape, layout.tp, run.vocab_multiple)
        # the backward meets the LM head first (all activations alive) but the embedding last (all freed)
        wgrad_temp = largest_weight(shape, layout.tp, vocab, with_vocab=last) * 4.0
        adam_temp = 2 * largest_weight(shape, layout.tp, vocab, with_vocab=bool(sp.embedding or sp.head)) * 4.0

    vllm_gen = run.vllm_gpu_memory_fraction * cluster.gpu_mem_bytes
    vllm_weights = shape.num_params * 2.0 / max(1, run.vllm_tp)
    vllm_kv = max(0.0, vllm_gen - vllm_weights - VLLM_WORKSPACE_GIB * GIB)
    vllm_train = vllm_gen if (run.colocated and run.vllm_sleep_level == 0) else 0.0
    host_vllm = vllm_weights if run.vllm_sleep_level == 1 else 0.0
    overhead = run.overhead_gib * GIB
    state = weights + gradients + optimizer
    if run.colocated:
        # the trainer keeps weights, gradient buffers and optimizer states on the GPU while vLLM generates
        peak_gen = overhead + state + vllm_gen
    else:
        peak_gen = overhead + vllm_gen  # the separate generation GPUs
    peak_old = overhead + state + vllm_train + per_layer + logits
    # update: the backward starts at the LM head with every activation alive; the optimizer step runs after it
    peak_update = overhead + state + vllm_train + max(activations + logits + wgrad_temp, adam_temp)
    name = "first" if stage == 0 else ("last" if last else f"stage{stage}")
    if layout.pp == 1:
        name = "only"
    return MemoryTerms(name, weights, gradients, optimizer, activations, logits, wgrad_temp, adam_temp, vllm_gen,
                       vllm_weights, vllm_kv, vllm_train, host_vllm, overhead, peak_gen, peak_old, peak_update)


def micro_batches_per_rank(run: RunSettings, layout: Layout) -> int:
    """Micro-batches each DP rank runs per optimizer step (sequences / (DP x micro-batch), at least 1)."""
    return max(1, run.sequences // (layout.dp * run.micro_batch))


def layout_memory(shape: ModelShape, cluster: Cluster, layout: Layout, run: RunSettings) -> MemoryTerms:
    """The worst rank of a layout: the first or last pipeline stage, whichever peaks higher."""
    m = micro_batches_per_rank(run, layout)
    stages = {0, layout.pp - 1}
    return max((stage_memory(shape, cluster, layout, run, s, m) for s in stages), key=lambda t: t.peak)


def vllm_kv_budget_bytes(shape: ModelShape, cluster: Cluster, run: RunSettings) -> float:
    """KV-cache bytes per vLLM instance: fraction x memory x vllm_tp minus bf16 weights and a workspace per GPU."""
    per_gpu = run.vllm_gpu_memory_fraction * cluster.gpu_mem_bytes - VLLM_WORKSPACE_GIB * GIB
    return per_gpu * run.vllm_tp - shape.num_params * 2.0


def memory_reasons(shape: ModelShape, cluster: Cluster, layout: Layout, run: RunSettings,
                   terms: MemoryTerms) -> list[str]:
    """'out of memory by X GiB in <phase> (<stage> stage)' and 'vLLM cannot hold ...' reasons."""
    reasons = []
    usable = cluster.gpu_mem_bytes * (1 - run.memory_headroom)
    over = terms.peak - usable
    if over > 0:
        reasons.append(f"out of memory by {over / GIB:.1f} GiB in {terms.peak_phase} ({terms.stage} stage; "
                       f"{usable / GIB:.1f} GiB usable)")
    kv = vllm_kv_budget_bytes(shape, cluster, run)
    need = (run.prompt_tokens + run.longest_response) * shape.kv_bytes_per_token_bf16
    if kv < need:
        reasons.append(f"vLLM (TP={run.vllm_tp}, fraction {run.vllm_gpu_memory_fraction}) has "
                       f"{max(kv, 0) / GIB:.1f} GiB of KV cache, less than one sequence needs ({need / GIB:.2f} GiB)")
    return reasons
