"""Exhaustive search: the cheapest plan under the simulator by trying every subset of
candidates. Exact by construction, exponential: the reference for small problems."""

from __future__ import annotations

from itertools import combinations

from ..simulate import simulate
from . import register_solver

LIMIT = 16  # candidates; 2**16 simulations is about as far as this goes


@register_solver("exhaustive")
def solve_exhaustive(problem, budget_bytes):
    """Subsets in order of recompute cost would be ideal; subsets by size, pruned by the best
    cost found so far, are exact and simple."""
    cands = problem.candidates()
    if len(cands) > LIMIT:
        raise ValueError(f"exhaustive search takes at most {LIMIT} candidates, this problem has {len(cands)}; "
                         "use 'greedy' or 'auto'")
    flops = {c: problem.nodes[c].flops for c in cands}
    best: tuple[float, frozenset] | None = None
    lowest = (simulate(problem).peak_bytes, frozenset())
    for k in range(len(cands) + 1):
        for subset in combinations(cands, k):
            cost = sum(flops[c] for c in subset)
            if best is not None and cost >= best[0]:
                continue
            R = frozenset(subset)
            peak = simulate(problem, R).peak_bytes
            if peak < lowest[0]:
                lowest = (peak, R)
            if peak <= budget_bytes:
                best = (cost, R)
    return best[1] if best is not None else lowest[1]
