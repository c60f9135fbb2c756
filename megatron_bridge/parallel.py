"""Distributed + model-parallel initialisation from `ParallelConfig`, as one explicit object.

Megatron-Core keeps its process groups in `megatron.core.parallel_state`; this module creates them once and
returns a `ParallelLayout` that the rest of `megatron_bridge` receives as an argument (sizes, this rank's
coordinates, and the groups), so no module here reaches for globals of its own.

    layout = init_parallel(cfg.parallel, seed=cfg.train.seed)   # inside torchrun / a spawned rank
    ...
    shutdown_parallel()

Rank order is Megatron's default "tp-cp-ep-dp-pp": TP ranks are adjacent, PP stages the slowest dimension.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from megatron_bridge import cpu_compat

log = logging.getLogger(__name__)


@dataclass
class ParallelLayout:
    """Model-parallel sizes, this rank's coordinates and its process groups (read-only after init)."""

    tp: int
    pp: int
    vpp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_group: Any
    pp_group: Any
    dp_group: Any
    mp_group: Any
    """The model-parallel group (TP x PP): every rank that holds a piece of one model replica."""
    device: torch.device
    sequence_parallel: bool = False

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def vp_size(self) -> int | None:
        """Megatron's virtual pipeline size argument (None when not interleaved)."""
        return self.vpp if self.vpp > 1 else None

    def pp_global_rank(self, stage: int) -> int:
        """Global rank of pipeline stage `stage` in this rank's pipeline group."""
        return dist.get_global_rank(self.pp_group, stage)

    def tp_global_rank(self, tp_rank: int) -> int:
        return dist.get_global_rank(self.tp_group, tp_rank)


def default_backend(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_parallel(parallel_cfg, seed: int = 1234, timeout_minutes: int = 30) -> ParallelLayout:
    """Initialise torch.distributed (env:// from torchrun/spawn, if not yet done) and Megatron's model-parallel groups
    (unless they exist already, e.g. created by the caller: then they are described, not re-created).

    `parallel_cfg` is a `p2o.config.ParallelConfig`; the world size must be a multiple of tp x pp (the rest is
    data parallelism). Seeds Megatron's tensor-parallel RNG tracker with `seed`.
    """
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    cpu_compat.activate()
    backend = default_backend(parallel_cfg.backend)
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    world = dist.get_world_size()
    tp, pp = parallel_cfg.tp, parallel_cfg.pp
    if world % (tp * pp):
        raise ValueError(f"parallel.tp x parallel.pp = {tp} x {pp} must divide the world size {world}")
    if parallel_cfg.sequence_parallel and cpu_compat.needed():
        raise ValueError("parallel.sequence_parallel: not supported without CUDA (the torch norm fallback "
                         "rejects it); set it to false")
    vpp = parallel_cfg.vpp
    if ps.model_parallel_is_initialized():  # created by the caller: describe it, after checking it matches
        have = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size())
        if have != (tp, pp):
            raise ValueError(f"parallel.tp x parallel.pp = {tp} x {pp}, but Megatron's groups already exist as "
                             f"{have[0]} x {have[1]}")
    else:
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
            distributed_timeout_minutes=timeout_minutes,
        )
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    layout = ParallelLayout(
        tp=tp, pp=pp, vpp=vpp, dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(), pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        tp_group=ps.get_tensor_model_parallel_group(), pp_group=ps.get_pipeline_model_parallel_group(),
        dp_group=ps.get_data_parallel_group(), mp_group=ps.get_model_parallel_group(),
        device=device, sequence_parallel=parallel_cfg.sequence_parallel,
    )
    log.info("rank %d: tp %d/%d pp %d/%d dp %d/%d (%s)", dist.get_rank(), layout.tp_rank, tp, layout.pp_rank, pp,
             layout.dp_rank, layout.dp, backend)
    return layout


def shutdown_parallel() -> None:
    """Destroy Megatron's groups and the default process group (if initialised)."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
