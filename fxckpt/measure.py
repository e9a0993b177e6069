"""Measure one training step: activation peak, FLOPs and wall time.

`LiveBytesMode` counts the bytes of live tensor storages created while it is active, exactly and on
any device, including fake tensors; `measure_step` uses it (or the CUDA allocator's statistics) to
report what a forward + backward step costs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .core.errors import MIB
from .passes.capture import call_with, step_loss  # step_loss is re-exported here
from .passes.engine_sums import EngineSums
from .passes.ops import DEVICE_QUERY, memory_owners, plain_tensors
from .passes.runtime import watch_rng_states

__all__ = ["Allocation", "AllocatorEvent", "LiveBytesMode", "StepMeasurement", "allocator_events", "allocator_step_peak",
           "measure_step", "step_loss"]

logger = logging.getLogger(__name__)

# Its input is a constant made just now outside the dispatcher (torch.tensor(...)): new memory.
_FRESH = (torch.ops.aten.lift_fresh.default,)


def _tensors(tree):
    """Every tensor in a pytree; mappings that are not registered pytrees are walked too."""
    found = plain_tensors(tree)  # NOTE [ Tensors of an op's arguments ] in passes/ops.py
    if found is not None:
        yield from found
        return
    for leaf in pytree.tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            yield leaf
        elif isinstance(leaf, Mapping):
            yield from _tensors(list(leaf.values()))


def _storages(tree):
    for t in _tensors(tree):
        for part in memory_owners(t):
            try:
                yield part.untyped_storage()
            except (RuntimeError, NotImplementedError, TypeError):
                continue  # some subclasses and other sparse layouts have no storage of their own


@dataclass
class Allocation:
    """One storage a `LiveBytesMode` saw created: alive after ops ``born`` .. ``died - 1`` of its
    timeline (``died`` None: still alive when last swept)."""

    nbytes: int
    born: int
    died: int | None = None


class LiveBytesMode(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created by the ops dispatched while it is active.

    Each new storage in an op's outputs is counted once with its ``nbytes`` (views and in-place
    outputs share their input's storage and add nothing) and dropped when it dies. Storages that
    existed before the mode was entered are never counted, even when an in-place op returns them
    (e.g. accumulation into a preallocated ``.grad``). Backward ops are seen too: on the CPU the
    autograd engine runs them on the calling thread, inside the mode. With fake tensors, enter
    this mode inside the ``FakeTensorMode``. A sparse COO tensor counts as its indices and values.
    The RNG states fxckpt's runtime keeps to replay random nodes, made outside the dispatcher,
    count too (`fxckpt.passes.runtime.watch_rng_states`). Not seen: memory an op uses only
    internally (unless ``scratch`` says how much), and outputs without a storage (other sparse
    layouts). Under any dispatch mode the autograd engine sums two gradients of one value out of
    place; the meter counts the sums a step without the mode does in place as in place
    (`following`).

    Attributes:
        peak_bytes: the largest live total, taken after each op's outputs are created.
        timeline: ``(live_bytes, op_name)`` after every op, when ``record_timeline=True`` (which
            costs a sweep of all tracked storages per op).
        allocations: with ``record_timeline``, every storage counted, with the timeline indices
            it lived over: after op ``t``, ``timeline[t][0]`` is the sum of ``nbytes`` over the
            allocations with ``born <= t < died``. A storage resized by an ``out=`` op ends one
            allocation and starts another.
        labels: with ``label``, ``label()`` called after every op (e.g. the module running it).

    Args:
        scratch: ``scratch(func, args, kwargs)``, bytes the op allocates internally while it runs
            beyond its outputs; the peak counts them on top of the live bytes after the op
            (the dry run passes `fxckpt.passes.fake_step.op_scratch`). Default: none.
    """

    def __init__(self, record_timeline: bool = False, label: Callable[[], Any] | None = None,
                 scratch: Callable[..., int] | None = None):
        super().__init__()
        self.record_timeline = record_timeline or label is not None
        self.label = label
        self.scratch = scratch
        self.timeline: list[tuple[int, str]] = []
        self.allocations: list[Allocation] = []
        self.labels: list[Any] = []
        self.peak_bytes = 0
        self._tracked: dict[int, tuple[StorageWeakRef, int]] = {}  # may hold dead entries until swept
        self._tracked_bytes = 0  # sum over _tracked: an upper bound on the live bytes
        self._open: dict[int, Allocation] = {}  # storage key -> its allocation, when recording
        self._sums = EngineSums()

    @property
    def current_bytes(self) -> int:
        """Bytes of tracked storages alive now."""
        self._sweep()
        return self._tracked_bytes

    def _sweep(self) -> None:
        dead = [k for k, (ref, _) in self._tracked.items() if ref.expired()]
        for k in dead:
            self._tracked_bytes -= self._tracked.pop(k)[1]
            self._close(k)

    def _close(self, key: int) -> None:
        alloc = self._open.pop(key, None)
        if alloc is not None:
            alloc.died = len(self.timeline)

    def _record(self, key: int, nbytes: int) -> None:
        if self.record_timeline:
            self._close(key)
            self._open[key] = alloc = Allocation(nbytes, len(self.timeline))
            self.allocations.append(alloc)

    def following(self, *roots: torch.Tensor):
        """Within the block, the backward of `roots` is followed, so that the gradients the autograd
        engine sums in place count as in a step without a dispatch mode (NOTE [ Gradients the
        engine sums in place ] in fxckpt/passes/engine_sums.py). Entered as a mode, the meter
        follows every backward started inside it by itself; with `booking` (a fake step's
        observer), the caller follows its loss."""
        return self._sums.following(*roots)

    @contextlib.contextmanager
    def booking(self):
        """The meter without the mode: within the block it counts the ops handed to `book` (by a
        fake step's observer, NOTE [ Observers inside the fake mode ] in passes/fake_step.py) and
        the runtime's RNG-state copies, as it does while entered."""
        with watch_rng_states(self._rng_state):
            yield self

    def __enter__(self):
        self._watching = watch_rng_states(self._rng_state)
        self._watching.__enter__()
        self._backwards = _Backwards(self._sums)
        self._backwards.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._backwards.__exit__(None, None, None)
            self._watching.__exit__(None, None, None)

    def _rng_state(self, t: torch.Tensor) -> None:
        """A copy of an RNG state the runtime keeps (NOTE [ RNG states the runtime holds ] in
        fxckpt/passes/runtime.py): a new storage, like an op's output."""
        s = t.untyped_storage()
        self._drop_stale(s._cdata)
        self._start(s._cdata, s)
        self._after_op("rng state", s.nbytes(), 0)

    def _drop_stale(self, key: int) -> None:
        entry = self._tracked.pop(key, None)
        if entry is not None:  # defensive: our weak ref keeps a dead storage's address reserved
            self._tracked_bytes -= entry[1]
            self._close(key)

    def _start(self, key: int, s) -> None:
        n = s.nbytes()
        self._tracked[key] = (StorageWeakRef(s), n)
        self._tracked_bytes += n
        self._record(key, n)

    def _after_op(self, name, grew: int, extra: int) -> None:
        # `name`: an op, named (str) only where the timeline records it: str(op) on every op of a
        # dry run cost about as much as the rest of this method.
        # Sweeping is O(tracked); only needed when the upper bound could pass the peak.
        if self.record_timeline or ((grew or extra) and self._tracked_bytes + extra > self.peak_bytes):
            self._sweep()
            self.peak_bytes = max(self.peak_bytes, self._tracked_bytes + extra)
        if self.record_timeline:
            self.timeline.append((self._tracked_bytes, str(name)))
            if self.label is not None:
                self.labels.append(self.label())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is DEVICE_QUERY and not self.record_timeline:  # NOTE [ Device queries under fake tensors ] in passes/ops.py
            return func(*args)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.book(func, args, kwargs, out)
        return out

    def book(self, func, args, kwargs: dict, out) -> None:
        """Count what `func` did, called on (args, kwargs) and returning `out`: what the mode does
        after each op it dispatches."""
        summed = self._sums.summed_into(func, args)
        if summed is not None and self._summed_in_place(summed, out):
            self._after_op(func, 0, 0)
            return
        grew, inputs = 0, None
        for s in _storages(out):
            key, n = s._cdata, s.nbytes()
            entry = self._tracked.get(key)
            if entry is not None and not entry[0].expired():  # a storage made in the mode, maybe resized
                grew += max(0, n - entry[1])
                self._tracked_bytes += n - entry[1]
                self._tracked[key] = (entry[0], n)
                if n != entry[1]:
                    self._record(key, n)
                continue
            self._drop_stale(key)
            if inputs is None:
                inputs = set() if func in _FRESH else {x._cdata for x in _storages((args, kwargs))}
            if key in inputs:
                continue  # an alias of an input from before the mode
            # Zero-byte storages count nothing but are tracked: an out= op may resize them later.
            self._start(key, s)
            grew += n
        extra = self.scratch(func, args, kwargs) if self.scratch is not None else 0
        self._after_op(func, grew, extra)

    def _summed_in_place(self, old: torch.Tensor, out) -> bool:
        """The engine's sum ``old + new`` that a real step does in place: its output takes over
        the storage of ``old`` (which dies now in this step) instead of counting as new."""
        if not isinstance(out, torch.Tensor):
            return False
        key, s = old.untyped_storage()._cdata, out.untyped_storage()
        entry = self._tracked.pop(key, None)
        if entry is not None:
            self._drop_stale(s._cdata)
            self._tracked[s._cdata] = (StorageWeakRef(s), entry[1])
            if key in self._open:
                self._open[s._cdata] = self._open.pop(key)
        return True


