"""Greedy peak descent: recompute what is held at the simulated peak, cheapest bytes first,
then give back recomputations the budget does not need."""

from __future__ import annotations

from ..simulate import simulate
from .registry import register_solver

_TRIES = 8  # candidates simulated at a time: the byte/FLOP score alone misjudges timing
_MAX_TRIALS = 64  # per step, before settling for a candidate that keeps the peak level
_BULK_FROM = 1500  # nodes: larger graphs take many candidates per step (faster, a little costlier)


def _ranked(problem, R, live, allowed, alpha: float) -> list[tuple[float, int, int]]:
    """(score, node, bytes it holds at the peak) for the candidates outside R scoring above 0,
    best first, where score = held bytes / (cost + 1) ** alpha; found from the live buffers
    rather than by scoring every candidate."""
    buffers, nodes, cost = problem.buffers, problem.nodes, problem.cost
    held: dict[int, int] = {}
    for b in live:  # a live buffer was allocated by its producer, which creates it
        p = buffers[b].producer
        held[p] = held.get(p, 0) + buffers[b].nbytes * nodes[p].creates.count(b)
    allowed = set(allowed)
    ranked = sorted(((h / (cost[p] + 1) ** alpha, p, h) for p, h in held.items() if p in allowed and p not in R),
                    reverse=True)
    return [t for t in ranked if t[0] > 0]


def descend(problem, budget_bytes: int, alpha: float = 1.0, start=(), exclude=(), most=None) -> frozenset[int]:
    """Add recomputations (to `start`, never from `exclude`) until the simulated peak is within
    budget (or stops falling, or the recompute cost passes `most`); returns the lowest-peak set
    seen on the way when the budget is never met."""
    allowed = [i for i in problem.candidates() if problem.nodes[i].prefer != "save" and i not in exclude]
    R = frozenset(start) | {i for i in allowed if problem.nodes[i].prefer == "recompute"}
    sim = simulate(problem, R, live_at_peak=True)
    best = (sim.peak_bytes, R)
    large = len(problem.nodes) > _BULK_FROM
    while sim.peak_bytes > budget_bytes and (most is None or sim.recompute_cost <= most):
        stepped = _bulk_step(problem, R, sim, allowed, alpha, budget_bytes) if large else None
        if stepped is not None:
            R, sim = stepped
            if sim.peak_bytes < best[0]:
                best = (sim.peak_bytes, R)
            continue
        choices = _step(problem, R, sim, allowed, alpha)
        if not choices:
            break
        R = R | {choices[0]}
        peak = simulate(problem, R).peak_bytes if len(choices) > 1 else None
        for p in choices[1:]:  # the chunk's other winners, kept while each still lowers the peak
            if peak <= budget_bytes:
                break
            trial = simulate(problem, R | {p}, cap=peak).peak_bytes
            if trial < peak:  # below the cap: the exact peak
                R, peak = R | {p}, trial
        sim = simulate(problem, R, live_at_peak=True)
        if sim.peak_bytes < best[0]:
            best = (sim.peak_bytes, R)
    return R if sim.peak_bytes <= budget_bytes else best[1]


def _bulk_step(problem, R, sim, allowed, alpha: float, budget_bytes: int):
    """On large graphs, `_bulk`'s candidates (when more than one) at once: the new plan and its
    simulation if they lower the peak, else None."""
    bulk = _bulk(problem, R, sim, allowed, alpha, sim.peak_bytes - budget_bytes)
    if len(bulk) > 1 and simulate(problem, R | bulk, cap=sim.peak_bytes).peak_bytes < sim.peak_bytes:
        return R | bulk, simulate(problem, R | bulk, live_at_peak=True)
    return None


def _bulk(problem, R, sim, allowed, alpha: float, excess: int) -> frozenset[int]:
    """Far above the budget, one candidate at a time is slow on large graphs: take the
    best-scored ones held at the peak until they hold the excess (pruning gives back extras)."""
    chosen, held = [], 0
    for _, p, h in _ranked(problem, R, sim.live_at_peak, allowed, alpha):
        if held >= excess:
            break
        chosen.append(p)
        held += h
    return frozenset(chosen[: max(1, len(chosen) // 2)])


def _step(problem, R, sim, allowed, alpha: float) -> list[int]:
    """Candidates held at the peak that lower it, best gain per unit of cost first, searching in score
    order _TRIES at a time; failing that, the best-scored one that at least does not raise it
    (the peak may sit on a plateau of equal steps)."""
    ranked = [p for _, p, _ in _ranked(problem, R, sim.live_at_peak, allowed, alpha)]
    tried = ranked[:-(-min(len(ranked), _MAX_TRIALS) // _TRIES) * _TRIES]  # whole chunks of _TRIES
    level = []  # trials that first reach the peak exactly: they may keep it level
    for start in range(0, len(tried), _TRIES):
        # Stopping at the peak itself (not above it) tells the lower ones exactly, and no more.
        trials = [(simulate(problem, R | {p}, cap=sim.peak_bytes).peak_bytes, p) for p in tried[start:start + _TRIES]]
        lower = [((sim.peak_bytes - peak) / (problem.cost[p] + 1) ** alpha, p)
                 for peak, p in trials if peak < sim.peak_bytes]
        if lower:
            return [p for _, p in sorted(lower, reverse=True)]
        level.extend(p for peak, p in trials if peak == sim.peak_bytes)
    for p in level:  # none lower: the first that keeps the peak level
        if simulate(problem, R | {p}, cap=sim.peak_bytes + 1).peak_bytes == sim.peak_bytes:
            return [p]
    return []


def prune(problem, R: frozenset[int], budget_bytes: int) -> frozenset[int]:
    """Keep again, most expensive first, every recomputed node the budget can afford."""
    for p in sorted(R, key=lambda i: -problem.cost[i]):
        if problem.nodes[p].prefer == "recompute":
            continue
        trial = R - {p}
        if simulate(problem, trial, cap=budget_bytes + 1).peak_bytes <= budget_bytes:
            R = trial
    return R


@register_solver("greedy")
def solve_greedy(problem, budget_bytes):
    """Descend weighing bytes against recompute cost; if that stalls above the budget, descend again on
    bytes alone (the lowest peak); then prune."""
    R = descend(problem, budget_bytes)
    if simulate(problem, R).peak_bytes > budget_bytes:
        R = descend(problem, budget_bytes, alpha=0.0)
    if simulate(problem, R).peak_bytes <= budget_bytes:
        R = prune(problem, R, budget_bytes)
    return R
