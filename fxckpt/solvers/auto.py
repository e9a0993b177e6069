"""`auto`: the exact search where it is affordable, the ILP (from the best heuristic plan) on
graphs small enough for it, the heuristics with local search elsewhere."""

from __future__ import annotations

import importlib.util
import time

from ..simulate import simulate
from . import register_solver
from .exhaustive import LIMIT, solve_exhaustive
from .greedy import improve, solve_greedy

EXACT_UP_TO = 12  # candidates: 4096 simulations of a small graph take well under a second
ILP_UP_TO = 60  # nodes: where the ILP usually proves its optimum within ILP_SECONDS
ILP_SECONDS = 10.0
SECONDS = 1.0  # local search after the greedy plan, where the ILP does not run


def has_scipy() -> bool:
    return importlib.util.find_spec("scipy") is not None


@register_solver("auto")
def solve_auto(problem, budget_bytes):
    if len(problem.candidates()) <= min(EXACT_UP_TO, LIMIT):
        return solve_exhaustive(problem, budget_bytes)
    R = solve_greedy(problem, budget_bytes)
    fits = simulate(problem, R).peak_bytes <= budget_bytes
    if len(problem.nodes) <= ILP_UP_TO and has_scipy():
        from .ilp import solve_ilp
        return solve_ilp(problem, budget_bytes, seconds=ILP_SECONDS, incumbent=R if fits else None)
    if fits:
        R = improve(problem, R, budget_bytes, time.perf_counter() + SECONDS)
    return R
