"""Greedy peak descent: recompute what is held at the simulated peak, cheapest bytes first,
then give back recomputations the budget does not need."""

from __future__ import annotations

from ..simulate import simulate
from . import register_solver

_TRIES = 8  # candidates simulated at a time: the byte/FLOP score alone misjudges timing
_MAX_TRIALS = 64  # per step, before settling for a candidate that keeps the peak level


_ALPHAS = (1.0,)  # FLOPs exponents tried; (1.0, 0.5, 0.0) gained little on random graphs at 3x the time


def _score(problem, p, live, alpha: float = 1.0) -> float:
    held = sum(problem.buffers[b].nbytes for b in problem.nodes[p].creates if b in live)
    return held / (problem.nodes[p].flops + 1) ** alpha


def descend(problem, budget_bytes: int, alpha: float = 1.0) -> frozenset[int]:
    """Add recomputations until the simulated peak is within budget (or stops falling);
    returns the lowest-peak set seen on the way when the budget is never met."""
    allowed = [i for i in problem.candidates() if problem.nodes[i].prefer != "save"]
    R = frozenset(i for i in allowed if problem.nodes[i].prefer == "recompute")
    sim = simulate(problem, R, live_at_peak=True)
    best = (sim.peak_bytes, R)
    while sim.peak_bytes > budget_bytes:
        choices = _step(problem, R, sim, allowed, alpha)
        if not choices:
            break
        R = R | {choices[0]}
        for p in choices[1:]:  # the chunk's other winners, kept while each still lowers the peak
            peak = simulate(problem, R).peak_bytes
            if peak <= budget_bytes:
                break
            trial = simulate(problem, R | {p}, cap=peak).peak_bytes
            if trial < peak:
                R = R | {p}
        sim = simulate(problem, R, live_at_peak=True)
        if sim.peak_bytes < best[0]:
            best = (sim.peak_bytes, R)
    return R if sim.peak_bytes <= budget_bytes else best[1]


def _step(problem, R, sim, allowed, alpha: float) -> list[int]:
    """Candidates held at the peak that lower it, best gain per FLOP first, searching in score
    order _TRIES at a time; failing that, the best-scored one that at least does not raise it
    (the peak may sit on a plateau of equal steps)."""
    ranked = sorted(((_score(problem, p, sim.live_at_peak, alpha), p) for p in allowed if p not in R), reverse=True)
    ranked = [p for s, p in ranked if s > 0]
    level = None
    for start in range(0, min(len(ranked), _MAX_TRIALS), _TRIES):
        trials = [(simulate(problem, R | {p}, cap=sim.peak_bytes + 1).peak_bytes, p) for p in ranked[start:start + _TRIES]]
        lower = [((sim.peak_bytes - peak) / (problem.nodes[p].flops + 1) ** alpha, p)
                 for peak, p in trials if peak < sim.peak_bytes]
        if lower:
            return [p for _, p in sorted(lower, reverse=True)]
        if level is None:
            level = next((p for peak, p in trials if peak == sim.peak_bytes), None)
    return [] if level is None else [level]


def prune(problem, R: frozenset[int], budget_bytes: int) -> frozenset[int]:
    """Keep again, most expensive first, every recomputed node the budget can afford."""
    for p in sorted(R, key=lambda i: -problem.nodes[i].flops):
        if problem.nodes[p].prefer == "recompute":
            continue
        trial = R - {p}
        if simulate(problem, trial, cap=budget_bytes + 1).peak_bytes <= budget_bytes:
            R = trial
    return R


@register_solver("greedy")
def solve_greedy(problem, budget_bytes):
    """Descents that weigh FLOPs more or less against bytes, each pruned; the cheapest plan
    that fits wins (else the lowest peak)."""
    best = None
    for alpha in _ALPHAS:
        R = descend(problem, budget_bytes, alpha)
        peak = simulate(problem, R).peak_bytes
        if peak <= budget_bytes:
            R = prune(problem, R, budget_bytes)
        cost = sum(problem.nodes[i].flops for i in R)
        key = (peak > budget_bytes, peak if peak > budget_bytes else cost)
        if best is None or key < best[0]:
            best = (key, R)
        if alpha == _ALPHAS[0] and not R:
            break  # nothing to recompute: the budget already holds
    return best[1]
