"""HF transformers vs Megatron-Core logit parity for one model under a TP x PP layout.

    (report,) = check_parity(["tiny.json"], tp=2, pp=2)  # spawns tp*pp ranks itself
    report.ok()                                          # rel_diff <= 1e-4 (fp32)

The HF model is loaded (or random-initialised from a config.json with `seed`, via `p2o.models`), runs a
seeded token batch in this process; the ranks build the Megatron model from the same safetensors, run the
batch through the pipeline schedule, gather TP logits and return them through a file. Differences are
computed over the real vocabulary: max |a - b| and max |a - b| / max |hf logits|.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_bridge.launch import spawn

log = logging.getLogger(__name__)

FP32_REL_TOL = 1e-4


@dataclass
class ParityReport:
    model_dir: str
    tp: int
    pp: int
    max_abs_diff: float
    rel_diff: float
    max_abs_logit: float
    shape: tuple[int, ...]

    def ok(self, rel_tol: float = FP32_REL_TOL) -> bool:
        return self.rel_diff <= rel_tol


def hf_logits(model_dir: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def megatron_logits_worker(jobs: list[tuple[str, torch.Tensor, int, int, int]], out_file: str) -> None:
    """One rank: for each (model_dir, tokens [B, S], tp, pp, vpp) build + load the Megatron model, run the tokens
    through the pipeline schedule; rank 0 writes the full logits [B, S, V] of every job to `out_file`."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_bridge.forward import MicroBatch, run_schedule
    from megatron_bridge.hf_io import read_config
    from megatron_bridge.parallel import init_parallel, shutdown_parallel
    from megatron_bridge.provider import bridge_for
    from megatron_bridge.weights import load_hf_checkpoint
    from p2o.config import ParallelConfig

    results = []
    try:
        for model_dir, tokens, tp, pp, vpp in jobs:
            layout = init_parallel(ParallelConfig(tp=tp, pp=pp, vpp=vpp))
            hf = read_config(model_dir)
            bridge = bridge_for(hf)
            provider = bridge.provider(hf)
            chunks = provider.provide(layout)
            load_hf_checkpoint(chunks, bridge, provider, model_dir, layout)
            for c in chunks:
                c.eval()
            tokens = tokens.to(layout.device)
            empty = torch.empty(0, dtype=torch.long)
            # The interleaved schedule needs at least pp micro-batches: one row each then.
            rows_per_mb = 1 if vpp > 1 else tokens.shape[0]
            mbs = [MicroBatch(tokens[i:i + rows_per_mb], list(range(i, i + rows_per_mb)), (empty, empty), empty,
                              slice(0, 0)) for i in range(0, tokens.shape[0], rows_per_mb)]

            def collect(_mb, logits, vocab=provider.vocab_size):
                return gather_from_tensor_model_parallel_region(logits)[..., :vocab].float().cpu()

            with torch.no_grad():
                out = run_schedule(chunks, layout, mbs, tokens.shape[1], collect, forward_only=True,
                                   collect_non_loss_data=True)
            results.append(torch.cat(out) if layout.is_last_stage else None)
            del chunks
            ps.destroy_model_parallel()
        # Ranks of the last pipeline stage hold each job's logits: collect them on rank 0 for writing.
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results)
        if dist.get_rank() == 0:
            torch.save([next(g[j] for g in gathered if g[j] is not None) for j in range(len(jobs))], out_file)
        dist.barrier()
    finally:
        shutdown_parallel()


def check_parity(models: list[str], tp: int = 1, pp: int = 1, vpp: int = 1, batch: int = 2, seq_len: int = 16,
                 seed: int = 1234, cache_dir: str = "~/.cache/p2o") -> list[ParityReport]:
    """Compare every model of `models` under one TP x PP (x VPP) layout, in one launch of tp*pp ranks."""
    return check_parity_jobs([(m, tp, pp, vpp) for m in models], batch, seq_len, seed, cache_dir)


def check_parity_jobs(jobs_in: list[tuple[str, int, int, int]], batch: int = 2, seq_len: int = 16, seed: int = 1234,
                      cache_dir: str = "~/.cache/p2o") -> list[ParityReport]:
    """Compare (model, tp, pp, vpp) jobs whose tp*pp are equal, all in one launch of tp*pp ranks."""
    worlds = {tp * pp for _, tp, pp, _ in jobs_in}
    if len(worlds) != 1:
        raise ValueError(f"parity jobs of one launch need one world size (tp x pp), got {sorted(worlds)}")
    from megatron_bridge.hf_io import read_config
    from megatron_bridge.provider import bridge_and_provider
    from p2o.models import resolve_model_dir

    jobs, refs = [], []
    for hf, tp, pp, v in jobs_in:
        model_dir = resolve_model_dir(hf, cache_dir=cache_dir, init_seed=seed)
        bridge_and_provider(model_dir)[1].check_layout(tp, pp, v)  # fail here, not in every rank
        vocab = read_config(model_dir)["vocab_size"]
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, vocab, (batch, seq_len), generator=gen)
        jobs.append((str(model_dir), tokens, tp, pp, v))
        refs.append(hf_logits(model_dir, tokens))
    with tempfile.TemporaryDirectory(prefix="p2o-parity-") as tmp:
        out_file = str(Path(tmp) / "logits.pt")
        spawn(megatron_logits_worker, worlds.pop(), (jobs, out_file))
        outs = torch.load(out_file)
    reports = []
    for (model_dir, _, tp, pp, _), ref, got in zip(jobs, refs, outs, strict=True):
        diff = (got - ref).abs().max().item()
        scale = ref.abs().max().item()
        reports.append(ParityReport(model_dir, tp, pp, diff, diff / max(scale, 1e-12), scale, tuple(ref.shape)))
    return reports
