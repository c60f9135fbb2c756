"""HF transformers vs Megatron-Core logit parity for one model under a TP x PP layout.

    report = check_parity("tiny.json", tp=2, pp=2)       # spawns tp*pp ranks itself
    report.rel_diff <= 1e-4

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


def megatron_logits_worker(model_dir: str, tp: int, pp: int, vpp: int, tokens: torch.Tensor, out_file: str) -> None:
    """One rank: build + load the Megatron model, run `tokens` [B, S], write full logits [B, S, V] (one rank)."""
    import torch.distributed as dist
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_bridge.forward import MicroBatch, mask_padded_vocab, run_schedule
    from megatron_bridge.hf_io import read_config
    from megatron_bridge.parallel import init_parallel, shutdown_parallel
    from megatron_bridge.provider import bridge_for
    from megatron_bridge.weights import load_hf_checkpoint
    from p2o.config import ParallelConfig

    layout = init_parallel(ParallelConfig(tp=tp, pp=pp, vpp=vpp))
    try:
        hf = read_config(model_dir)
        bridge = bridge_for(hf)
        provider = bridge.provider(hf)
        chunks = provider.provide(layout)
        load_hf_checkpoint(chunks, bridge, provider, model_dir, layout)
        for c in chunks:
            c.eval()
        tokens = tokens.to(layout.device)
        empty = torch.empty(0, dtype=torch.long)
        mb = MicroBatch(tokens, list(range(tokens.shape[0])), (empty, empty), empty, slice(0, 0))

        def collect(_mb, logits):
            full = gather_from_tensor_model_parallel_region(mask_padded_vocab(logits, provider.vocab_size, 0)
                                                            if layout.tp == 1 else logits)
            return full[..., : provider.vocab_size].float().cpu()

        with torch.no_grad():
            out = run_schedule(chunks, layout, [mb], tokens.shape[1], collect, forward_only=True,
                               collect_non_loss_data=True)
        if layout.is_last_stage and layout.tp_rank == 0 and layout.dp_rank == 0:
            torch.save(out[0], out_file)
        dist.barrier()
    finally:
        shutdown_parallel()


def check_parity(hf: str, tp: int = 1, pp: int = 1, vpp: int = 1, batch: int = 2, seq_len: int = 16, seed: int = 1234,
                 cache_dir: str = "~/.cache/p2o") -> ParityReport:
    """Run the comparison (spawns tp*pp ranks); see module docstring."""
    from megatron_bridge.hf_io import read_config
    from p2o.models import resolve_model_dir

    model_dir = resolve_model_dir(hf, cache_dir=cache_dir, init_seed=seed)
    vocab = read_config(model_dir)["vocab_size"]
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    ref = hf_logits(model_dir, tokens)
    with tempfile.TemporaryDirectory(prefix="p2o-parity-") as tmp:
        out_file = str(Path(tmp) / "logits.pt")
        spawn(megatron_logits_worker, tp * pp, (str(model_dir), tp, pp, vpp, tokens, out_file))
        got = torch.load(out_file)
    diff = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    return ParityReport(str(model_dir), tp, pp, diff, diff / max(scale, 1e-12), scale, tuple(ref.shape))
