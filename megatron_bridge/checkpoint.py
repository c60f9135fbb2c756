"""Megatron dist-checkpointing of model (+ optimizer) state, resharding across TP/PP on load.

    save_checkpoint(path, chunks, optimizer, extra={"step": 3})
    extra = load_checkpoint(path, chunks, optimizer)

Layout on disk: Megatron's torch_dist format (sharded tensors keyed by global parameter names), so a checkpoint
written at one TP x PP layout loads at another (the padded vocabulary must be equal: see provider.py).
Writes are atomic: everything goes to `<path>.tmp` and is renamed when every rank has finished.

Megatron-Core 0.16.1 picks its Adam at import (`megatron.core.optimizer`): Transformer Engine's FusedAdam when TE
imports (GPU runs), else apex's FusedAdam, else torch's AdamW (CPU). They keep Adam's step count differently:
- torch Adam/AdamW: a tensor `state[p]["step"]` per parameter ("per-parameter step");
- TE and apex FusedAdam: one int `param_group["step"]`; per-parameter state holds only the moments (and TE's
  optional master weights). TE's `state_dict`/`load_state_dict` look every per-parameter state name up in their
  dtype map, so a per-parameter "step" raises `KeyError: 'step'`.
`adam_step_per_parameter` tells them apart; the step shims below apply to the per-parameter kind only.

Pitfalls handled here:
- optimizer state is loaded through `optimizer.sharded_state_dict(model_sd, is_loading=True)` (a plain state
  dict silently loads no Adam moments);
- before the first optimizer step the Adam state is empty and the checkpoint would lack the moments:
  `materialise_adam_state` creates the state each optimizer creates lazily on its first step;
- the distributed optimizer saves with sharding type `dp_reshardable` (the default type fails to save), needs
  its Adam state materialised with dummy values before the load, and `load_state_dict` runs under no_grad;
- torch Adam only: Megatron saves the shared step only when it is non-zero (`_fill_step_zero` restores 0), and
  after loading, the per-parameter `step` is reset from the saved param-group `step` (the dp_reshardable path
  leaves the stale dummy value 1, which changes the first update's bias correction; `restore_adam_steps`).
  FusedAdam's param-group step is saved and loaded with the param groups and needs neither;
- `dist_checkpointing.save` starts a spawn-context multiprocessing manager: the launching script needs an
  `if __name__ == "__main__":` guard, and `psutil` must be installed.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_bridge.hf_io import CheckpointError

log = logging.getLogger(__name__)

DIST_OPT_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(module, "module"):
        module = module.module
    return module


def model_sharded_state_dict(chunks: list) -> dict:
    return {f"chunk{i}": unwrap(c).sharded_state_dict() for i, c in enumerate(chunks)}


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _optimizer_metadata(optimizer) -> dict | None:
    return DIST_OPT_METADATA if _uses_distributed_optimizer(optimizer) else None


def _uses_distributed_optimizer(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    return any(isinstance(o, DistributedOptimizer) for o in inner)


def save_checkpoint(path: str | os.PathLike, chunks: list, optimizer=None, extra: dict | None = None) -> Path:
    """Collective: write model (+ optimizer) state and `extra` (small picklable values) to `path`, atomically."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if _is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    state: dict[str, Any] = {"model": model_sharded_state_dict(chunks), "extra": dict(extra or {})}
    if optimizer is not None:
        materialise_adam_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state["model"], is_loading=False,
                                                          metadata=_optimizer_metadata(optimizer))
    dist_checkpointing.save(state, str(tmp), content_metadata=_optimizer_metadata(optimizer))
    _barrier()
    if _is_rank0():
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    _barrier()
    log.info("saved checkpoint %s", path)
    return path


