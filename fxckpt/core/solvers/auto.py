"""`auto`: an exact answer where one is affordable (every subset of a few candidates, the DP
on node chains, the ILP from the best heuristic plan on small graphs); elsewhere the min-cut
solver, improved on chains of repeated blocks by composing per-block options (`block_dp`), with
the greedy descent as fallback, and up to ROUND_UP_TO nodes against plans rounded from the
projected relaxation's LP and MILP root, whose bound it reports (`rounding`); and where none of these fits,
the lowest-peak plan known (`min_peak_plan`), so that every budget at or above its peak has a
plan."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math

from ..peak_bound import peak_lower_bound
from ..problem import RematProblem
from ..simulate import simulate
from .registry import Solved, recompute_of, register_solver
from .block_dp import compose_plan, repeated
from .chain_exact import solve_node_chain
from .exhaustive import LIMIT, solve_exhaustive
from .greedy import descend, solve_greedy
from .mincut import solve_mincut

EXACT_UP_TO = 12  # candidates: 4096 simulations of a small graph take well under a second
ILP_UP_TO = 60  # nodes: where the ILP usually proves its optimum within ILP_SECONDS
ILP_SECONDS = 2.0  # wall, for the whole ILP stage (NOTE [ The projected bound first ] in ilp.py)
CHAIN_UP_TO = 400  # nodes: the exact node-chain DP takes milliseconds to ~0.1 s there
ROUND_UP_TO = 600  # nodes: the LP of the projected relaxation takes well under a second there
BELOW = (0.9, 0.85)  # LPs of these fractions of the budget, rounded and repaired to it, up to:
BELOW_UP_TO = 300  # nodes (NOTE [ Rounding below the budget ])


def has_scipy() -> bool:
    return importlib.util.find_spec("scipy") is not None


@register_solver("auto")
def solve_auto(problem, budget_bytes):
    if budget_bytes < peak_lower_bound(problem):  # no plan fits: no search (NOTE [ A floor no plan goes below ])
        return min_peak_plan(problem)
    answer = _solve_auto(problem, budget_bytes)
    if simulate(problem, recompute_of(answer)).peak_bytes > budget_bytes:
        lowest = min_peak_plan(problem)
        if simulate(problem, lowest).peak_bytes <= budget_bytes:
            return lowest
    return answer


# NOTE [ The floor is one plan ]
# An InfeasibleBudgetError names the peak of `min_peak_plan` as the smallest feasible budget, and
# `auto` falls back to that plan wherever its own search finds nothing that fits: the searches
# are heuristics, not monotone in the budget (mincut's plan at a budget can peak higher than
# the plan it found at a smaller one), so without the fallback a budget at the named floor
# could fail. `fxckpt.auto_checkpoint` checks that plan by its dry run too, and names the higher
# of its predicted and dry-run peaks. Beyond the exact search, the lowest peak a heuristic
# reaches depends on how nodes are priced (a tiny transformer: 507,920 B priced in estimated
# seconds, 541,712 B in FLOPs), so both pricings are searched. Prices in FLOPs are fixed by the
# graph; prices in seconds by the device's cached rates (timing="estimate"), but not under
# timing="profile", whose per-node times are measured afresh each call: there, a floor named
# by one call holds in another only when it came from the FLOPs search.
def min_peak_plan(problem: RematProblem) -> frozenset[int]:
    """The lowest-peak plan known: exact for small problems, else the lowest of the greedy
    descent's and the min-cut solver's (both return their lowest peak when nothing fits), each
    run with the problem's prices and with FLOPs.

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> p = random_problem(8)
        >>> simulate(p, min_peak_plan(p)).peak_bytes <= simulate(p).peak_bytes
        True
    """
    return _lowest(problem, tuple(dict.fromkeys((_in_flops(problem), problem))))


@functools.lru_cache(maxsize=8)  # asked again by the error path and the fallback of one planning call
def _lowest(problem: RematProblem, pricings: tuple[RematProblem, ...]) -> frozenset[int]:
    if len(problem.candidates()) <= EXACT_UP_TO:  # exact; ties broken by FLOPs, which do not vary
        return solve_exhaustive(pricings[0], 0)
    bound = peak_lower_bound(problem)  # a plan there is the floor: the search stops
    key = lambda R: (simulate(problem, R).peak_bytes, sorted(R))
    best = None
    for search in (descend, solve_mincut):  # the descent first: the cheaper one
        for q in pricings:
            R = search(q, 0)
            best = R if best is None else min(best, R, key=key)
            if key(best)[0] <= bound:
                return best
    return _polished(problem, best, bound)


POLISH_ROUNDS = 4


def _polished(problem: RematProblem, best: frozenset[int], bound: int) -> frozenset[int]:
    """`best` lowered further (NOTE [ The descent goes on from a cut ]), down to `bound` at most.

    NOTE [ The descent goes on from a cut ]
    The greedy descent stops where no single recomputation lowers the peak, and where it stops
    depends on where it starts: from nothing it stops higher than from the plan the min-cut
    solver makes at the best peak found so far. So each round cuts at that peak and descends
    from the cut; it stops when a round lowers nothing. The tiny CNN under inductor (32x3x32x32):
    the floor named was 8,804,268 B, while a plan at 8,017,964 B was known (the one planned
    before the inductor model changed); one round: a cut at 8,571,852 B, then 8,017,836 B.
    """
    peak = simulate(problem, best).peak_bytes
    for _ in range(POLISH_ROUNDS):
        if peak <= bound:
            break
        tried = [descend(problem, 0, start=best), descend(problem, 0, start=solve_mincut(problem, peak))]
        lower = min(tried, key=lambda R: (simulate(problem, R).peak_bytes, sorted(R)))
        if simulate(problem, lower).peak_bytes >= peak:
            break
        best, peak = lower, simulate(problem, lower).peak_bytes
    return best


def _in_flops(problem: RematProblem) -> RematProblem:
    if not problem.timed:
        return problem
    return dataclasses.replace(problem, nodes=tuple(dataclasses.replace(n, seconds=None) for n in problem.nodes))


def _solve_auto(problem, budget_bytes):
    if len(problem.candidates()) <= min(EXACT_UP_TO, LIMIT):
        return _proven(problem, solve_exhaustive(problem, budget_bytes), budget_bytes)
    if len(problem.nodes) <= CHAIN_UP_TO:
        exact = solve_node_chain(problem, budget_bytes)  # None unless a node chain
        if exact is not None:
            return _proven(problem, exact, budget_bytes)
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
    if len(problem.nodes) <= ROUND_UP_TO and has_scipy():
        return _rounded(problem, budget_bytes, R, sim)
    return R


def _rounded(problem, budget_bytes, R, sim):
    """R or a cheaper plan rounded from the projected relaxation's LP optimum or its MILP root's
    choice (and, on small graphs, from the LPs of smaller budgets: NOTE [ Rounding below the
    budget ]), with the proven bound of the LP or the root where the plan fits (NOTE [ Rounding
    the relaxation ] and NOTE [ The root's bound ] in rounding.py)."""
    from .rounding import lp_rounded
    bound = None
    for below in (1.0, *(BELOW if len(problem.nodes) <= BELOW_UP_TO else ())):
        fits = sim.peak_bytes <= budget_bytes
        got, plans = lp_rounded(problem, budget_bytes, most=sim.recompute_cost if fits else None, below=below)
        if below == 1:
            bound = got
            if bound is None or math.isinf(bound):  # no LP below it solves either
                break
        for P in plans:
            other = simulate(problem, P)
            if _rank(other, budget_bytes) > _rank(sim, budget_bytes):
                R, sim = P, other
    if sim.peak_bytes > budget_bytes or bound is None or math.isinf(bound):  # inf: the LP contradicts a fitting plan
        return R
    return Solved(R, min(bound, float(sim.recompute_cost)))


# NOTE [ Rounding below the budget ]
# The projected relaxation leaves out the transients of recomputation, so its optimum at the
# budget rounds to seeds that peak over it, and the repair pays for the difference with greedy
# steps. The LP at a smaller budget leaves room for them: on ResNet-50 (234 nodes; pinned rates)
# its seeds at 0.9 and 0.85 of the budget repair to 53.11 ms at 70% (55.78 from the budget's
# LP) and 112.60 at 50% (117.86); each LP and repair costs 0.1-0.4 CPU s there. On the zoo's
# 523-548-node graphs (GPT-2 small, Llama, U-Net) they gained nothing at 50% (U-Net: 25.22 ms
# at 0.9, 0.85 and 0.8) and cost 0.4-2 s each, past auto's 2 s: hence BELOW_UP_TO.
def _proven(problem, R, budget_bytes):
    """An exact solver's plan, with its own cost as the proven bound when it fits (its gap is 0)."""
    sim = simulate(problem, R)
    return Solved(R, float(sim.recompute_cost)) if sim.peak_bytes <= budget_bytes else R


def _rank(sim, budget_bytes):
    """Fitting plans first, then lower recompute cost; plans over budget by their peak."""
    fits = sim.peak_bytes <= budget_bytes
    return (fits, -sim.recompute_cost if fits else -sim.peak_bytes)
