"""Profile the memory of a training step: a per-op timeline of live bytes with module scope, the
peak, and a per-layer breakdown; and the plots that show them (`MemoryVisualizer`).

The bytes are `fxckpt.measure.LiveBytesMode`'s (live tensor storages created during the step,
exact on any device); on CUDA the allocator's own counters are recorded beside them. The module
running each op comes from torch's ``ModuleTracker`` (forward hooks, and gradient hooks for
backward). Matplotlib is imported on first plot (``pip install fxckpt[plot]``).

NOTE [ Profiling compiled models ]
Dynamo runs a frame eagerly while a dispatch mode is active, so `LiveBytesMode` would profile the
uncompiled model in place of the compiled one (a dropout MLP whose plan runs in 2.00 MiB read as
its eager 3.25 MiB). A `torch.compile` result is therefore profiled from the allocator's events
(`fxckpt.measure.allocator_events`): one record per allocation or free, scoped by the compiled
region or backward node it ran in, counting what was allocated inside the profile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.module_tracker import ModuleTracker

from .core.errors import MIB
from .measure import Allocation, LiveBytesMode, allocator_events

__all__ = ["LayerMemory", "MemoryProfile", "MemoryProfiler", "MemoryVisualizer", "OpRecord"]

ROOT, OUTSIDE = "(model)", "(outside)"


@dataclass(frozen=True)
class OpRecord:
    """One op of the profiled step, and the memory right after it ran."""

    op: str  # the aten overload, e.g. "aten.mm.default" (compiled models: the profiler's "aten::mm")
    scope: str  # innermost module running it, relative to the profiled model (compiled: the region)
    phase: str  # "forward" or "backward"
    live_bytes: int  # live storages created during the step
    allocated_bytes: int | None = None  # CUDA: memory_allocated() minus its value at the start


@dataclass(frozen=True)
class LayerMemory:
    """What one module scope allocated during the step.

    activation_bytes: created in forward and still alive when backward starts (held for backward,
        or the output the caller holds); the bytes checkpointing can remove.
    gradient_bytes: created in backward and alive after it (the ``.grad`` of parameters).
    temporary_bytes: the largest total of its other storages alive at one time (forward
        intermediates freed in forward, gradients of activations freed in backward).
    """

    scope: str
    activation_bytes: int
    gradient_bytes: int
    temporary_bytes: int


@dataclass(frozen=True)
class _Life:
    nbytes: int
    born: int
    died: int  # first op after which it was dead; len(timeline) if it outlived the step
    scope: str
    kind: str  # "activation", "gradient" or "temporary"


@dataclass(frozen=True)
class MemoryProfile:
    """A profiled training step (`MemoryProfiler.result`).

    Attributes:
        timeline: one `OpRecord` per dispatched op, in order.
        peak_bytes: the largest live total of the step (``max`` of the timeline's ``live_bytes``).
        peak_index: the timeline index where it is reached (first, on a tie).
        backward_start: the index of the first backward op (``len(timeline)`` if none ran).
        allocator_peak_bytes: CUDA: ``max_memory_allocated()`` during the step minus
            ``memory_allocated()`` before it (sees allocator scratch that storages do not); CPU: None.
        device, name: where it ran, and a label for plots.
    """

    timeline: tuple[OpRecord, ...]
    peak_bytes: int
    peak_index: int
    backward_start: int
    device: str
    name: str = "step"
    allocator_peak_bytes: int | None = None
    lives: tuple[_Life, ...] = field(default=(), repr=False)

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    @property
    def peak_op(self) -> OpRecord | None:
        return self.timeline[self.peak_index] if self.timeline else None

    @property
    def layers(self) -> tuple[LayerMemory, ...]:
        """The per-layer breakdown at the innermost module scopes (`breakdown`)."""
        return self.breakdown()

    def breakdown(self, depth: int | None = None) -> tuple[LayerMemory, ...]:
        """Activations, gradients and temporaries per module scope, in first-use order.

        Args:
            depth: group scopes by their first ``depth`` dotted components (``depth=3`` puts
                ``transformer.h.0.attn.c_attn`` under ``transformer.h.0``); None: innermost.

        Example:
            >>> profiler = MemoryProfiler()
            >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
            >>> x = torch.randn(256, 64)
            >>> with profiler.profile(model):
            ...     model(x).sum().backward()
            >>> [(l.scope, l.activation_bytes) for l in profiler.result().breakdown()][:2]
            [('0', 0), ('1', 65536)]
        """
        groups: dict[str, list[_Life]] = {}
        for life in self.lives:
            scope = life.scope if depth is None else ".".join(life.scope.split(".")[:depth])
            groups.setdefault(scope, []).append(life)
        return tuple(LayerMemory(scope, sum(l.nbytes for l in lives if l.kind == "activation"),
                                 sum(l.nbytes for l in lives if l.kind == "gradient"),
                                 _peak_of([l for l in lives if l.kind == "temporary"]))
                     for scope, lives in groups.items())

    def summary(self) -> str:
        op = self.peak_op
        at = f" at {op.op} in {op.scope} ({op.phase}, op {self.peak_index} of {len(self.timeline)})" if op else ""
        cuda = "" if self.allocator_peak_bytes is None else f", allocator peak {self.allocator_peak_bytes / MIB:.2f} MiB"
        return f"{self.name} on {self.device}: peak {self.peak_mib:.2f} MiB{at}{cuda}"


def _peak_of(lives: Sequence[_Life]) -> int:
    """The largest total of `lives` alive at once."""
    events = sorted([(l.born, l.nbytes) for l in lives] + [(l.died, -l.nbytes) for l in lives],
                    key=lambda e: (e[0], e[1]))  # frees at a step count before allocations there
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def _innermost(parents: set[str], root: str | None) -> str:
    """The deepest module among ModuleTracker's active ones, relative to the profiled model."""
    names = [p for p in parents if p != "Global"]
    if not names:
        return OUTSIDE
    name = max(names, key=lambda p: p.count("."))
    if root is None or "." not in name:
        return ROOT if name == root else name
    # The first component names the outermost module called: the profiled model, or one it runs
    # on the same submodules (a `CheckpointedModule`'s graph module shares the model's children).
    return name.split(".", 1)[1]


class MemoryProfiler:
    """Records what a training step's tensors occupy, op by op, with the module that ran each op.

    Only storages created inside ``profile()`` count: parameters, optimizer state and inputs made
    before it are excluded, gradients created in the step (``.grad`` that was None) included.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``): on CUDA the allocator's counters are
            recorded too. Live bytes are counted on every device.

    A ``torch.compile`` result (``model``) is profiled from the allocator's events, one record per
    allocation or free: scopes are its compiled regions and backward nodes, not modules
    (NOTE [ Profiling compiled models ]).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU())
        >>> x = torch.randn(512, 512)
        >>> profiler = MemoryProfiler("cpu")
        >>> with profiler.profile(model):
        ...     model(x).sum().backward()
        >>> round(profiler.result().peak_mib, 2)  # relu's saved output, then its gradient beside it
        2.0
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"MemoryProfiler profiles 'cpu' or 'cuda', got {device!r}")
        self._result: MemoryProfile | None = None

    @contextlib.contextmanager
    def profile(self, model: torch.nn.Module | None = None, name: str | None = None, *,
                preallocate_grads: bool = False) -> Iterator[MemoryProfiler]:
        """Profile the code inside the ``with`` block (one or more training steps).

        Args:
            model: scopes are named relative to it (``"layers.0.fc"``; its own ops: ``"(model)"``;
                ops in no module, e.g. a loss outside it: ``"(outside)"``).
            name: the label of the result in plots (default: the model's class name).
            preallocate_grads: first give every parameter of ``model`` that requires grad and has
                no ``.grad`` a zero one (left in place), so the profile counts what a plan's
                activation peak counts (`fxckpt.measure_step`'s convention).
        """
        if preallocate_grads:
            if model is None:
                raise ValueError("preallocate_grads=True needs the model whose gradients to allocate")
            for p in model.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        tracker = ModuleTracker()
        root = type(model).__name__ if model is not None else None

        def label():
            allocated = torch.cuda.memory_allocated(self.device) - before if cuda else None
            return _innermost(tracker.parents, root), tracker.is_bw, allocated

        self._result = None
        if _is_compiled(model):
            with allocator_events(self.device) as events:
                yield self
            timeline, allocations = _from_allocator(events, before if cuda else None)
        else:
            with tracker, LiveBytesMode(label=label) as live:
                yield self
            live.current_bytes  # noqa: B018  a last sweep closes the storages that died at the end
            timeline = tuple(OpRecord(op, scope, "backward" if bw else "forward", nbytes, allocated)
                             for (nbytes, op), (scope, bw, allocated) in zip(live.timeline, live.labels))
            allocations = live.allocations
        allocator_peak = None
        if cuda:
            torch.cuda.synchronize(self.device)
            allocator_peak = torch.cuda.max_memory_allocated(self.device) - before
        self._result = _result(timeline, allocations, str(self.device), name or (root or "step"), allocator_peak)

    def result(self) -> MemoryProfile:
        """The last profiled step.

        Raises:
            RuntimeError: nothing was profiled yet (or the ``with`` block is still running).
        """
        if self._result is None:
            raise RuntimeError("no profile yet: run a step inside `with profiler.profile(model):` first")
        return self._result


def _is_compiled(model) -> bool:
    """A `torch.compile` result, or a module compiled in place (``module.compile()``)."""
    return isinstance(model, torch._dynamo.eval_frame.OptimizedModule) or \
        getattr(model, "_compiled_call_impl", None) is not None


def _from_allocator(events, cuda_before: int | None) -> tuple[tuple[OpRecord, ...], list[Allocation]]:
    """One record per allocation or free, counting what was allocated during the profile (a free
    of older memory is not subtracted, as `LiveBytesMode` never counts older storages)."""
    timeline, allocations, open_ = [], [], {}
    live = 0
    for i, e in enumerate(events):
        if e.nbytes > 0:
            open_[e.ptr] = Allocation(e.nbytes, i)
            allocations.append(open_[e.ptr])
            live += e.nbytes
        elif e.ptr in open_:
            open_.pop(e.ptr).died = i
            live += e.nbytes
        allocated = None if cuda_before is None else e.total_allocated - cuda_before
        timeline.append(OpRecord(e.op or "(between ops)", e.region or OUTSIDE,
                                 "backward" if e.backward else "forward", live, allocated))
    return tuple(timeline), allocations


def _result(timeline: tuple[OpRecord, ...], allocations, device: str, name: str,
            allocator_peak: int | None) -> MemoryProfile:
    n = len(timeline)
    bstart = next((i for i, r in enumerate(timeline) if r.phase == "backward"), n)
    lives = []
    for a in allocations:
        died = n if a.died is None else a.died  # None: still alive when the profile ended
        if a.born < bstart:
            kind = "activation" if died > bstart else "temporary"
        else:
            kind = "gradient" if a.died is None else "temporary"
        lives.append(_Life(a.nbytes, a.born, died, timeline[a.born].scope, kind))
    peak_index = max(range(n), key=lambda i: (timeline[i].live_bytes, -i)) if n else 0
    return MemoryProfile(timeline, timeline[peak_index].live_bytes if n else 0, peak_index, bstart, device, name,
                         allocator_peak, tuple(lives))


# ---------------------------------------------------------------- plots


def _named(results) -> list[tuple[str, Any]]:
    if isinstance(results, Mapping):
        return list(results.items())
    if not isinstance(results, (list, tuple)):
        results = [results]
    return [(getattr(r, "name", None) or f"run {i}", r) for i, r in enumerate(results)]


def _get(row, *keys):
    for key in keys:
        value = row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)
        if value is not None:
            return value
    return None


def _points(rows) -> list[tuple[str, float, float]]:
    """(label, peak MiB, compute overhead %) of each strategy: a `Plan` (predicted peak, recompute
    FLOPs over a step's), or a row with ``strategy``/``name``, ``peak_mib``/``peak_bytes`` and
    ``flops_overhead_pct`` (``fxckpt.benchmark.compare_strategies`` rows)."""
    from .core.plan import Plan

    out = []
    for i, row in enumerate(rows):
        if isinstance(row, Plan):
            budget = "" if row.budget_bytes is None else f" @ {row.budget_bytes / MIB:.0f} MiB"
            out.append((f"{row.solver}{budget}", row.predicted_peak_mib, 100 * row.recompute_overhead))
            continue
        label = _get(row, "strategy", "name") or f"row {i}"
        peak = _get(row, "peak_mib")
        peak = peak if peak is not None else (_get(row, "peak_bytes") or 0) / MIB
        out.append((str(label), float(peak), float(_get(row, "flops_overhead_pct", "overhead_pct") or 0.0)))
    return out


def _forward_end(labels: Sequence[str]) -> int:
    return next((i for i, label in enumerate(labels) if not label.startswith("forward")), len(labels))


def _align(n: int, forward: int, measured: MemoryProfile) -> list[float]:
    """x positions mapping `n` simulated steps (`forward` of them in forward) onto the measured
    op indices: forward onto the measured forward ops, the rest onto its backward ones."""
    f, total = measured.backward_start, max(1, len(measured.timeline) - 1)
    xs = []
    for i in range(n):
        if i < forward:
            xs.append(f * i / max(1, forward))
        else:
            xs.append(f + (total - f) * (i - forward) / max(1, n - 1 - forward))
    return xs


class MemoryVisualizer:
    """Matplotlib figures of profiles, plans and strategy comparisons.

    Every method returns the ``Figure`` and, with ``path=``, also saves it (the format from the
    suffix: ``.png`` or ``.svg``).

    Example:
        >>> profiler = MemoryProfiler()
        >>> model, x = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()), torch.randn(128, 64)
        >>> with profiler.profile(model):
        ...     model(x).sum().backward()
        >>> fig = MemoryVisualizer().plot_memory_timeline(profiler.result())
    """

    def __init__(self, figsize: tuple[float, float] = (9.0, 4.0)):
        self.figsize = figsize

    def _figure(self, **kwargs):
        from .viz import pyplot

        return pyplot().subplots(figsize=self.figsize, **kwargs)

    @staticmethod
    def _finish(fig, path):
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

    def plot_memory_timeline(self, results, *, predicted=None, path=None):
        """Live MiB after every op of each profile, its peak marked, backward shaded.

        Args:
            results: a `MemoryProfile`, a sequence of them, or a mapping label -> profile.
            predicted: overlay a plan's simulated timeline: a `CheckpointedModule` (its
                ``problem`` and ``plan``) or a ``(problem, plan)`` pair. Its forward is stretched
                over the first profile's forward ops and its backward over the backward ops; the
                simulator counts the activation peak (gradients preallocated), so profile with
                ``preallocate_grads=True`` to compare like with like.
            path: save the figure there too.
        """
        from .viz import simulated_timeline

        named = _named(results)
        fig, ax = self._figure()
        for label, r in named:
            ax.plot([op.live_bytes / MIB for op in r.timeline], lw=1, label=f"{label} (peak {r.peak_mib:.1f} MiB)")
            if r.timeline:
                ax.plot([r.peak_index], [r.peak_mib], "v", color=ax.lines[-1].get_color())
            if r.allocator_peak_bytes is not None:
                ax.plot([(op.allocated_bytes or 0) / MIB for op in r.timeline], lw=0.8, ls=":",
                        label=f"{label}: CUDA allocator")
        if named and named[0][1].timeline:
            first = named[0][1]
            ax.axvspan(first.backward_start, len(first.timeline) - 1, color="0.92", zorder=0, label="backward")
        if predicted is not None:
            problem, plan = predicted if isinstance(predicted, tuple) else (predicted.problem, predicted.plan)
            steps = simulated_timeline(problem, plan)
            if named and named[0][1].timeline:
                xs = _align(len(steps), _forward_end([s for _, s in steps]), named[0][1])
                where = "aligned to the measured ops"
            else:
                xs, where = list(range(len(steps))), "simulated steps"
            ax.plot(xs, [b / MIB for b, _ in steps], lw=1.2, ls="--", color="k",
                    label=f"predicted ({plan.solver}, peak {plan.predicted_peak_mib:.1f} MiB; {where})")
        ax.set_xlabel("op (forward, then backward)")
        ax.set_ylabel("live MiB")
        ax.legend(loc="upper left", fontsize=8)
        return self._finish(fig, path)

    def plot_memory_vs_compute_tradeoff(self, results, *, path=None):
        """Peak MiB against compute overhead (% FLOPs over a plain step) per strategy, with the
        frontier of strategies no other one beats on both.

        Args:
            results: `Plan` objects (e.g. one per budget) and/or rows with ``strategy``,
                ``peak_mib`` and ``flops_overhead_pct`` (``compare_strategies`` rows).
            path: save the figure there too.
        """
        points = _points(results)
        fig, ax = self._figure()
        ax.scatter([p[2] for p in points], [p[1] for p in points], s=18, zorder=3)
        for label, peak, overhead in points:
            ax.annotate(label, (overhead, peak), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((p for p in points if not any(
            q[1] <= p[1] and q[2] <= p[2] and (q[1], q[2]) != (p[1], p[2]) for q in points)), key=lambda p: p[2])
        ax.step([p[2] for p in front], [p[1] for p in front], where="post", lw=0.8, color="C1", label="frontier")
        ax.set_xlabel("compute overhead (% FLOPs over no checkpointing)")
        ax.set_ylabel("peak MiB")
        ax.legend(loc="upper right", fontsize=8)
        return self._finish(fig, path)

    def plot_layer_heatmap(self, result: MemoryProfile, *, depth: int | None = None, path=None):
        """Layers x (activations, gradients, temporaries) in MiB, one row per module scope.

        Args:
            result: a `MemoryProfile`.
            depth: group scopes to this many dotted components (`MemoryProfile.breakdown`).
            path: save the figure there too.
        """
        layers = result.breakdown(depth)
        grid = [[l.activation_bytes / MIB, l.gradient_bytes / MIB, l.temporary_bytes / MIB] for l in layers]
        fig, ax = self._figure()
        fig.set_size_inches(self.figsize[0], max(2.5, 0.22 * len(layers) + 1.2))
        image = ax.imshow(grid or [[0, 0, 0]], aspect="auto", cmap="viridis")
        ax.set_xticks(range(3), ["activations", "gradients", "temporaries"])
        ax.set_yticks(range(len(layers)), [l.scope for l in layers], fontsize=7)
        fig.colorbar(image, ax=ax, label="MiB")
        ax.set_title(f"{result.name}: memory per layer (peak {result.peak_mib:.1f} MiB)", fontsize=9)
        return self._finish(fig, path)

    def plot_strategy_comparison(self, rows, *, path=None):
        """Bars of peak MiB and compute overhead per strategy, side by side.

        Args:
            rows: as for `plot_memory_vs_compute_tradeoff`.
            path: save the figure there too.
        """
        points = _points(rows)
        fig, (left, right) = self._figure(ncols=2, sharey=True)
        ys = range(len(points))
        left.barh(ys, [p[1] for p in points], color="C0")
        left.set_yticks(ys, [p[0] for p in points], fontsize=8)
        left.invert_yaxis()
        left.set_xlabel("peak MiB")
        right.barh(ys, [p[2] for p in points], color="C1")
        right.set_xlabel("compute overhead (% FLOPs)")
        for ax, values, fmt in ((left, [p[1] for p in points], "{:.1f}"), (right, [p[2] for p in points], "{:+.1f}%")):
            for y, v in zip(ys, values):
                ax.annotate(fmt.format(v), (v, y), fontsize=7, xytext=(2, 0), textcoords="offset points", va="center")
        return self._finish(fig, path)
