"""Running strategies: `compare_strategies` measures one training step of a model under each
strategy, every one the same way (see the package's docstring), and returns a `StrategyResult`
per strategy."""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib
import logging
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..core.errors import MIB, InfeasibleBudgetError
from ..measure import LiveBytesMode
from ..passes.capture import call_with, step_loss, training_kwargs
from .flops import flop_counter
from .isolate import CannotIsolate, ChildCrashed, call_isolated
from .meters import forward_memory_check, profiled_memory
from .results import ZERO_GRADS, StrategyResult
from .strategies import DEFAULT_BUDGETS, Prepared, SkipStrategy, Strategy, expand, strategy
from .zoo import ZOO, transformer

__all__ = ["ISOLATED", "compare_strategies"]

# Rows whose names start so run in a process of their own (NOTE [ Compiled rows run in their own process ]).
ISOLATED = ("compile ", "fxckpt compile ")

log = logging.getLogger(__name__)


@dataclass
class _Measured:
    peak_bytes: int
    flops: int
    seconds: float  # median of the timed steps
    first_seconds: float  # the warm-up step (compiles, for compiled strategies)
    grads: dict[str, torch.Tensor]
    live_bytes: int | None = None
    forward_check: tuple[int, int] | None = None  # see forward_memory_check
    baseline_seconds: float | None = None  # median of the "none" steps timed in between
    times: list[float] = field(default_factory=list)  # the timed steps
    baseline_times: list[float] = field(default_factory=list)  # the "none" step after each
    peak_op: str | None = None  # the aten op running at the profiler's peak


class _Stepper:
    """Training steps of one prepared strategy, each from the same state: every ``.grad``
    allocated (zeroed), the buffers as they were when the stepper was made, and the seed."""

    def __init__(self, prep: Prepared, example, seed: int):
        self.prep, self.example, self.seed = prep, example, seed
        self.named = [(n, p) for n, p in prep.inner.named_parameters() if p.requires_grad]
        self.buffers = list(prep.inner.buffers())
        self.saved_buffers = [b.detach().clone() for b in self.buffers]
        for _, p in self.named:
            p.grad = torch.zeros_like(p)

    def reset(self) -> None:
        with torch.no_grad():
            for _, p in self.named:
                p.grad.zero_()
            for b, saved in zip(self.buffers, self.saved_buffers):
                b.copy_(saved)
        torch.manual_seed(self.seed)

    def step(self) -> None:
        with self.prep.context():
            output = call_with(self.prep.module, self.example)
            step_loss(output).backward()

    def timed_step(self) -> float:
        self.reset()
        t0 = time.perf_counter()
        self.step()
        return time.perf_counter() - t0

    def grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad.detach().clone() for n, p in self.named}

    def preexisting(self) -> list[torch.Tensor]:
        """Tensors that exist before a step: parameters, gradients, buffers, inputs."""
        params = [p for _, p in self.prep.inner.named_parameters()]
        grads = [p.grad for _, p in self.named]
        inputs = [t for t in pytree.tree_leaves(self.example) if isinstance(t, torch.Tensor)]
        return params + grads + self.buffers + inputs

    def close(self) -> None:
        with torch.no_grad():
            for b, saved in zip(self.buffers, self.saved_buffers):
                b.copy_(saved)
        for _, p in self.named:
            p.grad = None


def _measure(stepper: _Stepper, *, iterations: int, live: bool, forward_check: bool,
             baseline: _Stepper | None) -> _Measured:
    """A warm-up step that counts FLOPs (compiles, for compiled strategies), a profiled step
    (peak, gradients), optionally a LiveBytesMode step and a `forward_memory_check` step, then
    ``iterations`` timed steps, each followed by a timed step of ``baseline`` (so that both
    medians come from the same stretch of time on a shared machine)."""
    prep = stepper.prep
    stepper.reset()
    t0 = time.perf_counter()
    if prep.counter is not None:
        prep.counter.flops = 0
        stepper.step()
        flops = prep.counter.flops
    else:
        with flop_counter() as counter:
            stepper.step()
        flops = counter.get_total_flops()
    measured = _Measured(0, int(flops), 0.0, time.perf_counter() - t0, {})
    stepper.reset()
    profiled = profiled_memory(stepper.step)
    measured.peak_bytes, measured.peak_op = profiled.peak_bytes, profiled.peak_op
    measured.grads = stepper.grads()
    if live and prep.counter is None:  # not compiled rows: under a dispatch mode, Dynamo runs the model eagerly
        stepper.reset()
        with LiveBytesMode() as mode:
            stepper.step()
        measured.live_bytes = mode.peak_bytes
    if forward_check:
        stepper.reset()
        with prep.context():
            measured.forward_check = forward_memory_check(prep.module, stepper.example, stepper.preexisting())
    for _ in range(max(1, iterations)):
        measured.times.append(stepper.timed_step())
        if baseline is not None:
            measured.baseline_times.append(baseline.timed_step())
    measured.seconds = statistics.median(measured.times)
    if measured.baseline_times:
        measured.baseline_seconds = statistics.median(measured.baseline_times)
    return measured