def load_checkpoint(path: str | os.PathLike, chunks: list, optimizer=None) -> dict:
    """Collective: restore model (+ optimizer) state saved by `save_checkpoint` (any TP/PP); returns `extra`."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from megatron.core.dist_checkpointing.validation import StrictHandling
    from torch.distributed.checkpoint.api import CheckpointException

    path = Path(path)
    if not (path / "metadata.json").is_file():
        raise FileNotFoundError(f"{path}: not a Megatron dist checkpoint (no metadata.json)")
    if optimizer is not None and _uses_distributed_optimizer(optimizer):
        for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
            inner._init_optimizer_states_with_dummy_values()
    state: dict[str, Any] = {"model": model_sharded_state_dict(chunks), "extra": {}}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"], is_loading=True,
                                                          metadata=_optimizer_metadata(optimizer))
    try:
        loaded = dist_checkpointing.load(state, str(path), strict=StrictHandling.RAISE_UNEXPECTED)
    except (CheckpointingException, CheckpointException) as e:  # the latter is a BaseException
        raise CheckpointError(f"{path}: does not match this model: {_root_cause(e)}") from None
    for i, c in enumerate(chunks):
        unwrap(c).load_state_dict(loaded["model"][f"chunk{i}"], strict=True)
    if optimizer is not None:
        if any(adam_step_per_parameter(o) for o in torch_optimizers(optimizer)):
            _fill_step_zero(loaded["optimizer"])
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
        restore_adam_steps(optimizer)
    log.info("loaded checkpoint %s", path)
    return dict(loaded.get("extra") or {})


def _root_cause(e: BaseException) -> str:
    """The innermost message of a (per-rank wrapped) checkpoint exception."""
    failures = getattr(e, "failures", None)
    if failures:  # torch.distributed.checkpoint: {rank: (exception, traceback frames)}
        return "; ".join(f"rank {r}: {_root_cause(f[0] if isinstance(f, tuple) else f)}"
                         for r, f in sorted(failures.items()))
    text = str(e).strip()
    if text.startswith("Unexpected keys"):  # Megatron's wording for keys the checkpoint lacks
        text = "tensors missing from the checkpoint: " + text.split(":", 1)[1].strip()
    return text.splitlines()[-1] if text else type(e).__name__


def torch_optimizers(optimizer) -> list:
    """The torch.optim.Optimizer objects inside a Megatron optimizer (a ChainedOptimizer holds several)."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    return [o.optimizer for o in inner if getattr(o, "optimizer", None) is not None]


def adam_step_per_parameter(torch_opt) -> bool:
    """True for torch's Adam/AdamW (a `step` tensor in every parameter's state); False for Transformer Engine's
    and apex's FusedAdam, which count steps in `param_group["step"]` (see the module docstring)."""
    return isinstance(torch_opt, (torch.optim.Adam, torch.optim.AdamW))


def restore_adam_steps(optimizer) -> None:
    """torch Adam: set every parameter's `step` from its param group's saved `step` (see module docstring).
    FusedAdam keeps its step in the param group, which the load restored: nothing to do."""
    for torch_opt in torch_optimizers(optimizer):
        if not adam_step_per_parameter(torch_opt):
            continue
        for group in torch_opt.param_groups:
            if "step" not in group:
                continue
            for p in group["params"]:
                st = torch_opt.state.get(p)
                if st and "step" in st:
                    st["step"] = torch.tensor(float(group["step"]), dtype=torch.float32)


def materialise_adam_state(optimizer) -> None:
    """Give every parameter without Adam state the state its optimizer creates on its first step.

    Before the first optimizer step the state is empty and the checkpoint would lack `exp_avg*`, so it could
    not be loaded. The fresh state is exactly what the optimizer initialises lazily, so the run continues
    identically: torch Adam: step 0 and zero moments; TE FusedAdam: its own `initialize_state` (zero moments in
    its configured dtypes, master weights if it keeps them); apex FusedAdam: fp32 zero moments. (Megatron's
    `_init_optimizer_states_with_dummy_values` instead takes a step with zero gradients, which moves the weights
    under decoupled weight decay: not usable at save time.)"""
    for torch_opt in torch_optimizers(optimizer):
        per_parameter = adam_step_per_parameter(torch_opt)
        for group in torch_opt.param_groups:
            for p in group["params"]:
                if torch_opt.state.get(p):
                    continue
                if per_parameter:
                    st = {"step": torch.tensor(0.0, dtype=torch.float32), "exp_avg": torch.zeros_like(p),
                          "exp_avg_sq": torch.zeros_like(p)}
                    if group.get("amsgrad"):
                        st["max_exp_avg_sq"] = torch.zeros_like(p)
                    torch_opt.state[p] = st
                elif hasattr(torch_opt, "initialize_state"):  # TE FusedAdam, as in its step()
                    remainders = bool(getattr(torch_opt, "store_param_remainders", False)) and p.dtype == torch.bfloat16
                    torch_opt.initialize_state(p, remainders)
                else:  # apex FusedAdam, as in its step()
                    torch_opt.state[p] = {"exp_avg": torch.zeros_like(p, dtype=torch.float32),
                                          "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32)}


def _fill_step_zero(obj: Any) -> None:
    """torch Adam only: Megatron saves the shared Adam step only when it is truthy (`if step:`), so a state saved
    before the first optimizer step comes back without one; give such per-parameter states step 0 again."""
    if isinstance(obj, dict):
        state = obj.get("state")
        if isinstance(state, dict) and "param_groups" in obj and "common_step" not in state:
            for st in state.values():
                if isinstance(st, dict) and st and "step" not in st:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
        for v in obj.values():
            _fill_step_zero(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _fill_step_zero(v)
