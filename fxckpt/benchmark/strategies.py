"""The checkpointing strategies the harness compares, as a registry.

A strategy is a function ``(model, example) -> Prepared``: it applies itself to a fresh copy of
the model and says what a step calls. Fixed names are registered with `register_strategy`;
families of names with a parameter (``"every-K"``, ``"compile budget F"``, ``"fxckpt N%"``,
``"fxckpt @ X"``) with `register_family`, whose factory gets the parameter and the results
measured so far (an ``"fxckpt @ X"`` row plans at X's measured peak). `strategy` looks a name up.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.errors import MIB
from .flops import CountingInductor
from ..manual import find_blocks
from .segments import SegmentCheckpoint, probe_block_calls, sqrt_segments

__all__ = ["ANCHOR_ALL", "BASE_STRATEGIES", "DEFAULT_BUDGETS", "STRATEGIES", "Prepared", "SkipStrategy",
           "expand", "register_family", "register_strategy", "strategy"]

DEFAULT_BUDGETS = (0.5, 0.25)
BASE_STRATEGIES = ("none", "hf per-layer", "sqrt segments", "every-2", "every-3",
                   "compile budget 0.5", "compile budget 0.1")
ANCHOR_ALL = "fxckpt @ *"
# The compile backend beside torch's budget partitioner: at 50% of each graph's peak, and at the
# measured peak of each of torch's rows (issue 8).
COMPILE_ROWS = ("fxckpt compile 50%", "fxckpt compile @ compile budget 0.5", "fxckpt compile @ compile budget 0.1")
STRATEGIES = (BASE_STRATEGIES + tuple(f"fxckpt {round(100 * b)}%" for b in DEFAULT_BUDGETS) + ("fxckpt min", ANCHOR_ALL)
              + COMPILE_ROWS)


class SkipStrategy(Exception):
    """A strategy that does not apply to this model; its message is the row's status."""


@dataclass
class Prepared:
    """A strategy applied to a fresh model copy."""

    module: Callable  # what a step calls
    inner: nn.Module  # the model copy (parameter names, buffers)
    setup_seconds: float | None = None  # solve seconds (fxckpt); compile seconds are measured
    predicted_bytes: int | None = None
    predict: Callable[[], int] | None = None  # the prediction once compiled (fxckpt compile rows)
    budget_bytes: int | None = None
    counter: CountingInductor | None = None  # compiled strategies
    context: Callable[[], Any] = contextlib.nullcontext
    notes: list[str] = field(default_factory=list)


Strategy = Callable[[nn.Module, Any], Prepared]
# A family's factory: (the name's parameter, the results so far by strategy name) -> a strategy.
Factory = Callable[[str, Mapping[str, Any]], Strategy]

