"""Rank function for the padding tests: per-micro-batch padding (and S padded to a multiple, as under sequence
parallelism) against padding every micro-batch to the batch's longest row, on a real MegatronPolicy."""
from __future__ import annotations

import os

import torch
from mb_workers import make_cfg, pg_loss, save_on_rank0

from p2o.policy_api import SequenceBatch


def ragged_batch() -> tuple[SequenceBatch, dict[str, torch.Tensor]]:
    """Rows whose lengths differ a lot (3..40 tokens), so micro-batches of 2 have very different longest rows."""
    g = torch.Generator().manual_seed(3)
    shapes = [(30, 10), (3, 2), (4, 3), (2, 1), (12, 9), (5, 5), (1, 2)]
    prompts = [torch.randint(0, 400, (p,), generator=g).tolist() for p, _ in shapes]
    responses = [torch.randint(0, 400, (r,), generator=g).tolist() for _, r in shapes]
    batch = SequenceBatch(prompts, responses)
    return batch, {"advantages": torch.randn(batch.num_response_tokens, generator=g)}


def _variant(variant: str):
    """make_micro_batches as the policy calls it, with the padding of `variant`."""
    import megatron_bridge.forward as fwd

    if variant == "per_micro_batch":
        return fwd.make_micro_batches
    if variant == "batch_wide":  # the padding before per-micro-batch padding
        return lambda *a, **k: fwd.make_micro_batches(*a, **{**k, "per_micro_batch": False})
    if variant == "multiple_of_4":  # the bookkeeping of S rounded up for sequence parallelism
        return lambda *a, **k: fwd.make_micro_batches(*a, **{**k, "seq_multiple": 4})
    raise ValueError(variant)


def _grads(policy) -> dict[str, torch.Tensor]:
    """The step's gradients (Megatron DDP's main_grad buffers, kept until the next step zeroes them). Weights after
    an Adam step are no comparison: its first update is lr * sign(g) where g is float noise."""
    return {f"{i}.{n}": p.main_grad.detach().float().clone() for i, c in enumerate(policy.chunks)
            for n, p in c.named_parameters()}


def padding_worker(model_dir: str, out_file: str) -> None:
    """TP = world size. For kernels off/on: log-probs and one train step under each padding variant."""

    import megatron_bridge.policy as pol
    from megatron_bridge.policy import MegatronPolicy

    tp = int(os.environ["WORLD_SIZE"])  # the process group starts with the first policy
    batch, inputs = ragged_batch()
    norm = float(batch.num_response_tokens)
    res: dict = {}
    for kernels in (False, True):
        for variant in ("batch_wide", "per_micro_batch", "multiple_of_4"):
            pol.make_micro_batches = _variant(variant)
            try:
                cfg = make_cfg(tp, 1, use_kernels=kernels)
                policy = MegatronPolicy.from_config(cfg, model_dir)
                seen = [tuple(mb.tokens.shape) for mb in policy._micro_batches(batch)[0]]
                lp = policy.logprobs(batch)
                m = policy.train_step(batch, inputs, lambda lp_, ti: pg_loss(lp_, ti, norm))
                res[(kernels, variant)] = dict(logprobs=lp, loss=m.loss, grad_norm=m.grad_norm,
                                               grads=_grads(policy), shapes=seen)
            finally:
                pol.make_micro_batches = _variant("per_micro_batch")
    res["bf16"] = _bf16_outputs(model_dir, tp, batch)
    save_on_rank0(res, out_file)


def _bf16_outputs(model_dir: str, tp: int, batch: SequenceBatch) -> dict:
    """bf16 weights (Float16Module): what the loss function receives, whether the LM head ran, and log-probs against
    Float16Module's default fp32 upcast of the output."""
    from megatron.core.transformer.module import Float16Module

    from megatron_bridge.checkpoint import unwrap
    from megatron_bridge.forward import run_schedule
    from megatron_bridge.policy import MegatronPolicy

    out: dict = {}
    for kernels in (False, True):
        cfg = make_cfg(tp, 1, use_kernels=kernels)
        cfg.model.dtype = "bfloat16"
        policy = MegatronPolicy.from_config(cfg, model_dir)
        head_calls = []
        hook = unwrap(policy.chunks[-1]).output_layer.register_forward_hook(lambda *_, c=head_calls: c.append(1))
        received = []
        mbs, S = policy._micro_batches(batch)
        with torch.no_grad():
            run_schedule(policy.chunks, policy.layout, mbs, S,
                         lambda mb, o, r=received: r.append((o.dtype, tuple(o.shape))) or o.new_zeros(()),
                         forward_only=True, collect_non_loss_data=True, hidden_only=kernels)
        hook.remove()
        lp = policy.logprobs(batch)
        original = Float16Module.forward
        Float16Module.forward = lambda self, *a, fp32_output=True, f=original, **k: f(self, *a, fp32_output=True, **k)
        try:
            lp_upcast = policy.logprobs(batch)
        finally:
            Float16Module.forward = original
        out[kernels] = dict(received=received, head_calls=len(head_calls), logprobs=lp, logprobs_upcast=lp_upcast,
                            hidden=unwrap(policy.chunks[-1]).config.hidden_size,
                            v_local=unwrap(policy.chunks[-1]).shared_embedding_or_output_weight().shape[0])
    return out
