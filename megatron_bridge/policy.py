"""`MegatronPolicy`: the Megatron-Core training backend behind `p2o.policy_api.PolicyBackend`.

Construction (every rank of the job, inside torch.distributed; `init_parallel` creates Megatron's groups from
`cfg.parallel` if they do not exist yet):

    from megatron_bridge.policy import MegatronPolicy
    policy = MegatronPolicy.from_config(cfg, model_dir)        # HF dir with config.json + safetensors
    reference = MegatronScorer.frozen(cfg, model_dir)          # the same weights, frozen (KL reference)
    lp = policy.logprobs(batch)                                # [T] fp32, same on every rank
    lp_x, lp_xz = policy.dual_logprobs(batch_x, batch_xz)      # same responses under two contexts
    metrics = policy.train_step(batch, token_inputs, loss_fn)  # one optimizer step
    for bucket in policy.export_weights(256 << 20): engine.load(bucket)   # collective
    policy.save(dir); policy.load(dir)                         # dist checkpoint, TP/PP may differ on load

What it does:
- model: `GPTProvider.provide` (TE spec on GPU with TE, local spec otherwise), weights streamed from HF
  safetensors; bf16 params (`model.dtype=bfloat16`) are wrapped in `Float16Module` with fp32 master weights in the
  optimizer; every chunk is wrapped in Megatron DDP (grads reduced in fp32).
- optimizer: Megatron's Adam(W) (`get_megatron_optimizer`), `optim.grad_clip` global-norm clipping, optionally the
  distributed optimizer (`parallel.distributed_optimizer`), linear warmup over `optim.warmup_steps` then constant LR.
- data parallelism: every rank receives the whole batch; DP rank r takes the r-th contiguous share of the rows
  (log-probs are all-gathered back into row order, so every rank returns the full [T]).
- step: rows are split into micro-batches of `grpo.micro_batch_size`, each padded to its own longest row (to the
  batch's longest under PP), and run through `get_forward_backward_func` (no PP, 1F1B, or interleaved). The caller's loss is already globally normalised, so micro-batch losses are summed:
  the value handed to Megatron is multiplied by num_microbatches x dp_size, undoing Megatron's averaging over
  micro-batches and data-parallel ranks.
- log-probs: vocab-parallel log-softmax of logits / `rollout.temperature` (the distribution the rollouts were
  sampled from, as verl's actor) with the padded vocabulary masked; with `train.use_kernels`, the final hidden
  states go to `kernels.fused_linear_logprob(hidden[T,H], weight[V_local,H], targets, temperature, tp_group=...,
  vocab_start=...)` instead (no [T, V] logits; padded rows are sliced off the weight). Old log-probs, the
  dual-context pass, the reference's log-probs and the update all use that one temperature.
- KL reference (`grpo.kl_coef > 0`): `MegatronScorer.frozen(cfg, model_dir)` builds the initial weights again in
  the same TP/PP layout and dtype, without DDP or optimizer and with frozen parameters; it only scores tokens
  (`logprobs`), so a resumed run rebuilds it from `model.path`.
- kernels (`train.use_kernels`, backend `train.kernel_backend`), on the last pipeline stage, vocabulary split
  over the TP group:
  * loss: a loss that declares the `p2o.policy_api.HiddenStateLoss` capability (e.g. `p2o.algo.grpo.GRPOLoss`,
    through `kernels.fused_linear_grpo_loss`) is computed from the hidden states and the LM-head rows (one
    autograd node, no separate log-prob pass); any other `LossFn` gets the fused log-probs.
  * dual context: `dual_logprobs` runs both contexts hidden-only and scores them with one
    `kernels.dual_context_logprob` call (each LM-head tile read once for both); without kernels it is two
    `logprobs` calls.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_bridge.checkpoint import load_checkpoint, save_checkpoint, unwrap
from megatron_bridge.export import WeightExport
from megatron_bridge.forward import (
    MicroBatch,
    make_micro_batches,
    run_schedule,
    sequence_multiple,
    vocab_parallel_logprobs,
)
from megatron_bridge.hf_io import read_config
from megatron_bridge.parallel import ParallelLayout, init_parallel
from megatron_bridge.provider import GPTProvider, ModelBridge, bridge_for
from megatron_bridge.weights import load_hf_checkpoint
from p2o.policy_api import HiddenStateLoss, LossFn, SequenceBatch, StepMetrics

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def warmup_lr(step: int, peak_lr: float, warmup_steps: int) -> float:
    """LR of optimizer step `step` (0-based): linear warmup (peak/w, 2 peak/w, ..., peak), then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return peak_lr
    return peak_lr * (step + 1) / warmup_steps


