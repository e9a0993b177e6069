"""Memory meters of the harness: `profiled_memory` (from `fxckpt.measure`) reads
``torch.profiler``'s allocator events (which see inductor-compiled code and op-internal scratch),
and `forward_memory_check` checks that reading against the storages autograd saves."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.utils import _pytree as pytree

from ..measure import ProfiledMemory, profiled_memory, profiled_peak_bytes
from ..passes.capture import call_with, step_loss

__all__ = ["ProfiledMemory", "forward_memory_check", "profiled_memory", "profiled_peak_bytes"]


def _storage_key(t: torch.Tensor):
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return s.data_ptr(), s.nbytes()


def forward_memory_check(module: Callable, example, preexisting: Iterable[torch.Tensor]) -> tuple[int, int]:
    """A check of the profiler on any module, compiled or not: ``(bytes the profiler sees still
    allocated after the forward, bytes of the distinct new storages autograd saved for backward
    plus the forward's outputs)``. They are equal when the profiler sees every allocation and
    free the forward makes (inductor-compiled code included), since what a forward leaves behind
    is exactly what backward needs and what it returns. Runs one forward and its backward."""
    old = {k[0] for k in map(_storage_key, preexisting) if k}
    new: dict[int, int] = {}

    def note(t):
        key = _storage_key(t) if isinstance(t, torch.Tensor) else None
        if key and key[0] not in old and key[0]:
            new[key[0]] = key[1]

    def pack(t):
        note(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        profiled = profiled_memory(lambda: call_with(module, example))
    output, live_end = profiled.result, profiled.end_bytes
    for leaf in pytree.tree_leaves(output if not hasattr(output, "to_tuple") else output.to_tuple()):
        note(leaf)
    step_loss(output).backward()
    return live_end, sum(new.values())

