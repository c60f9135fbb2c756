"""Checkpoint conversion HF safetensors <-> Megatron dist checkpoint (the `p2o convert` commands).

A Megatron checkpoint written here is a directory

    <out>/model/        Megatron-Core dist checkpoint (torch_dist; global keys, reshardable to any TP/PP)
    <out>/hf_config/    the HF config.json, generation config, tokenizer and chat template files

`megatron-to-hf` also accepts a training checkpoint of `MegatronPolicy.save` (its optimizer state is ignored) when
`--hf-config` names the HF config directory. Both directions stream: HF -> Megatron reads one HF tensor group at a
time into the already-built model; Megatron -> HF writes each tensor of the export stream straight into its
planned shard (at most `shard_bytes`), buffering nothing beyond one 64 MiB bucket.
Each direction spawns `tp x pp` local ranks (default 1). Round trip HF -> Megatron -> HF is bit-exact.

`write_hf_dir` is the one Megatron -> HF writer: `megatron-to-hf` calls it in its spawned ranks, and a training
run calls it on its live policy (`checkpoint.export_hf`, `p2o convert export`: p2o.train.checkpoint). The HF
directory gets the exported tensors in the model's training dtype (config.json's `torch_dtype` says which) and
the source model's config, generation config and tokenizer files; it is built under `<out>.tmp` and renamed.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

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


def _build(model_dir_for_config: Path, tp: int, pp: int, dtype: str = "float32",
           make_vocab_size_divisible_by: int | None = None):
    from megatron_bridge.parallel import init_parallel
    from megatron_bridge.provider import bridge_and_provider
    from p2o.config import ParallelConfig

    layout = init_parallel(ParallelConfig(tp=tp, pp=pp))
    bridge, provider = bridge_and_provider(model_dir_for_config)
    provider = provider.with_dtype(getattr(torch, dtype))
    if make_vocab_size_divisible_by:
        provider.make_vocab_size_divisible_by = make_vocab_size_divisible_by
    chunks = provider.provide(layout)
    if dtype != "float32":  # every parameter in the training dtype, as the policy's Float16Module holds them
        chunks = [c.to(getattr(torch, dtype)) for c in chunks]
    return layout, bridge, provider, chunks


def _set_config_dtype(config_json: Path, dtype: torch.dtype) -> None:
    """config.json's dtype keys (`torch_dtype`, and `dtype` where present) set to the dtype of the written weights."""
    if not config_json.is_file():
        return
    config = json.loads(config_json.read_text())
    name = str(dtype).removeprefix("torch.")
    config["torch_dtype"] = name
    if "dtype" in config:
        config["dtype"] = name
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_hf_dir(stream, hf_side_dir: str | Path, out: str | Path, shard_bytes: int = 2 * 1024**3) -> Path | None:
    """Write the tensors of `stream` (a `WeightExport`: collective, so every rank of the model calls this) as an HF
    model directory `out` on global rank 0, with the side files of `hf_side_dir` (config, generation config,
    tokenizer); built in `<out>.tmp` and renamed into place. Returns `out` on rank 0, None elsewhere."""
    import torch.distributed as dist

    from megatron_bridge.hf_io import StreamingSafetensorsWriter

    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    plan = stream.plan()
    writer = StreamingSafetensorsWriter(out, plan, shard_bytes) if rank0 else None
    for bucket in stream:
        if writer is not None:
            writer.add_all(bucket)
        del bucket
    if writer is None:
        return None
    copy_hf_side_files(Path(hf_side_dir), writer.tmp)
    dtypes = {spec.dtype for spec in plan if spec.dtype.is_floating_point}
    if len(dtypes) == 1:
        _set_config_dtype(writer.tmp / "config.json", dtypes.pop())
    return writer.close()


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
                          shard_bytes: int, dtype: str = "float32", make_vocab_size_divisible_by: int | None = None
                          ) -> None:
    import torch.distributed as dist

    from megatron_bridge.checkpoint import load_checkpoint
    from megatron_bridge.export import WeightExport
    from megatron_bridge.parallel import shutdown_parallel

    try:
        layout, bridge, provider, chunks = _build(Path(hf_config_dir), tp, pp, dtype, make_vocab_size_divisible_by)
        load_checkpoint(model_ckpt, chunks)
        write_hf_dir(WeightExport(chunks, bridge, provider, layout, bucket_bytes=64 << 20), hf_config_dir, out_dir,
                     shard_bytes)
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
                   shard_bytes: int = 2 * 1024**3, hf_config: str | Path | None = None, dtype: str = "float32",
                   make_vocab_size_divisible_by: int | None = None) -> Path:
    """Convert `<megatron>/` (from `hf_to_megatron`, or a policy checkpoint + `hf_config`) to an HF directory.
    `dtype` and `make_vocab_size_divisible_by` are the checkpoint's (a policy checkpoint: model.dtype and
    model.make_vocab_size_divisible_by of its run)."""
    megatron = Path(megatron)
    model_ckpt = megatron / MODEL_SUBDIR if (megatron / MODEL_SUBDIR).is_dir() else megatron
    config_dir = Path(hf_config) if hf_config else megatron / HF_CONFIG_SUBDIR
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(f"{config_dir / 'config.json'}: missing (pass --hf-config with the HF config dir)")
    from megatron_bridge.provider import bridge_and_provider

    bridge_and_provider(config_dir)[1].check_layout(tp, pp)
    t0 = time.perf_counter()
    spawn(megatron_to_hf_worker, tp * pp, (str(model_ckpt), str(config_dir), str(out), tp, pp, shard_bytes, dtype,
                                           make_vocab_size_divisible_by))
    log.info("megatron-to-hf %s -> %s in %.1f s", megatron, out, time.perf_counter() - t0)
    return Path(out)
