"""Plans rounded from the projected relaxation's LP optimum, repaired by the simulator.

NOTE [ Rounding the relaxation ]
The min-cut solver prices held bytes as one sum, blind to *when* they are held; the projected
relaxation (`ilp._bound_model`, NOTE [ A lower bound for graphs the ILP cannot take ]) has one
row per step that could exceed the budget. Its LP optimum (no integrality, so deterministic;
building and solving it took 0.25-1.3 s on the zoo's 234-548-node graphs on a loaded 2-core
machine) is a proven lower bound, and its fractional choice a seed: the candidates it
recomputes by more than a half, and those it recomputes almost wholly. A seed leaves out the
transients the relaxation ignores, so it is repaired by greedy's peak descent from it
(weighing cost, then bytes alone) and pruned: every plan here is judged by `simulate`, and
`auto` keeps it only where it costs less than its own. In estimated seconds at the tests'
pinned rates: ResNet-50 at 50%, the seed > 0.5 repairs to 117.86 ms against min-cut's 150.04
(the LP bounds 85.43); at 70%, the seed > 0.99 to 55.78 against 57.70; U-Net at 50%, 25.22
against 27.88. The LP of a smaller budget (`below`) leaves room for those transients: on
ResNet-50 its seeds at 0.9 and 0.85 of the budget repair to 53.11 ms at 70% and 112.60 at 50%. On GPT-2 small and the Llama zoo model, whose identical blocks `block_dp`
composes, no seed repairs cheaper: there the LP spreads fractions over many small
recomputations.
"""

from __future__ import annotations

import math

from ..simulate import simulate
from .greedy import descend, prune

THRESHOLDS = (0.5, 0.99)  # a candidate joins a seed where the LP recomputes more of it
CAP = 1.25  # a repair stops where it costs this many times the incumbent
OVERSHOOT = 1.4  # seeds peaking higher, in budgets, are not repaired when an incumbent fits
ROOT_GAP = 0.02  # the LP's gap to the incumbent past which the MILP's root node bounds it
ROOT_SECONDS = 10.0  # wall: a cap for a loaded machine, not the root's usual time


def lp_rounded(problem, budget_bytes: int, most: float | None = None,
               below: float = 1.0) -> tuple[float | None, list[frozenset[int]]]:
    """(the LP bound, or None where the LP did not solve; inf where nothing can fit) and the
    repaired roundings of its optimum that fit `budget_bytes` (NOTE [ Rounding the relaxation ]);
    with `most` (an incumbent's cost), only those that cost less than it and every earlier one,
    and, where the LP leaves a gap to it, the bound and the best choice of the MILP's root node
    (NOTE [ The root's bound ]).
    With `below` < 1, the LP is that of `below` times the budget (room for the transients it
    leaves out), its roundings repaired to the budget, and its optimum bounds nothing (None).

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> p = random_problem(30, seed=2)
        >>> budget = int(0.6 * simulate(p).peak_bytes)
        >>> bound, plans = lp_rounded(p, budget)
        >>> all(bound <= simulate(p, R).recompute_cost and simulate(p, R).peak_bytes <= budget for R in plans)
        True
    """
    from .ilp import SECONDS, _bound_model, _milp

    m, r = _bound_model(problem, int(below * budget_bytes), cached=False)  # fast: a seed, not the bound
    if not m.rows:  # every step fits whatever is chosen
        return (0.0 if below == 1 else None), [frozenset()]
    integer, m.integer = m.integer, [0] * len(m.integer)
    res = _milp(m, SECONDS)
    if res.status == 2:
        return (float("inf") if below == 1 else None), []
    if res.status != 0:
        return None, []
    bound = max(0.0, float(res.fun))
    seeds = [frozenset(c for c, j in r.items() if res.x[j] > t) for t in THRESHOLDS]
    if below == 1 and most is not None and bound < (1 - ROOT_GAP) * most:  # NOTE [ The root's bound ]
        m.integer = integer
        root = _milp(m, ROOT_SECONDS, nodes=1)
        dual = getattr(root, "mip_dual_bound", None)
        if dual is not None and math.isfinite(dual):
            bound = max(bound, float(dual))
        if root.x is not None:
            seeds.insert(0, frozenset(c for c, j in r.items() if root.x[j] > 0.5))
    plans = []
    for S in dict.fromkeys(seeds):
        R = repaired(problem, budget_bytes, S, most)
        if R is not None:
            plans.append(R)
            cost = simulate(problem, R).recompute_cost
            most = cost if most is None else min(most, cost)  # later seeds must beat it
    return (bound if below == 1 else None), plans


# NOTE [ The root's bound ]
# The LP of the projected relaxation bounds loosely where plans recompute many small values:
# GPT-2 small at 50% (pinned rates), 222.73 ms against `auto`'s 317.95, so `fxckpt.demo`
# printed "within 24.9% of optimal" at calibrated rates while a 60 s MILP bounds 314.97. The
# MILP's root node alone (HiGHS's presolve, cuts and root heuristics; `node_limit=1`, so the
# bound does not depend on the machine's speed unless ROOT_SECONDS of wall time run out first)
# bounds as tightly as the 60 s search on the zoo at 70% and 50%: GPT-2 small 112.97 / 314.97 ms,
# Llama 13.62 / 48.56, ResNet-50 47.40 / 96.54, for 0.9-1.8 CPU s. Its best choice is one
# more seed: on GPT-2 small at 50% it fits as it is and costs 316.41 ms. It runs only where
# the LP leaves more than ROOT_GAP between its bound and the incumbent.


def repaired(problem, budget_bytes: int, seed: frozenset[int], most: float | None = None) -> frozenset[int] | None:
    """`seed` with the recomputations greedy's descent adds until the simulated peak fits
    (weighing cost, then bytes alone), pruned; None where neither descent fits, or where `most`
    is given and the seed costs as much, peaks over OVERSHOOT times the budget, or its descent
    passes CAP times `most` (a descent adds one recomputation a step: on GPT-2 small at 50% the
    LP's seed > 0.99 peaks at 1.56 times the budget and took 2 s to repair to 2.8 times the
    incumbent's cost)."""
    if most is not None:
        sim = simulate(problem, seed)
        if sim.recompute_cost >= most or sim.peak_bytes > OVERSHOOT * budget_bytes:
            return None
    for alpha in (1.0, 0.0):
        R = descend(problem, budget_bytes, alpha=alpha, start=seed, most=None if most is None else CAP * most)
        if simulate(problem, R).peak_bytes <= budget_bytes:
            return prune(problem, R, budget_bytes)
    return None
