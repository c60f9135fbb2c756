"""Megatron-Core on CPU with gloo: the one place that adapts Megatron's CUDA assumptions.

Megatron-Core 0.16 assumes CUDA in a few hundred places (`torch.cuda.current_device()` as an allocation
device, `device="cuda"` literals in the pipeline schedules and optimizers, CUDA RNG state in the tensor-
parallel RNG tracker, `Tensor.type() == 'torch.cuda.FloatTensor'` checks in grad clipping and the
distributed optimizer). `activate()` maps all of that onto the CPU, *only when CUDA is absent*; on a GPU
machine it does nothing. Nothing else in `megatron_bridge` special-cases the CPU.

What `activate()` changes (process-wide, idempotent):

1. `torch.cuda.current_device` -> `torch.cpu.current_device` ('cpu'), so device=current_device() allocations
   land on the CPU (rotary embeddings, the global memory buffer, attention masks).
2. CUDA RNG state functions -> the CPU generator, so `model_parallel_cuda_manual_seed` and the RNG tracker's
   `fork()` give real per-TP-rank streams (a harmless "CPU RNG state changed within GPU RNG context" note is
   logged once per fork).
3. A `TorchFunctionMode` that rewrites `device="cuda"` keyword arguments and `.to("cuda")` to the CPU, makes
   `Tensor.cuda()` a no-op and makes zero-argument `Tensor.type()` report `torch.cuda.*` (Megatron's dtype
   string checks). Torch function modes are per thread: threads that run Megatron code must call
   `activate()` themselves. Cost: about 12-15% on tiny models.
4. `torch.cuda.synchronize` -> no-op (the p2p communication path calls it).

Settings the rest of the code uses on CPU, because of gloo or missing Apex/Transformer Engine (they are
configuration, not patches): `batch_p2p_comm=False` for the interleaved pipeline schedule (batched
isend/irecv on gloo silently gives wrong results there), no sequence parallelism (the torch norm fallback
rejects it), distributed-optimizer checkpoints with sharding type `dp_reshardable`. `dist_checkpointing.save`
starts a spawn-context multiprocessing manager, so launcher scripts need an `if __name__ == "__main__":` guard,
and it needs `psutil`.
"""
from __future__ import annotations

import logging
import threading

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

_state = threading.local()
_patched_globals = False


def _is_cuda(device: object) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA device requests to the CPU (see module docstring, item 3)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = dict(kwargs, device="cpu")
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


def needed() -> bool:
    """True when Megatron must run on the CPU (no CUDA device)."""
    return not torch.cuda.is_available()


def _patch_globals() -> None:
    global _patched_globals
    if _patched_globals:
        return
    import megatron.core.tensor_parallel.random as mpu_random

    torch.cuda.current_device = torch.cpu.current_device
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    torch.cuda.synchronize = lambda device=None: None
    mpu_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mpu_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    _patched_globals = True
    log.info("Megatron-Core CPU compatibility active (no CUDA device)")


def activate() -> bool:
    """Enable the CPU compatibility layer in this process and thread when CUDA is absent; returns whether it is on."""
    if not needed():
        return False
    _patch_globals()
    if not getattr(_state, "mode", None):
        _state.mode = CudaToCpuMode()
        _state.mode.__enter__()
    return True