class _Backwards(TorchFunctionMode):
    """Runs each backward started while it is active (``Tensor.backward``, ``autograd.backward``,
    ``autograd.grad``) inside `EngineSums.following` of its outputs."""

    def __init__(self, sums: EngineSums):
        super().__init__()
        self.sums = sums

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:
            roots = args[:1]
        elif func is torch.autograd.backward:
            roots = list(_tensors(args[0] if args else kwargs.get("tensors")))
        elif func is torch.autograd.grad:
            roots = list(_tensors(args[0] if args else kwargs.get("outputs")))
        else:
            return func(*args, **kwargs)
        with self.sums.following(*roots):
            return func(*args, **kwargs)


@dataclass(frozen=True)
class StepMeasurement:
    """What one training step cost."""

    peak_bytes: int  # activation peak, see measure_step
    flops: int  # forward + backward, as FlopCounterMode counts them
    seconds: float  # wall time of one untracked step (median over the timed runs)
    device: str

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB


def measure_step(model, example_input, *, loss_fn=None, repeats: int = 1, warmup: bool = True) -> StepMeasurement:
    """Run training steps of ``model`` and report the activation peak, FLOPs and time of one.

    A step is ``output = model(example_input)`` (a Tensor is passed as ``model(x)``, a tuple or
    list as ``model(*args)``, a dict as ``model(**kwargs)``), ``loss = loss_fn(output)`` (default
    `step_loss`), ``loss.backward()``, with the output referenced until backward finishes.

    The *activation peak* is the peak of live tensor bytes during forward + backward minus the
    bytes live just before forward, with every gradient already allocated: each parameter (and
    leaf input) that requires grad gets a fresh ``torch.zeros_like`` ``.grad`` before the step,
    so gradient accumulation adds nothing and parameters, inputs and gradients are all excluded.
    On CUDA (any parameter or input there) it is ``torch.cuda.max_memory_allocated()`` after
    ``reset_peak_memory_stats()``, minus ``memory_allocated()`` before; elsewhere it is counted
    by `LiveBytesMode`. FLOPs come from a ``FlopCounterMode`` in a separate run.

    ``seconds`` times separate steps with no dispatch mode (synchronizing on CUDA): one warm-up
    step if ``warmup``, then the median of ``repeats`` steps.

    The call has no side effects: every run starts from the caller's RNG state (CPU and CUDA)
    and buffers (e.g. BatchNorm statistics), and afterwards the RNG state, buffer values and
    each ``.grad`` (the same object, or None) are restored.

    Args:
        model: the module to step.
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs.
        loss_fn: maps the model's output to a scalar loss; default `step_loss`.
        repeats: number of timed steps.
        warmup: run one untimed step before the timed ones.

    Returns:
        A `StepMeasurement`.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU())
        >>> m = measure_step(model, torch.randn(512, 512))
        >>> round(m.peak_mib, 2)  # kept output, its gradient, the weight's gradient before accumulation
        3.0
    """
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = list(_tensors(example_input))
    ids = {id(p) for p in params}
    leaves = params + [t for t in inputs if t.requires_grad and t.is_leaf and id(t) not in ids]
    cuda = next((t.device for t in params + inputs if t.device.type == "cuda"), None)
    device = str(cuda or next((t.device for t in params + inputs), torch.device("cpu")))
    step = _training_step(model, example_input, loss_fn)

    with _each_step_fresh(model, leaves, cuda) as reset:
        # NOTE: FLOPs are counted in a run of their own: FlopCounterMode tracks modules with
        # hooks that hold tensors, which would change the peak being measured.
        flops = _count_flops(step, reset)
        peak = _peak_bytes(step, reset, cuda)
        times = _step_times(step, reset, cuda, warmup=warmup, repeats=repeats)

    result = StepMeasurement(int(peak), int(flops), statistics.median(times), device)
    logger.debug("measured step on %s: peak %.3f MiB, %.3g FLOPs, %.4f s", device, result.peak_mib,
                 result.flops, result.seconds)
    return result


