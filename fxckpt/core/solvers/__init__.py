"""Solvers: pure functions `solve_x(problem, budget_bytes) -> frozenset[int]` (node indices to
recompute), chosen by name through a registry. `solve` wraps the choice in a `Plan` whose figures
come from the simulator, and raises `InfeasibleBudgetError` when no plan fits."""

from __future__ import annotations

import dataclasses
import time

from ..errors import InfeasibleBudgetError, SolverError
from ..plan import Plan, make_plan
from ..problem import RematProblem
from ..simulate import recompute_cost, simulate
from . import auto, baselines, block_dp, chain, exhaustive, greedy, ilp, mincut  # noqa: F401  (the built-in solvers register)
from .auto import min_peak_plan
from .registry import SOLVERS, Solved, Solver, check_budget, recompute_of, register_solver

__all__ = ["SOLVERS", "Solved", "Solver", "check_budget", "infeasible", "min_peak_plan", "recompute_of", "register_solver", "solve"]


def solve(problem: RematProblem, budget_bytes: int, method: str = "auto") -> Plan:
    """Choose what to recompute so the simulated activation peak is at most `budget_bytes`.

    Example:
        >>> from fxckpt.core.problem import RematProblem
        >>> solve(RematProblem(), 2**20).recompute
        frozenset()
    """
    budget = check_budget(budget_bytes)
    try:
        fn = SOLVERS[method]
    except KeyError:
        raise ValueError(f"unknown solver {method!r}; registered: {sorted(SOLVERS)}") from None
    t0 = time.perf_counter()
    chosen = fn(problem, budget)
    seconds = time.perf_counter() - t0
    bound = None
    if isinstance(chosen, Solved):
        chosen, bound = chosen.recompute, chosen.lower_bound
    plan = make_plan(problem, chosen, solver=method, budget_bytes=budget, solve_seconds=seconds)
    if plan.predicted_peak_bytes > budget:
        raise _why_not(problem, budget, method, plan.predicted_peak_bytes)
    if bound is not None:
        cost = recompute_cost(problem, chosen)
        gap = (cost - bound) / cost if cost else 0.0
        plan = dataclasses.replace(plan, optimality_gap=max(0.0, gap))
    return plan


def _why_not(problem: RematProblem, budget: int, method: str, got: int) -> Exception:
    """The error for a plan over budget: another solver fits it (SolverError), or nothing
    known does (InfeasibleBudgetError naming the smallest feasible peak and what pins it)."""
    other = recompute_of(SOLVERS["auto"](problem, budget)) if method != "auto" else None
    other_peak = simulate(problem, other).peak_bytes if other is not None else got
    if other_peak <= budget:
        return SolverError(
            f"solver {method!r} planned a peak of {got / 2**20:.2f} MiB, over the {budget / 2**20:.2f} MiB "
            f"budget, although a plan at {other_peak / 2**20:.2f} MiB exists; use method='auto'")
    return infeasible(problem, budget)


def infeasible(problem: RematProblem, budget_bytes: int, floor_bytes: int | None = None,
               baseline_bytes: int | None = None) -> InfeasibleBudgetError:
    """The error for a budget below the floor: the peak of `min_peak_plan` (or `floor_bytes`,
    that plan's peak as measured by a dry run), where that plan peaks and what is live there
    (see NOTE [ The floor is one plan ] in auto.py). `baseline_bytes`: the un-checkpointed
    peak, for a budget given as a fraction of it."""
    sim = simulate(problem, min_peak_plan(problem), live_at_peak=True)
    nodes, buffers = problem.nodes, problem.buffers
    pinned = sorted({nodes[buffers[b].producer].name for b in sim.live_at_peak if nodes[buffers[b].producer].ban is not None})
    by_node: dict[str, int] = {}
    for b in sim.live_at_peak:
        name = nodes[buffers[b].producer].name
        by_node[name] = by_node.get(name, 0) + buffers[b].nbytes
    largest = sorted(by_node.items(), key=lambda kv: (-kv[1], kv[0]))
    return InfeasibleBudgetError(budget_bytes, sim.peak_bytes if floor_bytes is None else floor_bytes, tuple(pinned),
                                 peak_at=sim.peak_at, largest=tuple(largest), baseline_bytes=baseline_bytes)
