"""A plain Megatron-Core GPTModel training step of a `ModelShape`, measured: memory per term and comm bytes.

This is the reference the planner's arithmetic is checked against (docs/scaling.md, "CPU validation"):
the model is built from the shape alone (random weights, local layer spec: RMSNorm, GQA, q/k norm,
SwiGLU, RoPE, no biases), wrapped in Megatron's DDP with fp32 gradient buffers, trained with Megatron's
Adam (optionally the distributed optimizer) through the pipeline schedule. Runs on CPU (gloo, through
`megatron_bridge.cpu_compat`) and on a GPU (NCCL) alike.

One call of `measure_rank` is one rank of a `torchrun` / spawned job; it runs a warm-up step (so the Adam
states exist, as in every step after the first), then measures the next one:

- static bytes: distinct storages of the parameters, the gradient buffers and the optimizer states;
- dynamic peak: the largest sum of live tensors allocated during the step (TensorMemoryTracker);
- activations: live bytes when the decoder of a micro-batch finishes its forward (saved for backward);
- logits: what the final norm, LM head and loss add on top of that (last stage);
- comm bytes per group (tp / pp / dp / other), and the step's wall time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F

from p2o.plan.measure import CommCounter, TensorMemoryTracker, storage_bytes
from p2o.plan.memory import padded_vocab
from p2o.plan.presets import ModelShape

log = logging.getLogger(__name__)


@dataclass
class StepMeasurement:
    """What one rank measured in one training step (bytes, seconds)."""

    rank: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    weights: int
    gradients: int
    optimizer: int
    static: int
    activations: int
    logits: int
    dynamic_peak: int
    peak: int
    comm_tp: int
    comm_pp: int
    comm_dp: int
    comm_other: int
    step_s: float
    cuda_max_allocated: int = 0
    """GPU only: torch.cuda.max_memory_allocated() over the measured step (0 on CPU)."""
    cuda_static: int = 0
    """GPU only: torch.cuda.memory_allocated() before the measured step."""

    def as_dict(self) -> dict:
        return asdict(self)


def build_model(shape: ModelShape, tp: int, pp_rank: int, pp: int, seq: int, vocab_multiple: int = 128):
    """This rank's GPTModel chunk (fp32, CPU-initialised so every TP size sees the same full weights)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(
        num_layers=shape.layers, hidden_size=shape.hidden, ffn_hidden_size=shape.ffn,
        num_attention_heads=shape.heads, num_query_groups=shape.kv_heads, kv_channels=shape.head_dim,
        normalization="RMSNorm", layernorm_epsilon=1e-6, qk_layernorm=shape.qk_norm, gated_linear_unit=True,
        activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        use_cpu_initialization=True, params_dtype=torch.float32, pipeline_dtype=torch.float32,
        gradient_accumulation_fusion=False, bias_activation_fusion=False, masked_softmax_fusion=False,
        apply_rope_fusion=False, bias_dropout_fusion=False, persist_layer_norm=False,
        batch_p2p_comm=False, batch_p2p_sync=False,
    )
    spec = get_gpt_layer_local_spec(qk_layernorm=shape.qk_norm, normalization="RMSNorm")
    model = GPTModel(config, spec, vocab_size=padded_vocab(shape, tp, vocab_multiple), max_sequence_length=seq,
                     position_embedding_type="rope", pre_process=pp_rank == 0, post_process=pp_rank == pp - 1,
                     share_embeddings_and_output_weights=shape.tied)
    return config, model


def _batches(shape: ModelShape, seq: int, micro_batch: int, count: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    for _ in range(count):
        tokens = torch.randint(0, shape.vocab, (micro_batch, seq + 1), generator=g).to(device)
        yield {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}


def _loss_func(num_tokens: int, output: torch.Tensor):
    loss = output.float().sum() / num_tokens
    return loss, {"loss": loss.detach()}


def _forward_step(seq: int, data_iterator, model):
    batch = next(data_iterator) if data_iterator is not None else None
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    position_ids = torch.arange(seq, device=device).unsqueeze(0)
    mask = torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool, device=device), diagonal=1)
    tokens = batch["tokens"] if batch is not None else None
    labels = batch["labels"] if batch is not None else None
    output = model(tokens, position_ids, mask, labels=labels)
    num_tokens = labels.numel() if labels is not None else 1
    return output, partial(_loss_func, num_tokens)