def _training_step(model, example_input, loss_fn):
    """The step every measurement runs: the model on the example, then backward of its loss."""
    def step():
        output = call_with(model, example_input)
        (loss_fn or step_loss)(output).backward()
    return step


@contextlib.contextmanager
def _each_step_fresh(model, leaves: list[torch.Tensor], cuda):
    """Yield ``reset()``, which puts back the state a step starts from: a zeroed ``.grad`` on
    every leaf, the buffers and the RNG state (CPU, and CUDA) as they were on entry. On exit the
    state is reset once more and each leaf gets back its own ``.grad``."""
    user_grads = [t.grad for t in leaves]
    buffers = list(model.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
    temp_grads = [torch.zeros_like(t) for t in leaves]

    def reset():
        with torch.no_grad():
            for t, g in zip(leaves, temp_grads):
                t.grad = g.zero_()
            for b, s in zip(buffers, saved_buffers):
                b.copy_(s)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

    try:
        yield reset
    finally:
        reset()
        for t, g in zip(leaves, user_grads):
            t.grad = g


def allocator_step_peak(model, example_input, *, loss_fn=None) -> ProfiledMemory:
    """The CPU allocator's peak over one training step, as `profiled_memory` reads it: the step
    of `measure_step` (every ``.grad`` allocated first, the output held until backward ends),
    after one unmeasured step (kernels' lazily built state, e.g. oneDNN primitives, is not the
    step's). Unlike `measure_step`'s live-storage count, this sees kernels' scratch too.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU())
        >>> round(allocator_step_peak(model, torch.randn(512, 512)).peak_bytes / 2**20, 2)
        3.0
    """
    params = [p for p in model.parameters() if p.requires_grad]
    leaves = params + [t for t in _tensors(example_input) if t.requires_grad and t.is_leaf]
    step = _training_step(model, example_input, loss_fn)

    with _each_step_fresh(model, leaves, None) as reset:
        reset()
        step()
        reset()
        return profiled_memory(step)


def _count_flops(step, reset) -> int:
    reset()
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _peak_bytes(step, reset, cuda) -> int:
    """The activation peak of one step: the CUDA allocator's, else `LiveBytesMode`'s."""
    reset()
    if cuda:
        torch.cuda.synchronize(cuda)
        torch.cuda.reset_peak_memory_stats(cuda)
        before = torch.cuda.memory_allocated(cuda)
        step()
        torch.cuda.synchronize(cuda)
        return torch.cuda.max_memory_allocated(cuda) - before
    with LiveBytesMode() as live:
        step()
    return live.peak_bytes


def _step_times(step, reset, cuda, *, warmup: bool, repeats: int) -> list[float]:
    """Wall times of ``repeats`` steps (at least one), after one untimed step if ``warmup``."""
    times = []
    for i in range(int(warmup) + max(1, repeats)):
        reset()
        if cuda:
            torch.cuda.synchronize(cuda)
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(cuda)
        if i >= int(warmup):
            times.append(time.perf_counter() - t0)
    return times


@dataclass(frozen=True)
class AllocatorEvent:
    """One allocation (``nbytes > 0``) or free (``nbytes < 0``) that ``torch.profiler`` saw."""

    nbytes: int
    ptr: int
    op: str | None  # the outermost aten op running, as the profiler names it ("aten::mm"); None between ops
    region: str | None  # the outermost region that is neither an aten op nor the autograd engine's
    # wrapper: a compiled graph ("Torch-Compiled Region: 0/0"), a backward node ("CompiledFunctionBackward")
    backward: bool  # run by the autograd engine
    total_allocated: int  # the allocator's total on that device after the event


_ENGINE = "autograd::engine::evaluate_function"


# NOTE [ The profiler's start and stop lines ]
# The pinned CPU build's kineto writes a line to the process's stderr (file descriptor 2, below
# Python's sys.stderr) each time a profiler starts and stops ("USDT: ... profiler_start"), and
# KINETO_LOG_LEVEL does not silence it. Planning probes kernels' scratch under the profiler, so
# one auto_checkpoint printed 8 such lines, and every measurement 2. Descriptor 2 points at
# /dev/null while the profiler starts and stops, and only then: what the profiled code writes
# still shows.
@contextlib.contextmanager
def _quiet_native_stderr():
    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (a closed or replaced stream)
        yield
        return
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def allocator_events(device: str | torch.device = "cpu"):
    """Record every allocation and free on ``device`` during the ``with`` block, in time order:
    the allocator's view (eager ops, compiled code and op-internal scratch alike), read from
    ``torch.profiler``'s memory events. Yields a list filled when the block ends.

    Example:
        >>> with allocator_events() as events:
        ...     y = torch.ones(256, 256) * 2
        >>> max(e.nbytes for e in events)
        262144
    """
    from torch.profiler import ProfilerActivity, profile

    kind = torch.device(device).type
    events: list[AllocatorEvent] = []
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
    with _quiet_native_stderr():  # NOTE [ The profiler's start and stop lines ]
        prof.__enter__()
    try:
        yield events
    finally:
        with _quiet_native_stderr():
            prof.__exit__(None, None, None)
    found = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        fields = e.extra_fields
        if type(fields).__name__ != "_ExtraFields_Allocation" or torch.device(fields.device).type != kind:
            continue
        chain, parent = [], e.parent
        while parent is not None:
            chain.append(parent.name)
            parent = parent.parent
        chain.reverse()  # outermost first
        found.append((e.start_time_ns, fields.id, AllocatorEvent(
            fields.alloc_size, fields.ptr, next((n for n in chain if n.startswith("aten::")), None),
            next((n for n in chain if not n.startswith(("aten::", _ENGINE))), None),
            any(n.startswith(_ENGINE) for n in chain), fields.total_allocated)))
    events.extend(event for *_, event in sorted(found, key=lambda f: f[:2]))


@dataclass(frozen=True)
class ProfiledMemory:
    """What `profiled_memory` saw."""

    result: Any  # what the function returned
    peak_bytes: int  # largest allocated-and-not-freed total, above what was allocated before
    end_bytes: int  # still allocated at the end
    peak_op: str | None  # the outermost aten op running when the peak was reached (None: between ops)


def profiled_memory(fn: Callable[[], Any]) -> ProfiledMemory:
    """Run ``fn()`` and read the CPU allocator's events (`allocator_events`) in time order: every
    allocation and free, of eager ops, inductor buffers and op-internal scratch alike."""
    with allocator_events("cpu") as events:
        result = fn()
    current = peak = 0
    peak_op = None
    for e in events:
        current += e.nbytes
        if current > peak:
            peak, peak_op = current, e.op
    return ProfiledMemory(result, peak, current, peak_op)


def profiled_peak_bytes(fn: Callable[[], Any]) -> int:
    """The peak of CPU-allocator bytes allocated and not yet freed while ``fn()`` runs, above
    what was allocated before (see `profiled_memory`)."""
    return profiled_memory(fn).peak_bytes
