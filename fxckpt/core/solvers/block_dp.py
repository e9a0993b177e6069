"""`block_dp`: plans for chains of repeated blocks (transformer layers, ResNet stages) composed
from per-block options by an exact multiple-choice DP (the rotor / Rockmate idea).

NOTE [ The block model ]
Units are the repeated blocks (candidates grouped by `block_of` their scope, in order) plus one
unit for the candidates outside every block (embeddings, loss head). Blocks whose candidates
have the same signature (ops, bytes, costs, in-block wiring) are identical and share one set of
options, each a set of in-block positions to recompute. An option o is measured once, by the
simulator, on one representative unit of its group (the last in execution order, whose backward
runs first):
    d(o) = bytes it removes from what is held across the forward/backward boundary,
    c(o) = its recompute cost (`RematProblem.cost`, what every solver minimizes),
    t(o) = how far its rematerialization rises above the held bytes it leaves (its transient).
The model prices a choice of one option per unit at peak0 - sum d + max t (peak0: the simulated
un-checkpointed peak) and cost sum c. For each candidate transient W, the cheapest choice with
every t <= W and sum d >= peak0 + W - budget is a multiple-choice knapsack, solved exactly over
the Pareto front of (sum d, sum c); identical blocks make that front small. The model is an
approximation of the simulator (interactions across block boundaries, gradients), so it is run
for a few model budgets at and under the real one and the simulator keeps the cheapest plan
that fits, as `chain_dp` does; the seed plans below compete too, so `block_dp` is never worse
than the min-cut solver at the same budget.

Options come from plans of the whole graph (the min-cut solver's at the budget, per-layer
checkpointing, nothing, everything; one min-cut solve is most of the time) cut into units: one good whole-graph plan gives every unit
an option, and the DP mixes them across units where the whole-graph solver could not. Where one
option of a group holds another (P < Q, differing in at most 6 positions, no option between
them), every option between them is added (`between`): on GPT-2 small at 50% the seeds give "base" and "base + 5 positions",
and the best plan (proven within 0.3%) recomputes "base + 2" in some layers and "base + the other
3" in others; with them, auto's plan there costs 350.76 ms of recompute instead of 429.72.
`auto` runs the same composition on its min-cut plan whenever the graph has two or more repeated
blocks: the per-group fronts are computed once for every model budget, so it adds a few
simulations per distinct option (0.14-0.19 s on GPT-2 small, a min-cut solve there: 0.6-1.2 s).
"""

from __future__ import annotations

from operator import itemgetter

from ..blocks import block_candidates, block_of
from ..simulate import simulate
from .baselines import solve_blocks
from .greedy import solve_greedy
from .mincut import solve_mincut
from .registry import register_solver

try:  # optional (with scipy, the `ilp` extra): NOTE [ Fronts in arrays ]
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

MODEL_TRIES = 8  # model budgets tried, from the real budget down in steps of STEP of it
STEP = 0.03


def units(problem) -> list[list[int]]:
    """Candidates per repeated block, in execution order, then those outside every block."""
    blocks, rest = block_candidates(problem)
    return [*blocks.values(), *([rest] if rest else [])]


def signature(problem, members: list[int]) -> tuple:
    """What makes two blocks identical: per candidate its op, bytes, cost, and which earlier
    candidates of the block it reads (by position)."""
    pos = {i: k for k, i in enumerate(members)}
    return tuple((problem.nodes[i].op, sum(problem.buffers[b].nbytes for b in problem.nodes[i].creates),
                  problem.cost[i], tuple(pos.get(j, -1) for j in problem.nodes[i].inputs)) for i in members)


def options_front(options: list[tuple[int, int, int, frozenset]]) -> list:
    """Options (d, c, t, positions) no other option beats on all of d (more), c and t (less)."""
    return [o for o in options if not any(
        p[0] >= o[0] and p[1] <= o[1] and p[2] <= o[2] and p[:3] != o[:3] for p in options)]


