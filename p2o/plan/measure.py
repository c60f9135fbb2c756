"""Instruments for measuring a training step on any device: tensor memory and collective traffic.

`TensorMemoryTracker` is a `TorchDispatchMode` that sees every tensor an op allocates (forward, backward,
optimizer) and follows its storage until it is freed, so it measures what `torch.cuda.max_memory_allocated`
measures on a GPU (live tensor bytes, not allocator caches) on the CPU as well:

    with TensorMemoryTracker() as mem:
        step()
    mem.peak_bytes            # peak of bytes allocated inside the block and alive at the same time

`CommCounter` wraps the `torch.distributed` collectives and point-to-point sends and sums their payload bytes
per process group (named by the caller, e.g. {"tp": tp_group, "pp": pp_group, "dp": [dp_group, dp_cp_group]}):

    with CommCounter({"tp": tp_group}) as comm:
        step()
    comm.bytes["tp"]          # payload bytes this rank passed to collectives of that group

Payload: the full buffer of an all-reduce / reduce-scatter input / all-gather output / broadcast, the
tensor of a send. Wire traffic of a ring all-reduce is 2(n-1)/n x payload.
"""
from __future__ import annotations

import inspect
import weakref
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views and shared storages counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        st = t.untyped_storage()
        if st.data_ptr() in seen or st.nbytes() == 0:
            continue
        seen.add(st.data_ptr())
        total += st.nbytes()
    return total


class TensorMemoryTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages allocated while the mode is active.

    `marks[name]` records the live bytes at a moment the caller chooses (`mark(name)`), e.g. at the end
    of the forward pass, which is the memory the backward needs (saved activations).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.marks: dict[str, int] = {}
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.live_bytes -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = st.data_ptr()
        if key == 0 or key in self._refs:
            return
        nbytes = st.nbytes()
        self._refs[key] = weakref.ref(st, lambda _r, k=key, n=nbytes: self._freed(k, n))
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:  # in-place ops and views return their inputs' storage: not new memory
            if isinstance(t, torch.Tensor) and not t.is_meta and t.untyped_storage().data_ptr() not in inputs:
                self._track(t)
        return out

    def mark(self, name: str) -> None:
        self.marks[name] = self.live_bytes


# (module attribute, index of the tensor argument, kind)
_WRAPPED: tuple[tuple[str, int, str], ...] = (
    ("all_reduce", 0, "all_reduce"), ("reduce", 0, "reduce"), ("broadcast", 0, "broadcast"),
    ("all_gather_into_tensor", 0, "all_gather"), ("_all_gather_base", 0, "all_gather"),
    ("reduce_scatter_tensor", 1, "reduce_scatter"), ("_reduce_scatter_base", 1, "reduce_scatter"),
    ("all_gather_single", 0, "all_gather"), ("reduce_scatter_single", 1, "reduce_scatter"),
    ("reduce_scatter", 1, "reduce_scatter"),
    ("all_gather", 0, "all_gather"), ("send", 0, "send"), ("isend", 0, "send"),
    ("all_to_all_single", 1, "all_to_all"),
)


class CommCounter:
    """Sums payload bytes of `torch.distributed` calls per named process group while active."""

    def __init__(self, groups: dict[str, Any], p2p_name: str = "", modules: tuple = ()) -> None:
        """`groups`: name -> a process group or a list of groups counted under that name; `p2p_name`: count
        every send under this name whatever group carries it (Megatron sends half of the pipeline traffic
        over the world group when the pipeline group has two ranks); `modules`: modules holding their own
        module-level aliases of the collectives (e.g. Megatron's `dist_reduce_scatter_func`), patched too."""
        self.p2p_name = p2p_name
        self.modules = modules
        self._aliases: list[tuple[Any, str, Callable]] = []
        self.groups = groups
        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._saved: dict[str, Callable] = {}

    def _group_name(self, group: Any) -> str:
        for name, g in self.groups.items():
            if any(group is x for x in (g if isinstance(g, list | tuple) else [g])):
                return name
        if group is None or group is dist.GroupMember.WORLD:
            return "world"
        return "other"

    def _wrap(self, attr: str, index: int, kind: str) -> Callable:
        original = getattr(dist, attr)
        names = list(inspect.signature(original).parameters)
        tensor_name = names[index]
        group_pos = names.index("group") if "group" in names else None

        def counted(*args, **kwargs):
            tensor = args[index] if len(args) > index else kwargs.get(tensor_name)
            if isinstance(tensor, list | tuple):  # all_gather(list, tensor): the gathered list
                size = sum(t.numel() * t.element_size() for t in tensor)
            else:
                size = tensor.numel() * tensor.element_size() if tensor is not None else 0
            group = kwargs.get("group")
            if group is None and group_pos is not None and group_pos < len(args):
                group = args[group_pos]
            name = self.p2p_name if (kind == "send" and self.p2p_name) else self._group_name(group)
            self.bytes[name] += size
            self.calls[f"{name}.{kind}"] += 1
            return original(*args, **kwargs)

        counted.__wrapped__ = original
        return counted

    def __enter__(self) -> CommCounter:
        wrappers = {}
        for attr, index, kind in _WRAPPED:
            if hasattr(dist, attr):
                self._saved[attr] = getattr(dist, attr)
                wrappers[id(self._saved[attr])] = self._wrap(attr, index, kind)
                setattr(dist, attr, wrappers[id(self._saved[attr])])
        for module in self.modules:
            for name, value in list(vars(module).items()):
                if id(value) in wrappers:
                    self._aliases.append((module, name, value))
                    setattr(module, name, wrappers[id(value)])
        return self

    def __exit__(self, *exc) -> None:
        for attr, fn in self._saved.items():
            setattr(dist, attr, fn)
        for module, name, fn in self._aliases:
            setattr(module, name, fn)
        self._saved.clear()
        self._aliases.clear()
