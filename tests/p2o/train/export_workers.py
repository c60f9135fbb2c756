"""Spawned rank of the HF-export test: the logits of a run's saved Megatron policy (the trained weights, loaded
from the dist checkpoint into a freshly built model), independent of the export code."""
from __future__ import annotations

import torch


def checkpoint_logits_worker(model_dir: str, policy_ckpt: str, tokens: torch.Tensor, tp: int, out_file: str) -> None:
    import torch.distributed as dist
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_bridge.checkpoint import load_checkpoint
    from megatron_bridge.forward import MicroBatch, run_schedule
    from megatron_bridge.parallel import init_parallel, shutdown_parallel
    from megatron_bridge.provider import bridge_and_provider
    from p2o.config import ParallelConfig

    try:
        layout = init_parallel(ParallelConfig(tp=tp))
        _, provider = bridge_and_provider(model_dir)
        chunks = provider.provide(layout)
        load_checkpoint(policy_ckpt, chunks)
        for c in chunks:
            c.eval()
        empty = torch.empty(0, dtype=torch.long)
        mbs = [MicroBatch(tokens, list(range(tokens.shape[0])), (empty, empty), empty, slice(0, 0))]

        def collect(_mb, logits, vocab=provider.vocab_size):
            return gather_from_tensor_model_parallel_region(logits)[..., :vocab].float().cpu()

        with torch.no_grad():
            out = run_schedule(chunks, layout, mbs, tokens.shape[1], collect, forward_only=True,
                               collect_non_loss_data=True)
        if dist.get_rank() == 0:
            torch.save(torch.cat(out), out_file)
        dist.barrier()
    finally:
        shutdown_parallel()
