"""Checkpoint conversion HF safetensors <-> Megatron dist checkpoint (the `p2o convert` commands).

A Megatron checkpoint written here is a directory

    <out>/model/        Megatron-Core dist checkpoint (torch_dist; global keys, reshardable to any TP/PP)
    <out>/hf_config/    the HF config.json, generation config, tokenizer and chat template files

`megatron-to-hf` also accepts a training checkpoint of `MegatronPolicy.save` (its optimizer state is ignored) when
`--hf-config` names the HF config directory. Both directions stream: HF -> Megatron reads one HF tensor group at a
time into the already-built model; Megatron -> HF writes each tensor of the export stream straight into its
planned shard (at most `shard_bytes`), buffering nothing beyond one 64 MiB bucket.
Each direction spawns `tp x pp` local ranks (default 1). Round trip HF -> Megatron -> HF is bit-exact.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from megatron_bridge.launch import spawn

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
HF_CONFIG_SUBDIR = "hf_config"
# Non-weight files of an HF model directory that travel with a conversion.
HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")


def copy_hf_side_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in HF_SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _build(model_dir_for_config: Path, tp: int, pp: int):
    from megatron_bridge.parallel import init_parallel
    from megatron_bridge.provider import bridge_and_provider
    from p2o.config import ParallelConfig

    layout = init_parallel(ParallelConfig(tp=tp, pp=pp))
    bridge, provider = bridge_and_provider(model_dir_for_config)
    return layout, bridge, provider, provider.provide(layout)


def hf_to_megatron_worker(hf_dir: str, out_dir: str, tp: int, pp: int) -> None:
    from megatron_bridge.checkpoint import save_checkpoint
    from megatron_bridge.parallel import shutdown_parallel
    from megatron_bridge.weights import load_hf_checkpoint

    try:
        layout, bridge, provider, chunks = _build(Path(hf_dir), tp, pp)
        load_hf_checkpoint(chunks, bridge, provider, hf_dir, layout)
        save_checkpoint(Path(out_dir) / MODEL_SUBDIR, chunks)
    finally:
        shutdown_parallel()


def megatron_to_hf_worker(model_ckpt: str, hf_config_dir: str, out_dir: str, tp: int, pp: int,
                          shard_bytes: int) -> None:
    import torch.distributed as dist

    from megatron_bridge.checkpoint import load_checkpoint
    from megatron_bridge.export import WeightExport
    from megatron_bridge.hf_io import StreamingSafetensorsWriter
    from megatron_bridge.parallel import shutdown_parallel

    try:
        layout, bridge, provider, chunks = _build(Path(hf_config_dir), tp, pp)
        load_checkpoint(model_ckpt, chunks)
        stream = WeightExport(chunks, bridge, provider, layout, bucket_bytes=64 << 20)
        plan = stream.plan()
        writer = StreamingSafetensorsWriter(out_dir, plan, shard_bytes) if dist.get_rank() == 0 else None
        for bucket in stream:
            if writer is not None:
                writer.add_all(bucket)
            del bucket
        if writer is not None:
            copy_hf_side_files(Path(hf_config_dir), writer.tmp)
            writer.close()
        dist.barrier()
    finally:
        shutdown_parallel()


def hf_to_megatron(hf: str, out: str | Path, tp: int = 1, pp: int = 1, cache_dir: str = "~/.cache/p2o",
                   seed: int = 1234) -> Path:
    """Convert an HF model (dir, config.json for a seeded random init, or an embedded name) to `<out>/`."""
    from megatron_bridge.provider import bridge_and_provider
    from p2o.models import resolve_model_dir

    hf_dir = resolve_model_dir(hf, cache_dir=cache_dir, init_seed=seed)
    bridge_and_provider(hf_dir)[1].check_layout(tp, pp)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spawn(hf_to_megatron_worker, tp * pp, (str(hf_dir), str(out), tp, pp))
    copy_hf_side_files(hf_dir, out / HF_CONFIG_SUBDIR)
    log.info("hf-to-megatron %s -> %s in %.1f s", hf_dir, out, time.perf_counter() - t0)
    return out


def megatron_to_hf(megatron: str | Path, out: str | Path, tp: int = 1, pp: int = 1,
                   shard_bytes: int = 2 * 1024**3, hf_config: str | Path | None = None) -> Path:
    """Convert `<megatron>/` (from `hf_to_megatron`, or a policy checkpoint + `hf_config`) to an HF directory."""
    megatron = Path(megatron)
    model_ckpt = megatron / MODEL_SUBDIR if (megatron / MODEL_SUBDIR).is_dir() else megatron
    config_dir = Path(hf_config) if hf_config else megatron / HF_CONFIG_SUBDIR
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(f"{config_dir / 'config.json'}: missing (pass --hf-config with the HF config dir)")
    from megatron_bridge.provider import bridge_and_provider

    bridge_and_provider(config_dir)[1].check_layout(tp, pp)
    t0 = time.perf_counter()
    spawn(megatron_to_hf_worker, tp * pp, (str(model_ckpt), str(config_dir), str(out), tp, pp, shard_bytes))
    log.info("megatron-to-hf %s -> %s in %.1f s", megatron, out, time.perf_counter() - t0)
    return Path(out)