def compose(groups: list[tuple[int, list]], peak0: int, budget: int):
    """The cheapest choice under the block model: `groups` pairs a unit count with its options
    (d, c, t, positions); returns (cost, per group the chosen option indices) or None.

    Example:
        >>> opts = [(0, 0, 0, frozenset()), (10, 5, 2, frozenset({0}))]
        >>> compose([(3, opts)], peak0=100, budget=85)
        (10, [[0, 1, 1]])
    """
    return cheapest(fronts(groups), len(groups), peak0, budget)


def fronts(groups: list[tuple[int, list]], most: int | None = None) -> dict[int, list]:
    """Per transient bound W (every option's t), the Pareto front of the choices whose options
    all have t <= W, as (-sum d, sum c, choices), choices a linked list (earlier choices, group,
    option index), so that extending a choice copies nothing. They do not depend on the budget:
    computed once, they price every model budget down to peak0 - `most`: with `most`, sums of d
    past most + W count as most + W (more bytes removed buy nothing there), which keeps the fronts
    short. With numpy, each step runs as array operations (NOTE [ Fronts in arrays ])."""
    step = _step_arrays if np is not None else _step_lists
    out = {}
    for W in sorted({o[2] for _, opts in groups for o in opts}):
        cap = None if most is None else -(most + W)
        front = [(0, 0, None)]
        for g, (count, opts) in enumerate(groups):
            allowed = [(k, o) for k, o in enumerate(opts) if o[2] <= W]
            for _ in range(count):
                front = step(front, g, allowed, cap)
        out[W] = front
    return out


def _step_lists(front: list, g: int, allowed: list, cap: int | None) -> list:
    """`front` extended by one unit of group g, each choice by every allowed option, Pareto-pruned."""
    cap = -float("inf") if cap is None else cap
    return _pareto([(max(cap, negd - o[0]), c + o[1], (ch, g, k)) for negd, c, ch in front for k, o in allowed])


def _pareto(points: list) -> list:
    """The points no other beats on both -sum d and cost (the first of equals), by one sort."""
    points.sort(key=itemgetter(0, 1))
    keep, best = [], None
    for p in points:
        if best is None or p[1] < best:
            keep.append(p)
            best = p[1]
    return keep


