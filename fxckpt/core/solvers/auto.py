"""`auto`: an exact answer where one is affordable (every subset of a few candidates, the DP
on node chains, the ILP from the best heuristic plan on small graphs); elsewhere the min-cut
solver, improved on chains of repeated blocks by composing per-block options (`block_dp`), with
the greedy descent as fallback."""

from __future__ import annotations

import importlib.util

from ..simulate import simulate
from .registry import register_solver
from .block_dp import compose_plan, repeated
from .chain_exact import solve_node_chain
from .exhaustive import LIMIT, solve_exhaustive
from .greedy import solve_greedy
from .mincut import solve_mincut

EXACT_UP_TO = 12  # candidates: 4096 simulations of a small graph take well under a second
ILP_UP_TO = 60  # nodes: where the ILP usually proves its optimum within ILP_SECONDS
ILP_SECONDS = 10.0
CHAIN_UP_TO = 400  # nodes: the exact node-chain DP takes milliseconds to ~0.1 s there


def has_scipy() -> bool:
    return importlib.util.find_spec("scipy") is not None


@register_solver("auto")
def solve_auto(problem, budget_bytes):
    if len(problem.candidates()) <= min(EXACT_UP_TO, LIMIT):
        return solve_exhaustive(problem, budget_bytes)
    if len(problem.nodes) <= CHAIN_UP_TO:
        exact = solve_node_chain(problem, budget_bytes)  # None unless a node chain
        if exact is not None:
            return exact
    R = solve_mincut(problem, budget_bytes)
    if repeated(problem):  # per-block options mixed across blocks: never worse than R, which competes
        R = compose_plan(problem, budget_bytes, R) or R
    sim = simulate(problem, R)
    small = len(problem.nodes) <= ILP_UP_TO
    if small or sim.peak_bytes > budget_bytes:  # a second opinion where it is cheap or needed
        G = solve_greedy(problem, budget_bytes)
        other = simulate(problem, G)
        if _rank(other, budget_bytes) > _rank(sim, budget_bytes):
            R, sim = G, other
    if small and has_scipy():
        from .ilp import solve_ilp
        return solve_ilp(problem, budget_bytes, seconds=ILP_SECONDS,
                         incumbent=R if sim.peak_bytes <= budget_bytes else None)
    return R


def _rank(sim, budget_bytes):
    """Fitting plans first, then lower recompute cost; plans over budget by their peak."""
    fits = sim.peak_bytes <= budget_bytes
    return (fits, -sim.recompute_cost if fits else -sim.peak_bytes)
