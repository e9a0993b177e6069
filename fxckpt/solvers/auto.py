"""`auto`: the exact search where it is affordable, the greedy descent elsewhere."""

from __future__ import annotations

from . import register_solver
from .exhaustive import LIMIT, solve_exhaustive
from .greedy import solve_greedy

EXACT_UP_TO = 12  # candidates: 4096 simulations of a small graph take well under a second


@register_solver("auto")
def solve_auto(problem, budget_bytes):
    if len(problem.candidates()) <= min(EXACT_UP_TO, LIMIT):
        return solve_exhaustive(problem, budget_bytes)
    return solve_greedy(problem, budget_bytes)