# NOTE [ Fronts in arrays ]
# Extending a front of F choices by K options makes F x K points; on the U-Net at 50% the fronts
# reach 4,400 choices and a group has 60 options, and building, sorting and sweeping those points
# as Python tuples took 1.8 of auto's 3.4 CPU s. `_step_arrays` does the same in numpy: the points
# in the same order (choice-major, as `_step_lists` makes them), a stable sort on (-sum d, sum c),
# the same sweep (a point survives where it costs less than every point before it), and links
# built only for the survivors, so both return the same fronts, ties included (a test compares
# them). numpy is there wherever scipy is (the `ilp` extra); without it, `_step_lists`.
def _step_arrays(front: list, g: int, allowed: list, cap: int | None) -> list:
    if not front or not allowed:
        return []
    negd = np.array([p[0] for p in front])[:, None] - np.array([o[0] for _, o in allowed])[None, :]
    cost = (np.array([p[1] for p in front])[:, None] + np.array([o[1] for _, o in allowed])[None, :]).ravel()
    negd = (negd if cap is None else np.maximum(negd, cap)).ravel()
    order = np.lexsort((cost, negd))  # stable: equal points stay in the order they were made
    sorted_cost = cost[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = sorted_cost[1:] < np.minimum.accumulate(sorted_cost)[:-1]
    K = len(allowed)
    return [(d, c, (front[i // K][2], g, allowed[i % K][0]))
            for d, c, i in zip(negd[order[keep]].tolist(), sorted_cost[keep].tolist(), order[keep].tolist())]


def cheapest(by_w: dict[int, list], n_groups: int, peak0: int, budget: int):
    """The cheapest choice in `fronts` that the block model prices at most `budget`: (cost, per
    group the chosen option indices), or None."""
    best = None
    for W, front in by_w.items():
        for negd, c, ch in front:
            if peak0 + negd + W <= budget and (best is None or c < best[0]):
                best = (c, ch)
    if best is None:
        return None
    chosen = [[] for _ in range(n_groups)]
    ch = best[1]
    while ch is not None:
        ch, g, k = ch
        chosen[g].append(k)
    return best[0], [sorted(x) for x in chosen]


def between(positions: set[frozenset], limit: int = 6) -> set[frozenset]:
    """The options and, for each two of them P < Q with none between them that differ in at
    most `limit` positions, every option between them (P plus any part of Q - P)."""
    out = set(positions)
    for P in positions:
        for Q in positions:
            extra = sorted(Q - P)
            if P < Q and len(extra) <= limit and not any(P < R < Q for R in positions):
                for mask in range(1, 2 ** len(extra) - 1):
                    out.add(P | {x for j, x in enumerate(extra) if mask >> j & 1})
    return out


def repeated(problem, members: list[list[int]] | None = None) -> bool:
    """Whether the graph has at least two repeated blocks (what `block_dp` needs)."""
    members = units(problem) if members is None else members
    return sum(1 for u in members if block_of(problem.nodes[u[0]].scope) is not None) >= 2


def compose_plan(problem, budget_bytes: int, plan: frozenset) -> frozenset | None:
    """The cheapest plan that fits among the seeds (`plan`, a whole-graph solver's, and per-layer
    checkpointing, nothing, everything) and those the block model composes from their per-unit
    parts (NOTE [ The block model ]); None when none fits."""
    seeds = [frozenset(), frozenset(problem.candidates()), solve_blocks(problem, budget_bytes), frozenset(plan)]
    members = units(problem)
    base = simulate(problem)
    by_sig: dict[tuple, list[int]] = {}
    for u, m in enumerate(members):
        by_sig.setdefault(signature(problem, m), []).append(u)
    groups, group_units = [], []
    for us in by_sig.values():
        positions = between({frozenset(k for k, i in enumerate(members[u]) if i in R) for R in seeds for u in us})
        rep = members[us[-1]]
        opts = []
        for pos in sorted(positions, key=sorted):
            R = frozenset(rep[k] for k in pos)
            sim = simulate(problem, R)
            d = base.boundary_bytes - sim.boundary_bytes
            opts.append((d, sim.recompute_cost, max(0, sim.peak_bytes - (base.peak_bytes - d)), pos))
        groups.append((len(us), options_front(opts)))
        group_units.append(us)
    best = None
    for R in seeds:  # a seed that fits is an answer too: the DP's model may miss it
        sim = simulate(problem, R)
        if sim.peak_bytes <= budget_bytes and (best is None or sim.recompute_cost < best[0]):
            best = (sim.recompute_cost, R)
    by_w = fronts(groups, base.peak_bytes - int(budget_bytes * (1 - STEP * (MODEL_TRIES - 1))))
    for k in range(MODEL_TRIES):
        got = cheapest(by_w, len(groups), base.peak_bytes, int(budget_bytes * (1 - STEP * k)))
        if got is None:
            break
        R = frozenset(members[u][p] for g, ks in enumerate(got[1]) for u, ko in zip(group_units[g], ks)
                      for p in groups[g][1][ko][3])
        sim = simulate(problem, R)
        if sim.peak_bytes <= budget_bytes and (best is None or sim.recompute_cost < best[0]):
            best = (sim.recompute_cost, R)
    return None if best is None else best[1]


@register_solver("block_dp")
def solve_block_dp(problem, budget_bytes):
    """Per-block options composed by an exact DP under the block model, judged by the simulator
    (see NOTE [ The block model ]); graphs with fewer than two repeated blocks get the greedy
    descent, and so does a budget no composed or seed plan fits."""
    if not repeated(problem):
        return solve_greedy(problem, budget_bytes)
    if simulate(problem).peak_bytes <= budget_bytes:
        return frozenset()
    got = compose_plan(problem, budget_bytes, solve_mincut(problem, budget_bytes))
    return got if got is not None else solve_greedy(problem, budget_bytes)
