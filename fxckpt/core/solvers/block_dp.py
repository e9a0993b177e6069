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
an option, and the DP mixes them across units where the whole-graph solver could not.
"""

from __future__ import annotations

from ..simulate import recompute_cost, simulate
from .baselines import block_of, solve_blocks
from .chain import _add
from .greedy import solve_greedy
from .mincut import solve_mincut
from .registry import register_solver

MODEL_TRIES = 8  # model budgets tried, from the real budget down in steps of STEP of it
STEP = 0.03


def units(problem) -> list[list[int]]:
    """Candidates per repeated block, in execution order, then those outside every block."""
    order: dict[str | None, list[int]] = {}
    for i in problem.candidates():
        order.setdefault(block_of(problem.nodes[i].scope), []).append(i)
    rest = order.pop(None, [])
    return [*order.values(), *([rest] if rest else [])]


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
    best = None
    for W in sorted({o[2] for _, opts in groups for o in opts}):
        # front: (-sum d, sum c, choices) with choices a tuple of (group, option index)
        front = [(0, 0, ())]
        for g, (count, opts) in enumerate(groups):
            allowed = [(k, o) for k, o in enumerate(opts) if o[2] <= W]
            for _ in range(count):
                nxt: list = []
                for negd, c, ch in front:
                    for k, o in allowed:
                        _add(nxt, (negd - o[0], c + o[1], ch + ((g, k),)))
                front = nxt
        for negd, c, ch in front:
            if peak0 + negd + W <= budget and (best is None or c < best[0]):
                best = (c, ch)
    if best is None:
        return None
    chosen = [[] for _ in groups]
    for g, k in best[1]:
        chosen[g].append(k)
    return best[0], [sorted(x) for x in chosen]


@register_solver("block_dp")
def solve_block_dp(problem, budget_bytes):
    """Per-block options composed by an exact DP under the block model, judged by the simulator
    (see NOTE [ The block model ]); graphs with fewer than two repeated blocks get the greedy
    descent, and so does a budget no composed or seed plan fits."""
    members = units(problem)
    if sum(1 for u in members if block_of(problem.nodes[u[0]].scope) is not None) < 2:
        return solve_greedy(problem, budget_bytes)
    base = simulate(problem)
    if base.peak_bytes <= budget_bytes:
        return frozenset()
    seeds = [frozenset(), frozenset(problem.candidates()), solve_blocks(problem, budget_bytes),
             solve_mincut(problem, budget_bytes)]
    by_sig: dict[tuple, list[int]] = {}
    for u, m in enumerate(members):
        by_sig.setdefault(signature(problem, m), []).append(u)
    groups, group_units = [], []
    for us in by_sig.values():
        positions = {frozenset(k for k, i in enumerate(members[u]) if i in R) for R in seeds for u in us}
        rep = members[us[-1]]
        opts = []
        for pos in positions:
            R = frozenset(rep[k] for k in pos)
            sim = simulate(problem, R)
            d = base.boundary_bytes - sim.boundary_bytes
            opts.append((d, recompute_cost(problem, R), max(0, sim.peak_bytes - (base.peak_bytes - d)), pos))
        groups.append((len(us), options_front(opts)))
        group_units.append(us)
    best = None
    for R in seeds:  # a seed that fits is an answer too: the DP's model may miss it
        sim = simulate(problem, R)
        if sim.peak_bytes <= budget_bytes and (best is None or sim.recompute_cost < best[0]):
            best = (sim.recompute_cost, R)
    for k in range(MODEL_TRIES):
        got = compose(groups, base.peak_bytes, int(budget_bytes * (1 - STEP * k)))
        if got is None:
            break
        R = frozenset(members[u][p] for g, ks in enumerate(got[1]) for u, ko in zip(group_units[g], ks)
                      for p in groups[g][1][ko][3])
        sim = simulate(problem, R)
        if sim.peak_bytes <= budget_bytes and (best is None or sim.recompute_cost < best[0]):
            best = (sim.recompute_cost, R)
    return best[1] if best is not None else solve_greedy(problem, budget_bytes)
