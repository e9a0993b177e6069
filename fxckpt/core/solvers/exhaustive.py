"""Exhaustive search: the cheapest plan under the simulator by trying every subset of
candidates. Exact by construction, exponential: the reference for small problems."""

from __future__ import annotations

from itertools import combinations

from ..simulate import recompute_cost, simulate
from .registry import register_solver

LIMIT = 16  # candidates; 2**16 simulations is about as far as this goes


@register_solver("exhaustive")
def solve_exhaustive(problem, budget_bytes):
    """Subsets in order of recompute cost would be ideal; subsets by size, each priced without
    simulating and simulated only when cheaper than the best found so far, are exact and simple.
    A preferred decision (a user's policy, a forced recomputation) is fixed, as in every solver."""
    prefer = {i: problem.nodes[i].prefer for i in problem.candidates()}
    forced = frozenset(i for i, p in prefer.items() if p == "recompute")
    cands = [i for i, p in prefer.items() if p is None]
    if len(cands) > LIMIT:
        raise ValueError(f"exhaustive search takes at most {LIMIT} candidates, this problem has {len(cands)}; "
                         "use 'greedy' or 'auto'")
    best: tuple[float, frozenset] | None = None
    lowest = (simulate(problem, forced).peak_bytes, forced)
    for k in range(len(cands) + 1):
        for subset in combinations(cands, k):
            R = forced.union(subset)
            cost = recompute_cost(problem, R)
            if best is not None and cost >= best[0]:
                continue
            peak = simulate(problem, R).peak_bytes
            if peak < lowest[0]:
                lowest = (peak, R)
            if peak <= budget_bytes:
                best = (cost, R)
    return best[1] if best is not None else lowest[1]
