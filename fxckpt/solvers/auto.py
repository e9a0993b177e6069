"""`auto`: the exact search where it is affordable; elsewhere the greedy descent, then local
search for cheaper plans until a time limit."""

from __future__ import annotations

import time

from ..simulate import simulate
from . import register_solver
from .exhaustive import LIMIT, solve_exhaustive
from .greedy import improve, solve_greedy

EXACT_UP_TO = 12  # candidates: 4096 simulations of a small graph take well under a second
SECONDS = 1.0  # local search after the greedy plan


@register_solver("auto")
def solve_auto(problem, budget_bytes):
    if len(problem.candidates()) <= min(EXACT_UP_TO, LIMIT):
        return solve_exhaustive(problem, budget_bytes)
    R = solve_greedy(problem, budget_bytes)
    if simulate(problem, R).peak_bytes <= budget_bytes:
        R = improve(problem, R, budget_bytes, time.perf_counter() + SECONDS)
    return R
