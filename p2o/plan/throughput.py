"""Step-time model of one synchronous RL step (pure arithmetic, seconds). Predictions, not measurements.

    generation   prefill: 2 N_active FLOPs per prompt token at `prefill_mfu`;
                 decode: waves of at most B concurrent sequences (B from the KV-cache budget); each decode
                 step reads the bf16 weights and the live KV cache once at `hbm_efficiency` x HBM bandwidth
                 (or is FLOP bound, whichever is slower), plus 2 all-reduce latencies per layer when vLLM TP > 1;
                 a wave lasts as long as its longest response.
    old_logprob  forward of every training row: 2 N_active + attention FLOPs per token at `mfu`, times the
                 pipeline bubble (1 + (PP-1)/M); templated P2O rows are scored twice (x and x+z); without
                 `old_logprob_pass` (on-policy update) only the templated rows are scored.
    update       3 x the forward (4 x with full recompute) at `mfu` and the same bubble, plus TP all-reduces,
                 PP activations and the DP gradient reduction, none overlapped (an upper bound).
    weight_sync  the bf16 weights once over NVLink (colocated) or the network (separate generation GPUs).
    gepa         GEPA's evaluation rollouts per step (budget / steps per epoch), greedy, same engine.

tokens/s/GPU = sequences x (prompt + response tokens) / step time / all GPUs (the NeMo-RL convention).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from p2o.plan.layouts import Cluster, Layout, RunSettings, generation_gpus, training_gpus
from p2o.plan.memory import micro_batches_per_rank, vllm_kv_budget_bytes
from p2o.plan.presets import ModelShape


@dataclass
class StepTime:
    """Predicted seconds per phase of one step, and the resulting throughput."""

    generation_s: float
    old_logprob_s: float
    update_s: float
    weight_sync_s: float
    gepa_s: float
    tokens_per_s_per_gpu: float = 0.0

    @property
    def total_s(self) -> float:
        return self.generation_s + self.old_logprob_s + self.update_s + self.weight_sync_s + self.gepa_s

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"total_s": self.total_s}


def attention_flops_per_token(shape: ModelShape, seq: int) -> float:
    """Forward QK^T and PV FLOPs of one token attending to an average causal context of seq/2 tokens."""
    return 2.0 * 2.0 * shape.layers * shape.heads * shape.head_dim * (seq / 2)


def forward_flops(shape: ModelShape, tokens: float, seq: int) -> float:
    """2 N_active per token (all matmuls incl. the LM head) plus causal attention."""
    return tokens * (2.0 * shape.num_active_params + attention_flops_per_token(shape, seq))


def generation_time(shape: ModelShape, cluster: Cluster, run: RunSettings, sequences: float, response: int,
                    longest: int) -> float:
    """Seconds to prefill and decode `sequences` rollouts (mean `response`, longest `longest` tokens)."""
    if sequences <= 0:
        return 0.0
    instances = max(1, generation_gpus(cluster, run) // run.vllm_tp)
    per_instance = math.ceil(sequences / instances)
    tp = run.vllm_tp
    prefill = forward_flops(shape, per_instance * run.prompt_tokens, run.prompt_tokens) / (
        tp * cluster.peak_tflops * 1e12 * run.prefill_mfu)
    kv_tok = shape.kv_bytes_per_token_bf16
    capacity = max(vllm_kv_budget_bytes(shape, cluster, run), kv_tok) / kv_tok
    concurrent = max(1, min(per_instance, int(capacity // (run.prompt_tokens + response))))
    waves = math.ceil(per_instance / concurrent)
    alive = response / longest  # fraction of a wave a sequence is still decoding
    live_kv = concurrent * alive * (run.prompt_tokens + response / 2) * kv_tok
    mem_s = (shape.num_params * 2.0 + live_kv) / tp / (cluster.hbm_tbs * 1e12 * run.hbm_efficiency)
    flop_s = 2.0 * shape.num_active_params * concurrent * alive / (tp * cluster.peak_tflops * 1e12 * run.prefill_mfu)
    tp_latency = 2 * shape.layers * cluster.collective_latency_us * 1e-6 if tp > 1 else 0.0
    return prefill + waves * longest * (max(mem_s, flop_s) + tp_latency)


def resolve_vllm_tp(shape: ModelShape, cluster: Cluster, run: RunSettings, tolerance: float = 0.02) -> RunSettings:
    """`run` with vllm_tp chosen when it is 0: among TP sizes dividing the heads, the KV heads and a node, whose
    instance holds the weights and at least one sequence, the smallest whose predicted generation time is
    within `tolerance` of the fastest. Decode of a step is bound by its longest response times the per-token
    latency, which TP shortens (it splits the weight reads), so large TP wins when sequences per GPU are few."""
    if run.vllm_tp:
        return run
    gen_gpus = generation_gpus(cluster, run)
    need = (run.prompt_tokens + run.longest_response) * shape.kv_bytes_per_token_bf16
    timed = []
    for tp in range(1, cluster.gpus_per_node + 1):
        if cluster.gpus_per_node % tp or shape.heads % tp or shape.kv_heads % tp or gen_gpus % tp:
            continue
        candidate = replace(run, vllm_tp=tp)
        if vllm_kv_budget_bytes(shape, cluster, candidate) < need:
            continue
        timed.append((generation_time(shape, cluster, candidate, run.sequences, run.response_tokens,
                                      run.longest_response), tp, candidate))
    if not timed:
        return replace(run, vllm_tp=1)
    fastest = min(t for t, _, _ in timed)
    return min((c for t, tp, c in timed if t <= fastest * (1 + tolerance)), key=lambda c: c.vllm_tp)


def _bw(cluster: Cluster, group_span_gpus: int) -> float:
    """Bytes/s of a collective over a group whose members lie within `group_span_gpus` consecutive ranks."""
    return (cluster.intra_node_gbs if group_span_gpus <= cluster.gpus_per_node else cluster.inter_node_gbs) * 1e9


def comm_times(shape: ModelShape, cluster: Cluster, layout: Layout, run: RunSettings) -> dict[str, float]:
    """Seconds of TP, PP and DP communication in one update (ring all-reduce moves 2(n-1)/n x payload)."""
    b = run.dtype_bytes
    tokens_rank = run.sequences * run.seq_tokens / layout.dp
    layers = shape.layers // layout.pp
    tp_payload = tokens_rank * shape.hidden * b * 4 * layers  # 2 fwd + 2 bwd all-reduces per layer
    tp_s = tp_payload * 2 * (layout.tp - 1) / layout.tp / _bw(cluster, layout.tp) if layout.tp > 1 else 0.0
    pp_payload = 2 * tokens_rank * shape.hidden * b  # activation forward + gradient backward per boundary
    pp_s = pp_payload / _bw(cluster, layout.tp * layout.pp) if layout.pp > 1 else 0.0
    grads = shape.num_params / (layout.tp * layout.pp) * 4.0
    dp_s = grads * 2 * (layout.dp - 1) / layout.dp / _bw(cluster, layout.gpus) if layout.dp > 1 else 0.0
    return {"tp": tp_s, "pp": pp_s, "dp": dp_s}


def step_time(shape: ModelShape, cluster: Cluster, layout: Layout, run: RunSettings) -> StepTime:
    """Predicted step-time breakdown of `layout` (see the module docstring for every term)."""
    gen = generation_time(shape, cluster, run, run.sequences, run.response_tokens, run.longest_response)
    gepa_resp = run.gepa_response_tokens or run.response_tokens
    gepa = generation_time(shape, cluster, run, run.gepa_rollouts_per_step, gepa_resp, gepa_resp)

    train_gpus = training_gpus(cluster, run)
    flops_per_s = train_gpus * cluster.peak_tflops * 1e12 * run.mfu
    m = micro_batches_per_rank(run, layout)
    bubble = 1.0 + (layout.pp - 1) / m
    tokens = run.sequences * run.seq_tokens
    fwd = forward_flops(shape, tokens, run.seq_tokens)
    passes = (1.0 + run.templated_fraction) if run.old_logprob_pass else 2.0 * run.templated_fraction
    old = fwd * passes / flops_per_s * bubble
    update = fwd * (4.0 if run.recompute else 3.0) / flops_per_s * bubble + sum(comm_times(shape, cluster, layout,
                                                                                            run).values())
    weight_bytes = shape.num_params * 2.0
    sync = weight_bytes / ((cluster.intra_node_gbs if run.colocated else cluster.inter_node_gbs) * 1e9)
    st = StepTime(gen, old, update, sync, gepa)
    st.tokens_per_s_per_gpu = tokens / st.total_s / cluster.world
    return st
