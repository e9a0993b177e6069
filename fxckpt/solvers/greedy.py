"""Greedy peak descent: recompute what is held at the simulated peak, cheapest bytes first,
then give back recomputations the budget does not need."""

from __future__ import annotations

from ..simulate import simulate
from . import register_solver

_TRIES = 8  # candidates simulated per step: the byte/FLOP score alone misjudges timing


def _score(problem, p, live) -> float:
    held = sum(problem.buffers[b].nbytes for b in problem.nodes[p].creates if b in live)
    return held / (problem.nodes[p].flops + 1)


def descend(problem, budget_bytes: int) -> frozenset[int]:
    """Add recomputations until the simulated peak is within budget (or stops falling);
    returns the lowest-peak set seen on the way when the budget is never met."""
    allowed = [i for i in problem.candidates() if problem.nodes[i].prefer != "save"]
    R = frozenset(i for i in allowed if problem.nodes[i].prefer == "recompute")
    sim = simulate(problem, R, live_at_peak=True)
    best = (sim.peak_bytes, R)
    while sim.peak_bytes > budget_bytes:
        scored = sorted(((_score(problem, p, sim.live_at_peak), p) for p in allowed if p not in R), reverse=True)
        scored = [p for s, p in scored if s > 0][:_TRIES]
        if not scored:
            break
        trials = [(simulate(problem, R | {p}), p) for p in scored]
        gain = [((sim.peak_bytes - t.peak_bytes) / (problem.nodes[p].flops + 1), -t.peak_bytes, p)
                for t, p in trials if t.peak_bytes <= sim.peak_bytes]
        if not gain:
            break
        R = R | {max(gain)[2]}
        sim = simulate(problem, R, live_at_peak=True)
        if sim.peak_bytes < best[0]:
            best = (sim.peak_bytes, R)
    return R if sim.peak_bytes <= budget_bytes else best[1]


def prune(problem, R: frozenset[int], budget_bytes: int) -> frozenset[int]:
    """Keep again, most expensive first, every recomputed node the budget can afford."""
    for p in sorted(R, key=lambda i: -problem.nodes[i].flops):
        if problem.nodes[p].prefer == "recompute":
            continue
        trial = R - {p}
        if simulate(problem, trial).peak_bytes <= budget_bytes:
            R = trial
    return R


@register_solver("greedy")
def solve_greedy(problem, budget_bytes):
    R = descend(problem, budget_bytes)
    if simulate(problem, R).peak_bytes <= budget_bytes:
        R = prune(problem, R, budget_bytes)
    return R