def recompute_settings(mode: str) -> dict:
    """`TransformerConfig` fields for `train.recompute` (none | selective | full)."""
    if mode == "none":
        return {}
    if mode == "selective":
        return dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    if mode == "full":
        return dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    raise ValueError(f"train.recompute: got {mode!r}; expected none, selective or full")


def _load_model(cfg, model_dir: str | Path, layout: ParallelLayout) -> tuple[ModelBridge, GPTProvider, object, list]:
    """(bridge, provider, TransformerConfig, this rank's chunks) with the HF weights of `model_dir` loaded;
    bf16 chunks are wrapped in `Float16Module` (bf16 compute, fp32 outputs)."""
    from megatron.core.transformer.module import Float16Module

    hf = read_config(model_dir)
    bridge = bridge_for(hf, source=str(Path(model_dir) / "config.json"))
    dtype = _DTYPES[cfg.model.dtype]
    provider = bridge.provider(hf).with_dtype(dtype)
    provider.make_vocab_size_divisible_by = cfg.model.make_vocab_size_divisible_by
    config = provider.transformer_config(layout, **recompute_settings(cfg.train.recompute))
    chunks = provider.provide(layout, config)
    load_hf_checkpoint(chunks, bridge, provider, model_dir, layout)
    if dtype == torch.bfloat16:
        chunks = [Float16Module(config, c) for c in chunks]
    return bridge, provider, config, chunks


def _scoring_settings(cfg) -> dict:
    """`MegatronScorer` keywords from a `RunConfig`: log-probs at the rollout temperature."""
    return dict(micro_batch_size=cfg.grpo.micro_batch_size, temperature=cfg.rollout.temperature,
                use_kernels=cfg.train.use_kernels, kernel_backend=cfg.train.kernel_backend)