_FIXED: dict[str, Strategy] = {}
_FAMILIES: dict[str, tuple[re.Pattern, Factory]] = {}  # template -> (pattern with one group, factory)


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Register ``fn(model, example) -> Prepared`` under a fixed name (a decorator).

    Example:
        >>> @register_strategy("my none")
        ... def _mine(model, example):
        ...     return Prepared(model, model)
        >>> strategy("my none", {}) is _mine
        True
    """
    def add(fn: Strategy) -> Strategy:
        if name in _FIXED or _family_of(name) is not None:
            raise ValueError(f"strategy {name!r} is already registered")
        _FIXED[name] = fn
        return fn
    return add


def register_family(template: str, pattern: str) -> Callable[[Factory], Factory]:
    """Register a family of names (a decorator): a name that fully matches ``pattern`` (a regular
    expression with one group) gets the strategy ``factory(group, results_so_far)``.
    ``template`` is how the family is named in messages (``"every-K"``)."""
    def add(factory: Factory) -> Factory:
        if template in _FAMILIES:
            raise ValueError(f"strategy family {template!r} is already registered")
        _FAMILIES[template] = (re.compile(pattern), factory)
        return factory
    return add


def _family_of(name: str):
    return next(((m, factory) for pattern, factory in _FAMILIES.values() if (m := pattern.fullmatch(name))), None)


def strategy(name: str, results: Mapping[str, Any]) -> Strategy:
    """The strategy registered under ``name``; ``results`` are the rows measured so far, by name.

    Raises:
        SkipStrategy: the name is known but cannot run (an anchor that was not measured).
        ValueError: the name is not registered.
    """
    if name in _FIXED:
        return _FIXED[name]
    found = _family_of(name)
    if found is None:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}, "
                         + ", ".join(f"'{t}'" for t in _FAMILIES))
    match, factory = found
    return factory(match.group(1), results)


def expand(strategies: Sequence[str] | None, budgets: Sequence[float]) -> tuple[list[str], bool]:
    """The strategies to run (none first) and whether every anchor gets an 'fxckpt @' row."""
    if strategies is None:
        strategies = (list(BASE_STRATEGIES) + [f"fxckpt {round(100 * b)}%" for b in budgets] + ["fxckpt min", ANCHOR_ALL]
                      + list(COMPILE_ROWS))
    names = [s for s in strategies if s != ANCHOR_ALL]
    if "none" in names:
        names.remove("none")
    return ["none"] + names, ANCHOR_ALL in strategies


@register_strategy("none")
def _none(model, example) -> Prepared:
    return Prepared(model, model)


@register_strategy("hf per-layer")
def _hf_per_layer(model, example) -> Prepared:
    if getattr(model, "supports_gradient_checkpointing", False):
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            enable()
        return Prepared(model, model, notes=[f"{type(model).__name__}.{enable.__name__}()"])
    if getattr(model, "_supports_gradient_checkpointing", False) and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
        return Prepared(model, model, notes=[f"{type(model).__name__}.enable_gradient_checkpointing()"])
    raise SkipStrategy("not supported")


def _blocks(model) -> list[str]:
    blocks = find_blocks(model)
    if not blocks:
        raise SkipStrategy("no repeated blocks")
    return blocks


def _block_label(blocks: Sequence[str]) -> str:
    """``transformer.h.*`` for ``transformer.h.0`` ... ``transformer.h.11``."""
    patterns = list(dict.fromkeys(re.sub(r"\d+", "*", n) for n in blocks))
    return patterns[0] if len(patterns) == 1 else f"{patterns[0]} and {len(patterns) - 1} more pattern(s)"


@register_strategy("sqrt segments")
def _sqrt_segments(model, example) -> Prepared:
    blocks = _blocks(model)
    order = probe_block_calls(model, blocks, example)
    segments = sqrt_segments(order, len(blocks))
    checkpointed = segments[:-1]
    sizes = "+".join(str(len(s)) for s in segments)
    return Prepared(SegmentCheckpoint(model, checkpointed), model,
                    notes=[(f"{len(blocks)} blocks ({_block_label(blocks)}) in segments {sizes}, all but the last "
                            f"checkpointed")])


@register_family("every-K", r"every-(\d+)")
def _every_k(k: str, results) -> Strategy:
    def apply(model, example) -> Prepared:
        from ..manual import SelectiveCheckpoint

        blocks = _blocks(model)
        chosen = blocks[::int(k)]
        return Prepared(SelectiveCheckpoint(model, checkpoint_layers=chosen), model,
                        notes=[f"{len(chosen)} of {len(blocks)} blocks ({_block_label(blocks)})"])
    return apply


@register_family("compile budget F", r"compile budget ([0-9.]+)")
def _compile(budget: str, results) -> Strategy:
    def apply(model, example) -> Prepared:
        torch._dynamo.reset()
        counter = CountingInductor()

        def context():
            stack = contextlib.ExitStack()
            # Caches off: a cache hit would skip inner_compile (no FLOP tally) and hide compile time.
            stack.enter_context(torch._functorch.config.patch(activation_memory_budget=float(budget),
                                                              enable_autograd_cache=False))
            stack.enter_context(torch._inductor.config.patch(fx_graph_cache=False))
            return stack

        return Prepared(torch.compile(model, backend=counter), model, counter=counter, context=context)
    return apply


def _anchor_peak_mib(anchor_name: str, results) -> float:
    """The measured peak of an earlier row, the budget of an equal-memory ("@") row."""
    anchor = results.get(anchor_name)
    if anchor is None or anchor.peak_mib is None:
        raise SkipStrategy(f"anchor {anchor_name!r} not measured")
    return anchor.peak_mib


def _register_budget_families(prefix: str, make: Callable[..., Strategy]) -> None:
    """The two families of a planner: ``"<prefix> N%"`` is ``make(budget=N / 100)`` (a fraction of
    the un-checkpointed peak), ``"<prefix> @ X"`` is ``make(budget_mb=X's measured peak)``."""
    register_family(f"{prefix} N%", rf"{prefix} ([0-9.]+)%")(
        lambda percent, results: make(budget=float(percent) / 100))
    register_family(f"{prefix} @ <strategy>", rf"{prefix} @ (.+)")(
        lambda anchor_name, results: make(budget_mb=_anchor_peak_mib(anchor_name, results)))


def _fxckpt(**spec) -> Strategy:
    def apply(model, example) -> Prepared:
        from ..api import auto_checkpoint

        t0 = time.perf_counter()
        ckpt = auto_checkpoint(model, example, **spec)
        return _plan_prepared(model, ckpt, time.perf_counter() - t0)
    return apply


_register_budget_families("fxckpt", _fxckpt)


def _fxckpt_compile(**spec) -> Strategy:
    def apply(model, example) -> Prepared:
        from ..compile import backend

        torch._dynamo.reset()
        counter = CountingInductor()
        be = backend(**spec)
        be.inner_compile = counter._inner_compile
        limit = f"{spec['budget_mb']:.1f} MiB" if "budget_mb" in spec else f"{100 * spec['budget']:.0f}% per graph"
        return Prepared(torch.compile(model, backend=be), model, counter=counter, predict=be.predicted_peak_bytes,
                        budget_bytes=int(spec["budget_mb"] * MIB) if "budget_mb" in spec else None,
                        notes=[f"fxckpt backend (inductor), budget {limit}; plans: fxckpt.compiled_plans"])
    return apply


_register_budget_families("fxckpt compile", _fxckpt_compile)


@register_strategy("fxckpt min")
def _fxckpt_min(model, example) -> Prepared:
    from ..api import auto_checkpoint, min_feasible_budget

    t0 = time.perf_counter()
    ckpt = auto_checkpoint(model, example, budget_mb=min_feasible_budget(model, example) / MIB)
    prep = _plan_prepared(model, ckpt, time.perf_counter() - t0)
    prep.notes.insert(0, "smallest feasible budget")
    return prep


def _plan_prepared(model, ckpt, plan_seconds: float) -> Prepared:
    plan = ckpt.plan
    return Prepared(ckpt, model, setup_seconds=plan.solve_seconds, predicted_bytes=plan.predicted_peak_bytes,
                    budget_bytes=plan.budget_bytes,
                    notes=[(f"budget {plan.budget_bytes / MIB:.1f} MiB; planned in {plan_seconds:.1f} s "
                            f"(capture, annotate, solve, rewrite, dry run)")])
