"""Solvers: pure functions `solve_x(problem, budget_bytes) -> frozenset[int]` (node indices to
recompute), chosen by name through a registry. `solve` wraps the choice in a `Plan` whose figures
come from the simulator, and raises `InfeasibleBudgetError` when no plan fits."""

from __future__ import annotations

import math
import time
from typing import Callable

from ..errors import InfeasibleBudgetError, SolverError
from ..plan import Plan, make_plan
from ..problem import RematProblem
from ..simulate import simulate

Solver = Callable[[RematProblem, int], frozenset]
SOLVERS: dict[str, Solver] = {}


def register_solver(name: str):
    def deco(fn: Solver) -> Solver:
        if name in SOLVERS:
            raise RuntimeError(f"solver {name!r} is registered twice")
        SOLVERS[name] = fn
        return fn
    return deco


def check_budget(budget_bytes) -> int:
    if budget_bytes is None or isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)):
        raise ValueError(f"budget must be a positive number of bytes, got {budget_bytes!r}")
    if math.isnan(budget_bytes) or budget_bytes <= 0:
        raise ValueError(f"budget must be a positive number of bytes, got {budget_bytes!r}")
    return int(budget_bytes) if math.isfinite(budget_bytes) else 2**62


def solve(problem: RematProblem, budget_bytes: int, method: str = "auto") -> Plan:
    """Choose what to recompute so the simulated activation peak is at most `budget_bytes`.

    Example:
        >>> from fxckpt.problem import RematProblem
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
    plan = make_plan(problem, chosen, solver=method, budget_bytes=budget, solve_seconds=seconds)
    if plan.predicted_peak_bytes > budget:
        best = min_peak_plan(problem)
        sim = simulate(problem, best, live_at_peak=True)
        floor = min(sim.peak_bytes, plan.predicted_peak_bytes)
        if floor <= budget:
            raise SolverError(
                f"solver {method!r} planned a peak of {plan.predicted_peak_bytes / 2**20:.2f} MiB, over the "
                f"{budget / 2**20:.2f} MiB budget, although a plan at {floor / 2**20:.2f} MiB exists; use method='auto'")
        pinned = sorted({problem.nodes[problem.buffers[b].producer].name for b in sim.live_at_peak
                         if problem.nodes[problem.buffers[b].producer].ban is not None})
        raise InfeasibleBudgetError(budget, floor, tuple(pinned))
    return plan


def min_peak_plan(problem: RematProblem) -> frozenset[int]:
    """The lowest-peak plan known: exact for small problems, the greedy descent's otherwise."""
    from .auto import EXACT_UP_TO
    from .exhaustive import solve_exhaustive
    from .greedy import descend
    if len(problem.candidates()) <= EXACT_UP_TO:
        return solve_exhaustive(problem, 0)
    return descend(problem, 0)


from . import auto, baselines, exhaustive, greedy  # noqa: E402,F401  (register the built-in solvers)
