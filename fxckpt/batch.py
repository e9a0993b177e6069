"""The largest batch that fits a budget, and the activation peak as a formula in the batch."""

from __future__ import annotations

import logging
from typing import Any

import sympy
import torch
from torch.utils import _pytree as pytree

from .core.errors import MIB, InfeasibleBudgetError, SolverError

log = logging.getLogger(__name__)


def with_batch(example_input: Any, batch: int, batch_dim: int = 0) -> Any:
    """The example with every tensor resized to `batch` along `batch_dim`, rows repeated
    cyclically (tensors without that dimension's original size are left alone)."""
    leaves = [t for t in pytree.tree_leaves(example_input) if isinstance(t, torch.Tensor) and t.dim() > batch_dim]
    if not leaves:
        raise ValueError("the example input has no tensor with a batch dimension")
    size = leaves[0].shape[batch_dim]

    def resize(t):
        if not isinstance(t, torch.Tensor) or t.dim() <= batch_dim or t.shape[batch_dim] != size:
            return t
        index = torch.arange(batch, device=t.device) % size
        out = t.detach().index_select(batch_dim, index)
        return out.requires_grad_(t.requires_grad) if t.is_leaf else out

    return pytree.tree_map(resize, example_input)


def max_batch_size(model: torch.nn.Module, example_input: Any, budget_mb: float, batch_dim: int = 0, *,
                   solver: str = "auto", limit: int = 1 << 16):
    """The largest batch for which a plan under `budget_mb` exists, and that plan.

    Doubles the batch until no plan fits, then bisects. Every probe runs the whole pipeline
    (capture, annotate on fake tensors, solve, dry run), so no real computation happens.

    Returns:
        (batch, CheckpointedModule planned at that batch). Raises InfeasibleBudgetError when
        not even a batch of 1 fits.

    Example:
        >>> import torch, fxckpt
        >>> model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
        >>> batch, ckpt = fxckpt.max_batch_size(model, torch.randn(8, 256), budget_mb=4)
        >>> ckpt.plan.predicted_peak_bytes <= 4 * 2**20
        True
    """
    from .api import auto_checkpoint

    def fits(batch):
        try:
            return auto_checkpoint(model, with_batch(example_input, batch, batch_dim), budget_mb=budget_mb, solver=solver)
        except (InfeasibleBudgetError, SolverError):  # no plan, or none this solver finds
            return None

    lo, hi, best = 0, None, None
    batch = 1
    while batch <= limit:
        got = fits(batch)
        if got is None:
            hi = batch
            break
        lo, best = batch, got
        batch *= 2
    if best is None:
        raise InfeasibleBudgetError(int(budget_mb * MIB), -1) if hi is None else _no_batch(model, example_input, batch_dim, budget_mb, solver)
    hi = hi if hi is not None else limit + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        got = fits(mid)
        lo, best, hi = (mid, got, hi) if got is not None else (lo, best, mid)
    log.info("largest batch under %.1f MiB: %d", budget_mb, lo)
    return lo, best


def _no_batch(model, example_input, batch_dim, budget_mb, solver):
    from .api import auto_checkpoint
    try:
        auto_checkpoint(model, with_batch(example_input, 1, batch_dim), budget_mb=budget_mb, solver=solver)
    except InfeasibleBudgetError as e:
        return e
    return InfeasibleBudgetError(int(budget_mb * MIB), -1)


def peak_formula(model: torch.nn.Module, example_input: Any, recompute=(), batch_dim: int = 0,
                 batches: tuple[int, int] = (2, 4)) -> sympy.Expr:
    """The simulated activation peak of a plan as a formula in the batch size `B`.

    Buffers, gradients and temporaries are affine in the batch for the ops of real models; the
    problem is annotated at two batches and every step of the simulated timeline fitted as
    a + b*B; the peak is the upper envelope, Max(a_k + b_k*B). `recompute` names nodes.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        >>> f = peak_formula(model, torch.randn(8, 64))
        >>> sorted(f.free_symbols, key=str)
        [B]
    """
    from . import passes
    from .core.simulate import simulate

    B = sympy.Symbol("B", positive=True, integer=True)
    timelines = []
    for batch in batches:
        example = with_batch(example_input, batch, batch_dim)
        captured = passes.capture(model, example)
        problem = passes.to_problem(passes.annotate(captured))
        timelines.append(simulate(problem, problem.indices(recompute), timeline=True).timeline)
    (b1, b2), (t1, t2) = batches, timelines
    if [label for _, label in t1] != [label for _, label in t2]:
        raise ValueError("the graph differs between batch sizes; the peak is not one formula in the batch")
    lines = {}
    for (y1, _), (y2, _) in zip(t1, t2):
        slope = sympy.Rational(y2 - y1, b2 - b1)
        lines[slope] = max(lines.get(slope, y1 - slope * b1), y1 - slope * b1)
    # Upper envelope for B >= 1: a line dominated by another at both ends of [1, infinity) goes.
    kept = [(s, c) for s, c in lines.items()
            if not any((s2 >= s and c2 + s2 >= c + s and (s2, c2) != (s, c)) for s2, c2 in lines.items())]
    return sympy.Max(*[c + s * B for s, c in kept])
