"""Memory meters of the harness: `profiled_memory` reads ``torch.profiler``'s allocator events
(which see inductor-compiled code and op-internal scratch), and `forward_memory_check` checks
that reading against the storages autograd saves."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..passes.capture import call_with, step_loss

__all__ = ["ProfiledMemory", "forward_memory_check", "profiled_memory", "profiled_peak_bytes"]


@dataclass(frozen=True)
class ProfiledMemory:
    """What `profiled_memory` saw."""

    result: Any  # what the function returned
    peak_bytes: int  # largest allocated-and-not-freed total, above what was allocated before
    end_bytes: int  # still allocated at the end
    peak_op: str | None  # the outermost aten op running when the peak was reached (None: between ops)


def profiled_memory(fn: Callable[[], Any]) -> ProfiledMemory:
    """Run ``fn()`` under ``torch.profiler`` memory profiling and read the memory events (every
    allocation and free of the CPU allocator: eager ops, inductor buffers and op-internal scratch
    alike) in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        result = fn()
    events = prof.profiler.kineto_results.events()
    memory = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())  # stable sort
    current = peak = 0
    peak_ns = None
    for e in memory:
        current += e.nbytes()
        if current > peak:
            peak, peak_ns = current, e.start_ns()
    return ProfiledMemory(result, peak, current, _op_at(events, peak_ns))


def _op_at(events, ns: int | None) -> str | None:
    """The outermost aten op whose interval contains the time ``ns`` (the op a model called; the
    allocation itself may be in an op it calls, e.g. ``aten::empty``)."""
    if ns is None:
        return None
    running = [e for e in events if e.name().startswith("aten::") and e.start_ns() <= ns <= e.start_ns() + e.duration_ns()]
    return min(running, key=lambda e: e.start_ns()).name() if running else None


def profiled_peak_bytes(fn: Callable[[], Any]) -> int:
    """The peak of CPU-allocator bytes allocated and not yet freed while ``fn()`` runs, above
    what was allocated before (see `profiled_memory`)."""
    return profiled_memory(fn).peak_bytes


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

