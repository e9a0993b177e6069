"""Greedy peak descent: recompute what is held at the simulated peak, cheapest bytes first,
then give back recomputations the budget does not need."""

from __future__ import annotations

import time

from ..simulate import simulate
from . import register_solver

_TRIES = 8  # candidates simulated at a time: the byte/FLOP score alone misjudges timing
_MAX_TRIALS = 64  # per step, before settling for a candidate that keeps the peak level
_BULK_FROM = 1500  # nodes: larger graphs take many candidates per step (faster, a little costlier)




def _score(problem, p, live, alpha: float = 1.0) -> float:
    held = sum(problem.buffers[b].nbytes for b in problem.nodes[p].creates if b in live)
    return held / (problem.nodes[p].flops + 1) ** alpha


def descend(problem, budget_bytes: int, alpha: float = 1.0, start=(), exclude=()) -> frozenset[int]:
    """Add recomputations (to `start`, never from `exclude`) until the simulated peak is within
    budget (or stops falling); returns the lowest-peak set seen on the way when the budget is
    never met."""
    allowed = [i for i in problem.candidates() if problem.nodes[i].prefer != "save" and i not in exclude]
    R = frozenset(start) | {i for i in allowed if problem.nodes[i].prefer == "recompute"}
    sim = simulate(problem, R, live_at_peak=True)
    best = (sim.peak_bytes, R)
    large = len(problem.nodes) > _BULK_FROM
    while sim.peak_bytes > budget_bytes:
        bulk = _bulk(problem, R, sim, allowed, alpha, sim.peak_bytes - budget_bytes) if large else ()
        if len(bulk) > 1:
            trial = simulate(problem, R | bulk, live_at_peak=True)
            if trial.peak_bytes < sim.peak_bytes:
                R, sim = R | bulk, trial
                if sim.peak_bytes < best[0]:
                    best = (sim.peak_bytes, R)
                continue
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


def _bulk(problem, R, sim, allowed, alpha: float, excess: int) -> frozenset[int]:
    """Far above the budget, one candidate at a time is slow on large graphs: take the
    best-scored ones held at the peak until they hold the excess (pruning gives back extras)."""
    ranked = sorted(((_score(problem, p, sim.live_at_peak, alpha), p) for p in allowed if p not in R), reverse=True)
    chosen, held = [], 0
    for s, p in ranked:
        if s <= 0 or held >= excess:
            break
        chosen.append(p)
        held += sum(problem.buffers[b].nbytes for b in problem.nodes[p].creates if b in sim.live_at_peak)
    return frozenset(chosen[: max(1, len(chosen) // 2)])


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


def improve(problem, R: frozenset[int], budget_bytes: int, deadline: float) -> frozenset[int]:
    """Local search: give back one recomputed node, expensive first, and descend again without
    it; keep the result when it fits for fewer FLOPs. Stops at a local optimum or the deadline."""
    cost = lambda S: sum(problem.nodes[i].flops for i in S)  # noqa: E731
    better = True
    while better and time.perf_counter() < deadline:
        better = False
        for x in sorted(R, key=lambda i: -problem.nodes[i].flops):
            if time.perf_counter() >= deadline:
                break
            trial = descend(problem, budget_bytes, start=R - {x}, exclude={x})
            if simulate(problem, trial).peak_bytes <= budget_bytes:
                trial = prune(problem, trial, budget_bytes)
                if cost(trial) < cost(R):
                    R, better = trial, True
                    break
    return R


@register_solver("greedy")
def solve_greedy(problem, budget_bytes):
    """Descend weighing bytes against FLOPs; if that stalls above the budget, descend again on
    bytes alone (the lowest peak); then prune."""
    R = descend(problem, budget_bytes)
    if simulate(problem, R).peak_bytes > budget_bytes:
        R = descend(problem, budget_bytes, alpha=0.0)
    if simulate(problem, R).peak_bytes <= budget_bytes:
        R = prune(problem, R, budget_bytes)
    return R
