"""Solvers: pure functions `solve_x(problem, budget_bytes) -> frozenset[int]` (node indices to
recompute), chosen by name through a registry. `solve` wraps the choice in a `Plan` whose figures
come from the simulator, and raises `InfeasibleBudgetError` when no plan fits."""

from __future__ import annotations

import dataclasses
import time

from ..errors import InfeasibleBudgetError, SolverError
from ..plan import Plan, make_plan
from ..problem import RematProblem
from ..simulate import recompute_cost, simulate
from . import auto, baselines, block_dp, chain, exhaustive, greedy, ilp, mincut  # noqa: F401  (the built-in solvers register)
from .auto import min_peak_plan
from .registry import SOLVERS, Solved, Solver, check_budget, recompute_of, register_solver

__all__ = ["SOLVERS", "Solved", "Solver", "check_budget", "free_recomputations", "infeasible", "min_peak_plan", "recompute_of", "register_solver", "solve"]


def solve(problem: RematProblem, budget_bytes: int, method: str = "auto") -> Plan:
    """Choose what to recompute so the simulated activation peak is at most `budget_bytes`.

    Example:
        >>> from fxckpt.core.problem import RematProblem
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
    bound = None
    if isinstance(chosen, Solved):
        chosen, bound = chosen.recompute, chosen.lower_bound
    chosen = free_recomputations(problem, chosen, budget)
    seconds = time.perf_counter() - t0
    plan = make_plan(problem, chosen, solver=method, budget_bytes=budget, solve_seconds=seconds)
    if plan.predicted_peak_bytes > budget:
        raise _why_not(problem, budget, method, plan.predicted_peak_bytes)
    if bound is not None:
        cost = recompute_cost(problem, chosen)
        gap = (cost - bound) / cost if cost else 0.0
        plan = dataclasses.replace(plan, optimality_gap=max(0.0, gap))
    return plan


# NOTE [ Free recomputations break ties by memory ]
# Where replaying a node costs nothing (a value a compiler fuses into its readers: NOTE [ One
# recompute cost ]), many plans share the solver's cost, and which of them the solver returns is
# an accident of its search: at a budget the plan with nothing recomputed already fits, it saved
# every fused value backward reads, where inductor's own partitioner replays them in the
# backward kernels (a tiny transformer's saved values: 1,756,164 B, against torch's 1,312,256 B;
# 1,273,856 B so: tests/test_compile.py).
# So after any solver, the plan's free part is chosen again by memory, its costly part fixed:
# a minimum cut of the held bytes (`mincut.flow_graph`, every free node at cost 0, the others
# as the plan has them) finds the chains worth replaying together, which one replay at a time
# never finds (a dropout's float mask saved where its bool mask and a cast replayed together
# hold a quarter); then free replays the cut made that lower nothing are dropped, and single ones
# added, while what the plan holds drops. Up to the solver's plan's peak (and the budget), "holds"
# is the bytes saved across the forward/backward boundary, then the peak: a saved value is
# written by the forward and read by the backward, a free replay is computed inside the backward
# kernel that reads it, so saving less is also faster (torch's partitioner cuts the same way).
# Preferring the lower peak first kept a ReLU's bool mask wherever its replay would hold the
# ReLU's output a few kernels longer: on a small BatchNorm CNN under inductor, the forward
# stored such masks (a slow masked store on CPU), and the step took 1.68x default
# torch.compile's at 9.41 MiB; with the boundary first, 1.44x at a lower peak (8.66 against
# 8.77 MiB measured; benchmarks/results/2026-12-02/compile_bench.md).
# The search runs first with the budget as that limit, then drops replays one at a time (the
# one leaving the lowest peak) until the peak is back at the solver's, and adds single ones
# again under that limit; where that fails, it runs with the solver's peak as the limit from the
# start, above which the lower peak comes first. So the free part never raises the solver's peak
# (raised up to the budget, inductor's code needed a second compile: NOTE [ Inductor's code is
# the prediction ]), and the search still reaches plans beyond the cut's peak (that CNN: 35
# replays, 8,018,472 B saved, where the search from the solver's peak kept 8,149,416 B). Never
# a plan of higher cost is kept (a free node whose replay needs a recomputed matmul is not
# free): the prediction stays the simulator's. A no-op where nothing is fused (the eager
# runtime and aot_eager).
def free_recomputations(problem: RematProblem, recompute: frozenset[int], budget_bytes: int | None = None
                        ) -> frozenset[int]:
    """`recompute` with its free part chosen for the fewest bytes held across the forward/backward
    boundary, the peak within that of `recompute` and `budget_bytes`, and for the lowest peak
    above them (NOTE [ Free recomputations break ties by memory ])."""
    fused = problem.inlined  # free by NOTE [ One recompute cost ]; not every 0-FLOP node
    free = [i for i in problem.candidates() if fused[i] and problem.nodes[i].prefer != "save"]
    if not any(i not in recompute for i in free):
        return recompute
    R, price = frozenset(recompute), recompute_cost(problem, recompute)
    peak = simulate(problem, R).peak_bytes
    floor = peak if budget_bytes is None else min(peak, budget_bytes)
    if budget_bytes is not None and budget_bytes > peak:  # up to the budget, then back down to R's peak
        T = _lowered(problem, R, _free_search(problem, R, price, free, budget_bytes), floor)
        if T is not None:
            return _free_search(problem, T, price, free, floor, cut=False)
    return _free_search(problem, R, price, free, floor)


DROP_UP_TO = 64  # replays `_lowered` drops one at a time (each round simulates every one of them)


def _lowered(problem: RematProblem, R: frozenset[int], T: frozenset[int], floor: int) -> frozenset[int] | None:
    """`T` with replays outside `R` dropped, each time the one leaving the lowest (peak, boundary
    bytes), until its peak is at most `floor`; None where that takes more than DROP_UP_TO replays."""
    extra = T - R
    if len(extra) > DROP_UP_TO:
        return None
    now = simulate(problem, T)
    while now.peak_bytes > floor:
        sims = [(simulate(problem, T - {x}), x) for x in sorted(extra)]
        if not sims:
            return None
        sim, x = min(sims, key=lambda sx: (sx[0].peak_bytes, sx[0].boundary_bytes, sx[1]))
        if sim.peak_bytes >= now.peak_bytes:
            return None
        T, now, extra = T - {x}, sim, extra - {x}
    return T


def _free_search(problem: RematProblem, R: frozenset[int], price: float, free: list[int], floor: int,
                 cut: bool = True) -> frozenset[int]:
    """The free part of `R` (cost `price`) chosen by the fewest boundary bytes with the peak up to
    `floor`, and by the lowest peak above it (NOTE [ Free recomputations break ties by memory ]);
    from `R` and, with `cut`, the minimum cut of held bytes."""

    def key(T: frozenset[int], cap: int | None = None) -> tuple[int, int, int, int]:
        sim = simulate(problem, T, cap=cap)  # stopped at `cap`: over it, never chosen
        return max(sim.peak_bytes, floor), sim.boundary_bytes, sim.peak_bytes, len(T)

    starts = (R, _cut_free(problem, R, set(free))) if cut else (R,)
    best = min(starts, key=lambda T: (recompute_cost(problem, T) > price, key(T)))
    now = key(best)
    for x in sorted(best - R, reverse=True):  # the cut's replays that lower nothing
        T = best - {x}
        k = key(T, cap=now[0] + 1)
        if k[:3] <= now[:3]:
            best, now = T, k
    improved = True
    while improved:
        improved = False
        for x in free:
            T = best | {x}
            if x in best or recompute_cost(problem, T) != price:
                continue
            k = key(T, cap=now[0] + 1)
            if k < now:
                best, now, improved = T, k, True
    return best


def _cut_free(problem: RematProblem, recompute: frozenset[int], free: set[int]) -> frozenset[int]:
    """The minimum cut of held bytes over the free nodes, the others fixed as `recompute` has them."""
    from .mincut import flow_graph

    cands = set(problem.candidates())
    nodes = tuple(dataclasses.replace(n, prefer="recompute") if i in recompute
                  else dataclasses.replace(n, ban="fixed by the plan") if i in cands and i not in free else n
                  for i, n in enumerate(problem.nodes))
    return flow_graph(dataclasses.replace(problem, nodes=nodes)).plan(1.0, {})


def _why_not(problem: RematProblem, budget: int, method: str, got: int) -> Exception:
    """The error for a plan over budget: another solver fits it (SolverError), or nothing
    known does (InfeasibleBudgetError naming the smallest feasible peak and what pins it)."""
    other = recompute_of(SOLVERS["auto"](problem, budget)) if method != "auto" else None
    other_peak = simulate(problem, other).peak_bytes if other is not None else got
    if other_peak <= budget:
        return SolverError(
            f"solver {method!r} planned a peak of {got / 2**20:.2f} MiB, over the {budget / 2**20:.2f} MiB "
            f"budget, although a plan at {other_peak / 2**20:.2f} MiB exists; use method='auto'")
    return infeasible(problem, budget)


def infeasible(problem: RematProblem, budget_bytes: int, floor_bytes: int | None = None,
               baseline_bytes: int | None = None) -> InfeasibleBudgetError:
    """The error for a budget below the floor: the peak of `min_peak_plan` (or `floor_bytes`,
    that plan's peak as measured by a dry run), where that plan peaks and what is live there
    (see NOTE [ The floor is one plan ] in auto.py). `baseline_bytes`: the un-checkpointed
    peak, for a budget given as a fraction of it."""
    sim = simulate(problem, min_peak_plan(problem), live_at_peak=True)
    nodes, buffers = problem.nodes, problem.buffers
    why = {nodes[buffers[b].producer].name: nodes[buffers[b].producer].ban for b in sim.live_at_peak
           if nodes[buffers[b].producer].ban is not None}
    pinned = sorted(why)
    by_node: dict[str, int] = {}
    for b in sim.live_at_peak:
        name = nodes[buffers[b].producer].name
        by_node[name] = by_node.get(name, 0) + buffers[b].nbytes
    largest = sorted(by_node.items(), key=lambda kv: (-kv[1], kv[0]))
    return InfeasibleBudgetError(budget_bytes, sim.peak_bytes if floor_bytes is None else floor_bytes, tuple(pinned),
                                 peak_at=sim.peak_at, largest=tuple(largest), baseline_bytes=baseline_bytes, why=why)