class MegatronScorer:
    """Log-probs of a Megatron-Core model's tokens under softmax(logits / `temperature`), without an optimizer.

    The base of `MegatronPolicy`; built by `frozen` it is the KL reference policy. Every method is collective over
    the job's ranks.
    """

    def __init__(self, layout: ParallelLayout, bridge: ModelBridge, provider: GPTProvider, chunks: list, *,
                 micro_batch_size: int, temperature: float = 1.0, use_kernels: bool = False,
                 kernel_backend: str = "auto"):
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive finite number (rollout.temperature); got {temperature}")
        self.layout, self.bridge, self.provider, self.chunks = layout, bridge, provider, chunks
        self.micro_batch_size, self.temperature = micro_batch_size, temperature
        self.use_kernels, self.kernel_backend = use_kernels, kernel_backend

    @classmethod
    def frozen(cls, cfg, model_dir: str | Path, layout: ParallelLayout | None = None) -> MegatronScorer:
        """The model in `model_dir` in the same layout, dtype, temperature and kernels as `MegatronPolicy.from_config`
        builds it, with frozen parameters and no DDP / optimizer (the KL reference: the initial weights).
        Building it leaves the global torch RNG streams as they were."""
        layout = layout or init_parallel(cfg.parallel, seed=cfg.train.seed)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            bridge, provider, _, chunks = _load_model(cfg, model_dir, layout)
        for c in chunks:
            c.requires_grad_(False)
            c.eval()
        return cls(layout, bridge, provider, chunks, **_scoring_settings(cfg))

    @property
    def _min_micro_batches(self) -> int:
        return self.layout.pp if self.layout.vpp > 1 else 1

    def _micro_batches(self, batch: SequenceBatch) -> tuple[list[MicroBatch], int]:
        """Micro-batches padded each to its own longest row (one length for the batch under PP), S a multiple of
        TP under sequence parallelism (see megatron_bridge.forward)."""
        sp = bool(getattr(unwrap(self.chunks[0]).config, "sequence_parallel", False))
        return make_micro_batches(batch, self.micro_batch_size, self.layout.device,
                                  min_micro_batches=self._min_micro_batches,
                                  seq_multiple=sequence_multiple(self.layout.tp, sp), per_micro_batch=self.layout.pp == 1)

    # ------------------------------------------------------------------ log-probs
    def _lm_head(self) -> tuple[torch.Tensor, dict]:
        """(this rank's LM-head rows [V_kept, H] without padded-vocabulary rows, the kernels' TP keywords)."""
        weight = unwrap(self.chunks[-1]).shared_embedding_or_output_weight()
        v_local = weight.shape[0]
        start = self.layout.tp_rank * v_local
        keep = max(0, min(v_local, self.provider.vocab_size - start))
        return weight[:keep], dict(tp_group=self.layout.tp_group if self.layout.tp > 1 else None,
                                   vocab_start=start, backend=self.kernel_backend)

    @staticmethod
    def _response_hidden(mb: MicroBatch, output: torch.Tensor) -> torch.Tensor:
        """[T_mb, H] final hidden states at mb's scoring positions; output: [S, B, H] (a `hidden_only` forward)."""
        rows, pos = mb.score_index
        return output[pos, rows]

    def _response_logprobs(self, mb: MicroBatch, output: torch.Tensor) -> torch.Tensor:
        """[T_mb] fp32 log-probs (at `temperature`) of mb's response tokens from the last stage's output."""
        if self.use_kernels:
            from kernels import fused_linear_logprob

            weight, tp_kw = self._lm_head()
            return fused_linear_logprob(self._response_hidden(mb, output).to(weight.dtype), weight, mb.targets,
                                        temperature=self.temperature, **tp_kw)
        rows, pos = mb.score_index
        return vocab_parallel_logprobs(output[rows, pos], mb.targets, self.provider.vocab_size, self.layout.tp_rank,
                                       temperature=self.temperature)

    def _broadcast_from_last_stage(self, t: torch.Tensor) -> torch.Tensor:
        if self.layout.pp > 1:
            dist.broadcast(t, src=self.layout.pp_global_rank(self.layout.pp - 1), group=self.layout.pp_group)
        return t

    def _dp_share(self, batch: SequenceBatch) -> tuple[SequenceBatch, slice]:
        """This data-parallel rank's contiguous share of the rows, and its range in the packed token tensors."""
        if self.layout.dp == 1:
            return batch, slice(0, batch.num_response_tokens)
        n, dp, r = len(batch), self.layout.dp, self.layout.dp_rank
        start, stop = r * n // dp, (r + 1) * n // dp
        offsets = [0]
        for resp in batch.response_ids:
            offsets.append(offsets[-1] + len(resp))
        return batch.rows(list(range(start, stop))), slice(offsets[start], offsets[stop])

    def _gather_dp(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Packed [total] from every DP rank's contiguous piece (row order = DP rank order)."""
        if self.layout.dp == 1:
            return local
        sizes = [torch.zeros(1, dtype=torch.long, device=self.layout.device) for _ in range(self.layout.dp)]
        dist.all_gather(sizes, torch.tensor([local.numel()], device=self.layout.device), group=self.layout.dp_group)
        width = max(int(s.item()) for s in sizes)
        padded = torch.zeros(width, dtype=local.dtype, device=local.device)
        padded[: local.numel()] = local
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded, group=self.layout.dp_group)
        out = torch.cat([p[: int(s.item())] for p, s in zip(pieces, sizes, strict=True)])
        assert out.numel() == total
        return out

    def _forward_only(self, batch: SequenceBatch, score) -> list:
        """`score(mb, output)` of every micro-batch of `batch` in eval mode without grad (last stage; [] elsewhere)."""
        mbs, seq_len = self._micro_batches(batch)
        modes = [c.training for c in self.chunks]
        for c in self.chunks:
            c.eval()
        try:
            with torch.no_grad():
                return run_schedule(self.chunks, self.layout, mbs, seq_len, score, forward_only=True,
                                    collect_non_loss_data=True, hidden_only=self.use_kernels)
        finally:
            for c, mode in zip(self.chunks, modes, strict=True):
                c.train(mode)

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """Packed fp32 log-probs [T] of the response tokens at `temperature` (no grad); identical on every rank."""
        full_tokens = batch.num_response_tokens
        batch, _ = self._dp_share(batch)
        outs = self._forward_only(batch, lambda mb, out: self._response_logprobs(mb, out).float())
        local = torch.empty(batch.num_response_tokens, dtype=torch.float32, device=self.layout.device)
        if self.layout.is_last_stage:
            local.copy_(torch.cat(outs) if outs else local[:0])
        return self._gather_dp(self._broadcast_from_last_stage(local), full_tokens).cpu()

    def dual_logprobs(self, batch_x: SequenceBatch, batch_xz: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed fp32 log-probs ([T], [T]) of the same responses under two contexts (no grad; every rank).

        With kernels: hidden-only forwards of both contexts, then one `dual_context_logprob` call over all of
        this rank's tokens (holds 2 x [T, H] hidden states, never [T, V] logits). Otherwise two `logprobs` calls.
        """
        if batch_x.response_ids != batch_xz.response_ids:
            raise ValueError("dual_logprobs: batch_x and batch_xz must hold the same response_ids (row for row); "
                             f"got {len(batch_x)} and {len(batch_xz)} rows with different responses")
        if not self.use_kernels:
            return self.logprobs(batch_x), self.logprobs(batch_xz)
        from kernels import dual_context_logprob

        full_tokens = batch_x.num_response_tokens
        local_x, _ = self._dp_share(batch_x)
        local_xz, _ = self._dp_share(batch_xz)
        hidden = [self._forward_only(b, self._response_hidden) for b in (local_x, local_xz)]
        local = torch.empty(local_x.num_response_tokens, 2, dtype=torch.float32, device=self.layout.device)
        if self.layout.is_last_stage and local.numel():
            weight, tp_kw = self._lm_head()
            h_x, h_xz = (torch.cat(h).to(weight.dtype) for h in hidden)
            targets = torch.tensor([t for r in local_x.response_ids for t in r], dtype=torch.long,
                                   device=self.layout.device)
            with torch.no_grad():
                out = dual_context_logprob(h_x, h_xz, weight, targets, temperature=self.temperature, **tp_kw)
            local.copy_(torch.stack([out.logp_x, out.logp_xz], dim=1))
        pairs = self._gather_dp(self._broadcast_from_last_stage(local).flatten(), 2 * full_tokens).view(-1, 2)
        return pairs[:, 0].cpu(), pairs[:, 1].cpu()



class MegatronPolicy(MegatronScorer):
    """A trainable policy on Megatron-Core; every method is collective over the job's ranks."""

    def __init__(self, layout: ParallelLayout, bridge: ModelBridge, provider: GPTProvider, chunks: list, optimizer,
                 *, micro_batch_size: int, peak_lr: float, warmup_steps: int, temperature: float = 1.0,
                 use_kernels: bool = False, kernel_backend: str = "auto"):
        super().__init__(layout, bridge, provider, chunks, micro_batch_size=micro_batch_size, temperature=temperature,
                         use_kernels=use_kernels, kernel_backend=kernel_backend)
        self.optimizer = optimizer
        self.peak_lr, self.warmup_steps = peak_lr, warmup_steps
        self.step = 0
        """Optimizer steps taken (restored by `load`)."""
        self.version = 0
        """Weight version: increases with every optimizer step (the export stream carries it)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg, model_dir: str | Path, layout: ParallelLayout | None = None) -> MegatronPolicy:
        """Build from a `RunConfig` and an HF model directory; creates the parallel layout unless given."""
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        if cfg.train.use_kernels and cfg.parallel.sequence_parallel:
            raise ValueError("train.use_kernels: not supported with parallel.sequence_parallel=true (the kernels "
                             "take the full sequence's hidden states); set one of them to false")
        layout = layout or init_parallel(cfg.parallel, seed=cfg.train.seed)
        bridge, provider, config, chunks = _load_model(cfg, model_dir, layout)
        dtype = _DTYPES[cfg.model.dtype]
        use_dist_opt = cfg.parallel.distributed_optimizer
        ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                use_distributed_optimizer=use_dist_opt)
        chunks = [DistributedDataParallel(config, ddp_cfg, c, disable_bucketing=i > 0) for i, c in enumerate(chunks)]
        config.finalize_model_grads_func = finalize_model_grads
        config.no_sync_func = [c.no_sync for c in chunks] if len(chunks) > 1 else chunks[0].no_sync
        o = cfg.optim
        opt_cfg = OptimizerConfig(optimizer="adam", lr=o.lr, weight_decay=o.weight_decay, adam_beta1=o.beta1,
                                  adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.grad_clip,
                                  bf16=dtype == torch.bfloat16, params_dtype=dtype,
                                  use_distributed_optimizer=use_dist_opt)
        optimizer = get_megatron_optimizer(opt_cfg, chunks)
        return cls(layout, bridge, provider, chunks, optimizer, peak_lr=o.lr, warmup_steps=o.warmup_steps,
                   **_scoring_settings(cfg))

    # ------------------------------------------------------------------ training
    def train_step(self, batch: SequenceBatch, token_inputs: dict[str, torch.Tensor], loss_fn: LossFn) -> StepMetrics:
        """One optimizer step over `batch` with the caller's (globally normalised) loss; see module docstring."""
        n_tokens = batch.num_response_tokens
        for key, value in token_inputs.items():
            if value.shape[:1] != (n_tokens,):
                raise ValueError(f"token_inputs['{key}'] has shape {tuple(value.shape)}; expected [{n_tokens}] "
                                 "(one entry per response token of the batch, packed in row order)")
        device = self.layout.device
        batch, share = self._dp_share(batch)
        token_inputs = {k: v[share].to(device) for k, v in token_inputs.items()}
        mbs, seq_len = self._micro_batches(batch)
        scale = len(mbs) * self.layout.dp

        from_hidden = self.use_kernels and isinstance(loss_fn, HiddenStateLoss)

        def loss_func(mb: MicroBatch, output: torch.Tensor):
            inputs = {k: v[mb.token_slice] for k, v in token_inputs.items()}
            if from_hidden:
                weight, tp_kw = self._lm_head()
                loss, stats = loss_fn.loss_from_hidden(self._response_hidden(mb, output).to(weight.dtype), weight,
                                                       mb.targets, inputs, temperature=self.temperature, **tp_kw)
            else:
                loss, stats = loss_fn(self._response_logprobs(mb, output), inputs)
            return loss * scale, {"loss": float(loss.detach()), **{k: float(v) for k, v in stats.items()}}

        lr = warmup_lr(self.step, self.peak_lr, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for c in self.chunks:
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = run_schedule(self.chunks, self.layout, mbs, seq_len, loss_func, forward_only=False,
                               hidden_only=self.use_kernels)
        _, grad_norm, _ = self.optimizer.step()
        self.step += 1
        self.version += 1
        return self._step_metrics(reports, grad_norm, lr, n_tokens)

    def _step_metrics(self, reports: list, grad_norm, lr: float, n_tokens: int) -> StepMetrics:
        """Sum the micro-batch losses (and DP ranks), average the extras; broadcast from the last stage."""
        summary = [None]
        if self.layout.is_last_stage:
            keys = sorted({k for r in reports for k in r if k != "loss"})
            extra = {k: sum(r.get(k, 0.0) for r in reports) / max(len(reports), 1) for k in keys}
            summary = [{"loss": sum(r["loss"] for r in reports), "extra": extra}]
        if self.layout.pp > 1:
            dist.broadcast_object_list(summary, src=self.layout.pp_global_rank(self.layout.pp - 1),
                                       group=self.layout.pp_group)
        loss = summary[0]["loss"]
        if self.layout.dp > 1:
            t = torch.tensor([loss], dtype=torch.float64, device=self.layout.device)
            dist.all_reduce(t, group=self.layout.dp_group)
            loss = float(t.item())
        return StepMetrics(loss=loss, grad_norm=float(grad_norm or 0.0), lr=lr, num_tokens=n_tokens,
                           extra=summary[0]["extra"])

    # ------------------------------------------------------------------ weights and checkpoints
    def export_weights(self, bucket_bytes: int) -> WeightExport:
        """HF-named full tensors in buckets (collective; every rank receives every tensor), tagged with `version`."""
        return WeightExport([unwrap(c) for c in self.chunks], self.bridge, self.provider, self.layout, bucket_bytes,
                            version=self.version)

    def save(self, path: str) -> None:
        save_checkpoint(path, self.chunks, self.optimizer, extra={"step": self.step, "version": self.version})

    def load(self, path: str) -> None:
        extra = load_checkpoint(path, self.chunks, self.optimizer)
        self.step = int(extra.get("step", 0))
        self.version = int(extra.get("version", self.step))
