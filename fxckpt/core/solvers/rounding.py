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

from ..simulate import simulate
from .greedy import descend, prune

THRESHOLDS = (0.5, 0.99)  # a candidate joins a seed where the LP recomputes more of it
CAP = 1.25  # a repair stops where it costs this many times the incumbent
OVERSHOOT = 1.4  # seeds peaking higher, in budgets, are not repaired when an incumbent fits


def lp_rounded(problem, budget_bytes: int, most: float | None = None,
               below: float = 1.0) -> tuple[float | None, list[frozenset[int]]]:
    """(the LP bound, or None where the LP did not solve; inf where nothing can fit) and the
    repaired roundings of its optimum that fit `budget_bytes` (NOTE [ Rounding the relaxation ]);
    with `most` (an incumbent's cost), only those that may cost less, up to the first that does.
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
    m.integer = [0] * len(m.integer)
    res = _milp(m, SECONDS)
    if res.status == 2:
        return (float("inf") if below == 1 else None), []
    if res.status != 0:
        return None, []
    plans = []
    for S in dict.fromkeys(frozenset(c for c, j in r.items() if res.x[j] > t) for t in THRESHOLDS):
        R = repaired(problem, budget_bytes, S, most)
        if R is not None:
            plans.append(R)
            if most is not None and simulate(problem, R).recompute_cost < most:
                break  # one seed that beats the incumbent is enough (U-Net at 50%: both give 25.22 ms)
    return (max(0.0, float(res.fun)) if below == 1 else None), plans


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