def measure_rank(shape: ModelShape, tp: int, pp: int, seq: int, micro_batch: int, micro_batches: int,
                 distributed_optimizer: bool = False, seed: int = 1234, timed_steps: int = 0) -> StepMeasurement:
    """Build, warm up and measure one training step on this rank (torch.distributed already initialised).

    `timed_steps` > 0 adds that many uninstrumented steps and reports their median time as `step_s` (the
    instrumented step is slower); otherwise `step_s` is the instrumented step's time. On a GPU the model
    and data live on the current CUDA device and `cuda_max_allocated` is torch's own peak for comparison.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_bridge import cpu_compat

    cpu_compat.activate()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    pp_rank = ps.get_pipeline_model_parallel_rank()
    config, model = build_model(shape, tp, pp_rank, pp, seq)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        model.cuda(torch.cuda.current_device())
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=distributed_optimizer)
    model = DistributedDataParallel(config, ddp_config, model)
    config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-4, weight_decay=0.01, clip_grad=1.0, bf16=False,
                        params_dtype=torch.float32, use_distributed_optimizer=distributed_optimizer), [model])
    fwd_bwd = get_forward_backward_func()
    inner = model.module

    def one_step(batch_seed: int) -> None:
        model.zero_grad_buffer()
        optimizer.zero_grad()
        fwd_bwd(forward_step_func=partial(_forward_step, seq),
                data_iterator=_batches(shape, seq, micro_batch, micro_batches, batch_seed),
                model=[model], num_microbatches=micro_batches, seq_length=seq, micro_batch_size=micro_batch,
                forward_only=False)
        optimizer.step()

    one_step(seed)  # warm-up: creates Adam states, like any step after the first

    params = [p for p in inner.parameters()]
    grads = [p.main_grad for p in params if getattr(p, "main_grad", None) is not None]
    opt_states = [t for ch in getattr(optimizer, "chained_optimizers", [optimizer])
                  for st in ch.optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
    weights_b, grads_b, opt_b = storage_bytes(params), storage_bytes(grads), storage_bytes(opt_states)
    static = storage_bytes(params + grads + opt_states)

    tracker = TensorMemoryTracker()
    decoder_marks: list[int] = []
    output_marks: list[int] = []
    hooks = []
    if getattr(inner, "decoder", None) is not None:
        hooks.append(inner.decoder.register_forward_hook(lambda *_: decoder_marks.append(tracker.live_bytes)))
    hooks.append(inner.register_forward_hook(lambda *_: output_marks.append(tracker.live_bytes)))
    groups = {"tp": ps.get_tensor_model_parallel_group(), "pp": ps.get_pipeline_model_parallel_group(),
              "dp": [ps.get_data_parallel_group(), ps.get_data_parallel_group(with_context_parallel=True)]}
    dist.barrier()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_allocated = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    from megatron.core.distributed import param_and_grad_buffer

    with CommCounter(groups, p2p_name="pp", modules=(param_and_grad_buffer,)) as comm, tracker:
        one_step(seed + 1)
    if on_gpu:
        torch.cuda.synchronize()
    step_s = time.perf_counter() - t0
    cuda_peak = torch.cuda.max_memory_allocated() if on_gpu else 0
    cuda_static = base_allocated if on_gpu else 0
    times = []
    for i in range(timed_steps):
        dist.barrier()
        t0 = time.perf_counter()
        one_step(seed + 2 + i)
        if on_gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if times:
        step_s = sorted(times)[len(times) // 2]
    for h in hooks:
        h.remove()
    activations = max(decoder_marks) if decoder_marks else 0
    logits = max(o - d for o, d in zip(output_marks, decoder_marks, strict=False)) if ps.is_pipeline_last_stage() else 0
    known = {"tp", "pp", "dp"}
    m = StepMeasurement(
        rank=dist.get_rank(), tp_rank=ps.get_tensor_model_parallel_rank(), pp_rank=pp_rank,
        dp_rank=ps.get_data_parallel_rank(), weights=weights_b, gradients=grads_b, optimizer=opt_b, static=static,
        activations=activations, logits=logits, dynamic_peak=tracker.peak_bytes, peak=static + tracker.peak_bytes,
        comm_tp=comm.bytes.get("tp", 0), comm_pp=comm.bytes.get("pp", 0), comm_dp=comm.bytes.get("dp", 0),
        comm_other=sum(v for k, v in comm.bytes.items() if k not in known), step_s=step_s,
        cuda_max_allocated=cuda_peak, cuda_static=cuda_static)
    log.debug("rank %d calls %s", m.rank, dict(comm.calls))
    ps.destroy_model_parallel()
    return m


def measure_policy_rank(model_dir: str, tp: int, pp: int, prompt_tokens: int, response_tokens: int, rows: int,
                        micro_batch: int, distributed_optimizer: bool = False, seed: int = 1234) -> StepMeasurement:
    """The same measurement of one `MegatronPolicy.train_step` (the backend P2O trains with), fp32, naive
    log-probs: `rows` rows of `prompt_tokens` + `response_tokens` random tokens, a policy-gradient loss."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_bridge.checkpoint import unwrap
    from megatron_bridge.policy import MegatronPolicy
    from p2o.config import load_config
    from p2o.train.policy import SequenceBatch

    cfg = load_config(None, [f"model.path={model_dir}", f"parallel.tp={tp}", f"parallel.pp={pp}",
                             "parallel.backend=gloo",
                             f"parallel.distributed_optimizer={str(distributed_optimizer).lower()}",
                             f"grpo.micro_batch_size={micro_batch}", "optim.lr=1e-4", "model.dtype=float32",
                             f"train.seed={seed}", "train.use_kernels=false"])
    policy = MegatronPolicy.from_config(cfg, model_dir)
    vocab = policy.provider.vocab_size
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(0, vocab, (n,), generator=g).tolist()  # noqa: E731
    batch = SequenceBatch([rand(prompt_tokens) for _ in range(rows)], [rand(response_tokens) for _ in range(rows)])
    n = batch.num_response_tokens
    advantages = torch.randn(n, generator=g)

    def loss_fn(lp, inputs):
        return -(lp * inputs["adv"]).sum() / n, {}

    policy.train_step(batch, {"adv": advantages}, loss_fn)  # warm-up: Adam states exist afterwards
    inner = [unwrap(c) for c in policy.chunks]
    params = [p for m in inner for p in m.parameters()]
    grads = [p.main_grad for p in params if getattr(p, "main_grad", None) is not None]
    opt_states = [t for ch in getattr(policy.optimizer, "chained_optimizers", [policy.optimizer])
                  for st in ch.optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
    static = storage_bytes(params + grads + opt_states)
    tracker = TensorMemoryTracker()
    decoder_marks: list[int] = []
    output_marks: list[int] = []
    hooks = [m.decoder.register_forward_hook(lambda *_: decoder_marks.append(tracker.live_bytes)) for m in inner]
    hooks += [m.register_forward_hook(lambda *_: output_marks.append(tracker.live_bytes)) for m in inner]
    groups = {"tp": ps.get_tensor_model_parallel_group(), "pp": ps.get_pipeline_model_parallel_group(),
              "dp": [ps.get_data_parallel_group(), ps.get_data_parallel_group(with_context_parallel=True)]}
    from megatron.core.distributed import param_and_grad_buffer

    dist.barrier()
    t0 = time.perf_counter()
    with CommCounter(groups, p2p_name="pp", modules=(param_and_grad_buffer,)) as comm, tracker:
        policy.train_step(batch, {"adv": advantages}, loss_fn)
    step_s = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    last = ps.is_pipeline_last_stage()
    known = {"tp", "pp", "dp"}
    return StepMeasurement(
        rank=dist.get_rank(), tp_rank=ps.get_tensor_model_parallel_rank(), pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(), weights=storage_bytes(params), gradients=storage_bytes(grads),
        optimizer=storage_bytes(opt_states), static=static, activations=max(decoder_marks, default=0),
        logits=tracker.peak_bytes - max(decoder_marks, default=0) if last else 0,
        dynamic_peak=tracker.peak_bytes, peak=static + tracker.peak_bytes,
        comm_tp=comm.bytes.get("tp", 0), comm_pp=comm.bytes.get("pp", 0), comm_dp=comm.bytes.get("dp", 0),
        comm_other=sum(v for k, v in comm.bytes.items() if k not in known), step_s=step_s)