def _max_grad_diff(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference of any gradient element from the reference's."""
    return max(_grad_diffs(grads, reference), default=(0.0, 0.0))[0]


def _max_relative_grad_diff(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """The largest of (largest absolute difference / largest absolute reference value) per parameter."""
    return max((rel for _, rel in _grad_diffs(grads, reference)), default=0.0)


def _zeroed_grads(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> list[str]:
    """Parameters whose gradient is all zeros although the reference's is not."""
    return [n for n, g in reference.items() if n in grads and bool(g.any()) and not bool(grads[n].any())]


def _grad_diffs(grads, reference):
    for name, g in reference.items():
        if name not in grads:
            yield math.inf, math.inf
            continue
        diff = (grads[name].float() - g.float()).abs().max().item() if g.numel() else 0.0
        scale = g.float().abs().max().item() if g.numel() else 0.0
        yield diff, (diff / scale if scale else (math.inf if diff else 0.0))


def _run_one(name: str, strategy_fn: Strategy, base: nn.Module, example, *, model_name: str, iterations: int,
             seed: int, live: bool, reference: _Measured | None,
             baseline: _Stepper | None) -> tuple[StrategyResult, _Measured | None]:
    model = copy.deepcopy(base)
    stepper = None
    try:
        prep = strategy_fn(model, example)
        stepper = _Stepper(prep, example, seed)
        measured = _measure(stepper, iterations=iterations, live=live, baseline=baseline,
                            forward_check=name == "none" or prep.counter is not None)
    except SkipStrategy as e:
        return StrategyResult(model_name, name, status=str(e)), None
    except InfeasibleBudgetError as e:
        pinned = f"; held at the peak: {', '.join(e.pinned[:4])}{' ...' if len(e.pinned) > 4 else ''}" if e.pinned else ""
        return StrategyResult(model_name, name, status="infeasible", budget_mib=e.budget_bytes / MIB,
                              notes=f"smallest feasible {e.min_feasible_bytes / MIB:.1f} MiB{pinned}"), None
    except Exception as e:  # recorded, never hidden: the status names the exception
        log.warning("%s: %s failed: %s: %s", model_name, name, type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return StrategyResult(model_name, name, status=type(e).__name__, notes=first), None
    finally:
        if stepper is not None:
            stepper.close()
        if name.startswith("compile"):
            torch._dynamo.reset()
    return _finish_row(name, model_name, prep, measured, reference, _has_dropout(base)), measured


def _run_isolated(name: str, strategy_fn: Strategy, base: nn.Module, example, rows: dict[str, StrategyResult], *,
                  baseline: _Stepper | None, **run) -> StrategyResult:
    """`_run_one` in a child process (NOTE [ Compiled rows run in their own process ]); a crash is
    the row's status. The child pairs its timed steps with a "none" stepper of its own."""
    try:
        return call_isolated(_row_in_child, name, strategy_fn.__module__, rows, base, example, baseline is not None,
                             torch.get_num_threads(), run)
    except CannotIsolate as e:
        log.info("%s: %s runs in this process: %s", run["model_name"], name, e)
    except ChildCrashed as e:
        log.warning("%s: %s: its process died (%s)", run["model_name"], name, e)
        return StrategyResult(run["model_name"], name, status=f"crashed ({e})",
                              notes="the row's own process died inside the step (a compiler crash); the other rows "
                                    "ran in other processes")
    return _run_one(name, strategy_fn, base, example, baseline=baseline, **run)[0]


def _row_in_child(name: str, module: str, rows: dict[str, StrategyResult], base: nn.Module, example, paired: bool,
                  threads: int, run: dict) -> StrategyResult:
    torch.set_num_threads(threads)
    importlib.import_module(module)  # registers strategies defined by the caller's module
    try:
        strategy_fn = strategy(name, rows)
    except ValueError as e:  # registered at run time in the parent (e.g. inside a function)
        raise CannotIsolate(str(e)) from None
    baseline = _Stepper(Prepared(*(2 * [copy.deepcopy(base)])), example, run["seed"]) if paired else None
    try:
        return _run_one(name, strategy_fn, base, example, baseline=baseline, **run)[0]
    finally:
        if baseline is not None:
            baseline.close()


def _finish_row(name: str, model_name: str, prep: Prepared, measured: _Measured, reference: _Measured | None,
                dropout: bool) -> StrategyResult:
    notes = list(prep.notes)
    predicted = prep.predict() if prep.predict is not None else prep.predicted_bytes
    row = dict(peak_mib=measured.peak_bytes / MIB, flops=measured.flops,
               step_seconds=measured.seconds, predicted_mib=_mib(predicted), budget_mib=_mib(prep.budget_bytes),
               live_peak_mib=_mib(measured.live_bytes), forward_check_bytes=measured.forward_check,
               peak_op=measured.peak_op,
               none_step_seconds=measured.baseline_seconds, step_times=measured.times,
               none_step_times=measured.baseline_times or None)
    if prep.counter is not None:
        row["setup_seconds"], row["setup_kind"] = measured.first_seconds - measured.seconds, "compile"
        notes.append(f"{prep.counter.graphs} compiled graphs (forward and backward)")
    elif prep.setup_seconds is not None:
        row["setup_seconds"], row["setup_kind"] = prep.setup_seconds, "solve"
    row["time_range_pct"] = _time_range(measured)
    if reference is None:  # this is "none"
        row.update(saved_pct=0.0, flops_overhead_pct=0.0, time_overhead_pct=0.0, grad_diff=0.0)
    else:
        row["saved_pct"] = 100 * (1 - measured.peak_bytes / reference.peak_bytes)
        row["flops_overhead_pct"] = 100 * (measured.flops / reference.flops - 1) if reference.flops else None
        base_seconds = measured.baseline_seconds or reference.seconds
        row["time_overhead_pct"] = 100 * (measured.seconds / base_seconds - 1)
        row["grad_diff"] = _max_grad_diff(measured.grads, reference.grads)
        if row["grad_diff"] > 0:
            notes.append(f"largest gradient difference relative to that parameter's largest gradient: "
                         f"{_max_relative_grad_diff(measured.grads, reference.grads):.2g}")
        zeroed = _zeroed_grads(measured.grads, reference.grads)
        if zeroed:
            row["status"] = ZERO_GRADS
            notes.insert(0, f"WRONG GRADIENTS: {len(zeroed)} parameter(s) get all-zero gradients where none's are "
                            f"non-zero (e.g. {', '.join(zeroed[:3])})")
        if prep.counter is not None and row["grad_diff"] > 0 and dropout:
            notes.append("dropout: inductor draws its own random numbers, so gradients differ from eager")
    if measured.live_bytes is not None and reference is None:
        agree = 100 * (measured.peak_bytes / measured.live_bytes - 1) if measured.live_bytes else math.nan
        notes.append(f"profiler peak vs LiveBytesMode: {agree:+.2f}%")
    if measured.forward_check is not None:
        live_end, expected = measured.forward_check
        notes.append(f"profiler check: live after forward {live_end / MIB:.1f} MiB vs saved-for-backward + outputs "
                     f"{expected / MIB:.1f} MiB ({100 * (live_end / expected - 1) if expected else math.nan:+.2f}%)")
    return StrategyResult(model_name, name, **row, notes="; ".join(notes))


def _time_range(measured: _Measured) -> list[float]:
    """The spread of the time overhead, in %: the smallest and largest ratio of a timed step to
    the "none" step timed right after it (for "none" itself: of a step to the median)."""
    if measured.baseline_times:
        ratios = [t / b for t, b in zip(measured.times, measured.baseline_times)]
    else:
        ratios = [t / measured.seconds for t in measured.times]
    return [100 * (min(ratios) - 1), 100 * (max(ratios) - 1)]


def _mib(nbytes):
    return None if nbytes is None else nbytes / MIB


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


_TUTORIAL_SHAPE = ("num_layers", "hidden_size", "batch_size", "sequence_length")


def compare_strategies(model_or_name: nn.Module | str | None = None, example_input: Any = None, *,
                       strategies: Sequence[str] | None = None, iterations: int = 3,
                       budgets: Sequence[float] = DEFAULT_BUDGETS, seed: int = 0,
                       live_check: Sequence[str] = ("none", "fxckpt"), model_name: str | None = None,
                       num_layers: int | None = None, hidden_size: int | None = None, batch_size: int | None = None,
                       sequence_length: int | None = None, progress: bool | None = None,
                       isolate: Sequence[str] = ISOLATED) -> list[StrategyResult]:
    """Measure one training step of a model under each checkpointing strategy.

    Three ways to name the model: a module and its example input; a `ZOO` name; or, as in the
    tutorial, a transformer's shape (``num_layers``, ``hidden_size``, ``batch_size``,
    ``sequence_length``; GPT-2 of that shape with random weights, see `zoo.transformer`).

    Args:
        model_or_name: an ``nn.Module`` (then ``example_input`` is required), a `ZOO` name, or
            None with the shape arguments.
        example_input: a tensor, a tuple of positional arguments or a dict of keyword arguments.
        strategies: registered names (`STRATEGIES`, also ``"every-K"``, ``"compile budget F"``,
            ``"fxckpt N%"``, ``"fxckpt @ X"``, ``"fxckpt @ *"``); default: all, with the fxckpt
            budgets from ``budgets`` and an ``"fxckpt @ X"`` row for every other measured X.
            ``"none"`` is always measured (first): the other rows are relative to it.
        iterations: timed steps per strategy (after a warm-up); the median is reported.
        budgets: fractions for the default ``"fxckpt N%"`` rows.
        seed: ``torch.manual_seed`` before every step (dropout draws the same numbers).
        live_check: strategies (exact names, or ``"fxckpt"`` for all fxckpt rows) that also get a
            `LiveBytesMode` step (eager only), reported as ``live_peak_mib``.
        model_name: the ``model`` column (default: the zoo name, the class name, or the shape).
        num_layers, hidden_size, batch_size, sequence_length: the tutorial's transformer shape
            (defaults 12, 768, 4, 512 where one of them is given).
        progress: also print a line per strategy to stderr (the same lines are logged at INFO);
            default: on for the tutorial's shape form, whose full-size transformer runs for minutes.
        isolate: name prefixes of the rows run each in a process of their own (default: the
            compiled rows), so that a crash in a compiler becomes that row's status
            (``"crashed (SIGSEGV)"``) instead of ending the comparison. A row whose model, input
            or strategy cannot be sent to a child process (pickle) runs in this process.

    Returns:
        One `StrategyResult` per strategy, in run order (``status`` ``"ok"`` where measured).

    Example:
        >>> rows = compare_strategies("quick", strategies=["none", "every-2", "fxckpt 50%"], iterations=1)
        >>> [r.status for r in rows]
        ['ok', 'ok', 'ok']
    """
    shape = {k: v for k, v in zip(_TUTORIAL_SHAPE, (num_layers, hidden_size, batch_size, sequence_length))
             if v is not None}
    if shape:
        if model_or_name is not None:
            raise TypeError(f"pass either a model (or zoo name) or a transformer shape ({', '.join(shape)}), not both")
        model_or_name, example_input, model_name = _tutorial_transformer(shape, model_name)
    progress = bool(shape) if progress is None else progress
    if isinstance(model_or_name, str):
        entry = ZOO.get(model_or_name)
        if entry is None:
            raise ValueError(f"unknown zoo model {model_or_name!r}; known: {', '.join(ZOO)}")
        name = model_name or model_or_name
        with _threads(entry.threads):
            try:
                base, example = entry.build()
            except ImportError as e:
                return [StrategyResult(name, "(all)", status=f"{e.name or 'dependency'} not installed")]
            return _compare(base, example, name, strategies=strategies, iterations=iterations, budgets=budgets,
                            seed=seed, live_check=live_check, progress=progress, isolate=isolate)
    if model_or_name is None or example_input is None:
        raise ValueError("pass a module and its example_input, a zoo name, or a transformer shape "
                         "(num_layers=, hidden_size=, batch_size=, sequence_length=)")
    return _compare(model_or_name, example_input, model_name or type(model_or_name).__name__, strategies=strategies,
                    iterations=iterations, budgets=budgets, seed=seed, live_check=live_check, progress=progress,
                    isolate=isolate)


def _tutorial_transformer(shape: dict[str, int], model_name: str | None):
    shape = {**dict(zip(_TUTORIAL_SHAPE, (12, 768, 4, 512))), **shape}
    model, example = transformer(**shape)
    name = model_name or ("transformer {num_layers}x{hidden_size}, batch {batch_size} x seq {sequence_length}"
                          .format(**shape))
    return model, example, name


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch threads (None: as is), restoring the count afterwards."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _compare(base: nn.Module, example, name: str, *, strategies, iterations, budgets, seed, live_check,
             progress, isolate) -> list[StrategyResult]:
    """The comparison on one built model: "none" first, then each strategy on a fresh copy, then
    (for ``"fxckpt @ *"``) fxckpt at every anchor's measured peak."""
    if isinstance(example, dict):
        example = training_kwargs(base, example)  # use_cache=False for every strategy alike
    names, all_anchors = expand(strategies, budgets)
    rows: dict[str, StrategyResult] = {}
    reference = baseline = None
    rng = torch.get_rng_state()
    t_start = time.perf_counter()
    try:
        queue = list(names)
        while queue:
            strategy_name = queue.pop(0)
            t0 = time.perf_counter()
            _announce(progress, "%s: [%d/%d] %s", name, len(rows) + 1, len(rows) + 1 + len(queue), strategy_name)
            measured = None
            try:
                strategy_fn = strategy(strategy_name, rows)
            except SkipStrategy as e:
                rows[strategy_name] = StrategyResult(name, strategy_name, status=str(e))
            else:
                live = strategy_name in live_check or ("fxckpt" in live_check and strategy_name.startswith("fxckpt"))
                run = dict(model_name=name, iterations=iterations, seed=seed, live=live, reference=reference)
                if strategy_name != "none" and strategy_name.startswith(tuple(isolate)):
                    rows[strategy_name] = _run_isolated(strategy_name, strategy_fn, base, example, dict(rows),
                                                        baseline=baseline, **run)
                else:
                    rows[strategy_name], measured = _run_one(strategy_name, strategy_fn, base, example,
                                                             baseline=baseline, **run)
                _announce(progress, "%s: %s: %s in %.0f s (%.0f s so far)", name, strategy_name,
                          rows[strategy_name].status, time.perf_counter() - t0, time.perf_counter() - t_start)
            if strategy_name == "none":
                reference = _reference(rows["none"], measured)
                # "none" is timed again next to every other strategy's timed steps (paired timing).
                baseline = _Stepper(Prepared(*(2 * [copy.deepcopy(base)])), example, seed)
            gc.collect()
            if not queue and all_anchors:
                all_anchors = False
                queue = _anchor_rows(rows)
    finally:
        if baseline is not None:
            baseline.close()
        torch.set_rng_state(rng)
    return list(rows.values())


def _reference(row: StrategyResult, measured: _Measured | None) -> _Measured:
    if measured is None:
        raise RuntimeError(f"{row.model}: the 'none' step failed ({row.status}: {row.notes})")
    return measured


def _anchor_rows(rows: dict[str, StrategyResult]) -> list[str]:
    """An ``"fxckpt @ X"`` strategy for every measured X that is neither none nor fxckpt."""
    return [f"fxckpt @ {s}" for s, r in rows.items()
            if r.peak_mib is not None and s != "none" and not s.startswith("fxckpt") and f"fxckpt @ {s}" not in rows]


def _announce(progress: bool, fmt: str, *args) -> None:
    log.info(fmt, *args)
    if progress:
        print(fmt % args, file=sys.stderr, flush=True)
