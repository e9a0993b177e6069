"""`block_dp`: plans for chains of repeated blocks (transformer layers, ResNet stages) composed
from per-block options by an exact multiple-choice DP (the rotor / Rockmate idea).

NOTE [ The phase model ]
Units are the repeated blocks (candidates grouped by `block_of` their scope) and the runs of
candidates outside every block (embeddings, loss head), in execution order. Blocks whose
candidates have the same signature (ops, bytes, costs, in-block wiring) are identical and share
one set of options, each a set of in-block positions to recompute. Every step of the simulated
run belongs to the phase of one unit (the unit of the last candidate at or before its node;
`phases`), forward or backward. An option o is measured once, by the simulator (`phase_peaks`),
on one representative unit r of its group (the last in execution order, whose backward runs
first), the rest of the graph un-checkpointed:
    d(o) = bytes it removes from what is held across the forward/backward boundary,
    c(o) = its recompute cost (`RematProblem.cost`, what every solver minimizes),
    xf(o), xb(o) = how far it moves the peak of r's own forward / backward phase.
While unit j runs forward or backward, the units after it are not yet run or already done, and
those before it hold what they keep; so the model prices a choice of one option per unit at
    max over units j of  max(Lf_j + xf(o_j), Lb_j + xb(o_j)) - sum of d(o_u) over units u < j
(Lf_j, Lb_j: the un-checkpointed peaks of j's phases), and cost sum c. Its cheapest choice is
exact by a DP over units in order on the Pareto front of (sum d, sum c): an option is allowed
where the sum d before it covers its phase's excess over the budget. The position matters: a
recomputation with a large transient is cheap in an early layer, whose backward runs when the
later layers' held bytes are gone (the block model before priced every transient at the
boundary: on the Llama zoo model at 50% its compositions cost 130-170 ms of recompute against
the min-cut plan's 54.05). The model leaves out interactions across units (a residual read by
the next block, d not adding up exactly: on that Llama the model over-prices plans by 0.9%), so
`_composed` searches model budgets by the simulator's verdict on each composed plan (its error
off the next model budget, bisecting once bracketed), and the seed plans compete too, so
`block_dp` is never worse than the min-cut solver at the same budget.

Options come from plans of the whole graph (the min-cut solver's at the budget, per-layer
checkpointing, nothing, everything; one min-cut solve is most of the time) cut into units: one
good whole-graph plan gives every unit an option, and the DP mixes them across units where the
whole-graph solver could not. Where one option of a group holds another (P < Q, differing in at
most 6 positions, no option between them), every option between them is added (`between`): on
GPT-2 small at 50% the seeds give "base" and "base + 5 positions", and the best plan (proven
within 0.3%) recomputes "base + 2" in some layers and "base + the other 3" in others. Then, once
(NEIGHBOUR_ROUNDS), every option one position away from those the composition chose is measured
and the DP runs again: on the Llama zoo model at 50% the best plan known recomputes one more
projection ("base + 1") in two layers where the min-cut plan recomputes two larger ones in one
(50.40 ms against 54.05; the projected MILP's best in 60 s is the same plan).
"""

from __future__ import annotations

from operator import itemgetter

from ..blocks import block_candidates, block_of
from ..simulate import phase_peaks, simulate, step_facts
from .baselines import solve_blocks
from .greedy import solve_greedy
from .mincut import solve_mincut
from .registry import register_solver

try:  # optional (with scipy, the `ilp` extra): NOTE [ Fronts in arrays ]
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

MODEL_TRIES = 8  # model budgets tried (`_composed`)
STEP = 0.03  # of the budget: the first step down where the model's plan does not fit
TIGHT = 0.001  # of the budget: slack that is not worth another try
NEIGHBOUR_ROUNDS = 1  # rounds of one-position neighbours of the options a composition chose


def units(problem) -> list[list[int]]:
    """Candidates per repeated block and per run of candidates outside every block (between
    two blocks' candidates), units in execution order."""
    blocks, _ = block_candidates(problem)
    runs: list[list[int]] = []
    for i in problem.candidates():
        if block_of(problem.nodes[i].scope) is not None:
            runs.append([])
        elif runs and runs[-1]:
            runs[-1].append(i)
        else:
            runs.append([i])
    return sorted([*blocks.values(), *(r for r in runs if r)], key=itemgetter(0))


def phases(problem, members: list[list[int]]) -> list[int]:
    """Per node, the unit of the last candidate at or before it (0 before the first): the phase
    its forward and backward steps belong to (NOTE [ The phase model ])."""
    unit_of = {i: u for u, m in enumerate(members) for i in m}
    out, u = [], 0
    for i in range(len(problem.nodes)):
        u = unit_of.get(i, u)
        out.append(u)
    return out


def signature(problem, members: list[int]) -> tuple:
    """What makes two blocks identical: per candidate its op, bytes, cost, and which earlier
    candidates of the block it reads (by position)."""
    pos = {i: k for k, i in enumerate(members)}
    return tuple((problem.nodes[i].op, sum(problem.buffers[b].nbytes for b in problem.nodes[i].creates),
                  problem.cost[i], tuple(pos.get(j, -1) for j in problem.nodes[i].inputs)) for i in members)


def options_front(options: list[tuple]) -> list:
    """Options (d, c, xf, xb, positions) no other option beats on all of d (more), c, xf and xb
    (less)."""
    return [o for o in options if not any(
        p[0] >= o[0] and p[1] <= o[1] and p[2] <= o[2] and p[3] <= o[3] and p[:4] != o[:4] for p in options)]


def compose(unit_opts: list[list[tuple]], levels: list[tuple[float, float]], budget: int):
    """The cheapest choice of one option per unit under the phase model (NOTE [ The phase
    model ]): `unit_opts` lists each unit's options (d, c, xf, xb, ...) in execution order,
    `levels` each unit's un-checkpointed forward and backward peaks; returns (cost, per unit
    the chosen option index) or None.

    Example:
        >>> opts = [(0, 0, 0, 0), (10, 5, 0, 2)]
        >>> compose([opts] * 3, [(50, 60), (50, 100), (50, 100)], budget=95)  # unit 0 holds less for 1 and 2
        (5, [1, 0, 0])
    """
    needs = [[max(lf + o[2], lb + o[3]) - budget for o in opts] for opts, (lf, lb) in zip(unit_opts, levels)]
    cap = max(0, max((n for ns in needs for n in ns), default=0))  # held bytes removed past it buy nothing
    step = _step_arrays if np is not None else _step_lists
    front = [(0, 0, None)]
    for u, opts in enumerate(unit_opts):
        front = step(front, u, opts, needs[u], cap)
    if not front:
        return None
    cost, ch = min(front, key=itemgetter(1))[1:]
    chosen = []
    while ch is not None:
        ch, _, k = ch
        chosen.append(k)
    return cost, chosen[::-1]


def _step_lists(front: list, u: int, opts: list, needs: list, cap: int) -> list:
    """`front` (-sum d, sum c, choices) extended by every option of unit u whose phase fits
    (sum d so far >= its need), sum d capped at `cap`, Pareto-pruned."""
    return _pareto([(max(-cap, negd - o[0]), c + o[1], (ch, u, k)) for negd, c, ch in front
                    for k, o in enumerate(opts) if -negd >= needs[k]])


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
# reach thousands of choices and a unit has tens of options, and building, sorting and sweeping
# those points as Python tuples was most of auto's CPU time. `_step_arrays` does the same in
# numpy: the points in the same order (choice-major, as `_step_lists` makes them), a stable sort
# on (-sum d, sum c), the same sweep (a point survives where it costs less than every point
# before it), and links built only for the survivors, so both return the same fronts, ties
# included (a test compares them). numpy is there wherever scipy is (the `ilp` extra); without
# it, `_step_lists`.
def _step_arrays(front: list, u: int, opts: list, needs: list, cap: int) -> list:
    if not front or not opts:
        return []
    held = np.array([p[0] for p in front])
    negd = np.maximum(held[:, None] - np.array([o[0] for o in opts])[None, :], -cap).ravel()
    cost = (np.array([p[1] for p in front])[:, None] + np.array([o[1] for o in opts])[None, :]).ravel()
    ok = ((-held)[:, None] >= np.array(needs)[None, :]).ravel()
    idx = np.flatnonzero(ok)
    if not len(idx):
        return []
    order = idx[np.lexsort((cost[idx], negd[idx]))]  # stable: equal points stay in the order they were made
    sorted_cost = cost[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = sorted_cost[1:] < np.minimum.accumulate(sorted_cost)[:-1]
    K = len(opts)
    return [(d, c, (front[i // K][2], u, i % K))
            for d, c, i in zip(negd[order[keep]].tolist(), sorted_cost[keep].tolist(), order[keep].tolist())]


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
    checkpointing, nothing, everything) and those the phase model composes from their per-unit
    parts and their neighbours (NOTE [ The phase model ]); None when none fits."""
    seeds = [frozenset(), frozenset(problem.candidates()), solve_blocks(problem, budget_bytes), frozenset(plan)]
    members = units(problem)
    phase = phases(problem, members)
    base, levels = phase_peaks(problem, (), phase)
    by_sig: dict[tuple, list[int]] = {}
    for u, m in enumerate(members):
        by_sig.setdefault(signature(problem, m), []).append(u)
    group_units = list(by_sig.values())
    measured: list[dict] = [{} for _ in group_units]

    def measure(g: int, positions) -> None:
        r = group_units[g][-1]  # the last of its group: its backward runs first
        for pos in sorted(set(positions) - measured[g].keys(), key=sorted):
            sim, peaks = phase_peaks(problem, frozenset(members[r][k] for k in pos), phase, unit=r)
            measured[g][pos] = (base.boundary_bytes - sim.boundary_bytes, sim.recompute_cost,
                                *(peaks.get((kind, r), 0) - levels.get((kind, r), 0) for kind in "fb"), pos)

    for g, us in enumerate(group_units):
        measure(g, between({frozenset(k for k, i in enumerate(members[u]) if i in R) for R in seeds for u in us}))
    best = None
    for R in seeds:  # a seed that fits is an answer too: the model may miss it
        sim = simulate(problem, R)
        if sim.peak_bytes <= budget_bytes and (best is None or sim.recompute_cost < best[0]):
            best = (sim.recompute_cost, R)
    level = [(levels.get(("f", u), 0), levels.get(("b", u), 0)) for u in range(len(members))]
    group_of = {u: g for g, us in enumerate(group_units) for u in us}
    for rnd in range(NEIGHBOUR_ROUNDS + 1):
        opts = [options_front(list(m.values())) for m in measured]
        got = _composed(problem, budget_bytes, members, [opts[group_of[u]] for u in range(len(members))], level)
        if got is None:
            break
        sim, R, picked = got
        if sim.peak_bytes <= budget_bytes and (best is None or sim.recompute_cost < best[0]):
            best = (sim.recompute_cost, R)
        if rnd < NEIGHBOUR_ROUNDS:  # one position more or less in the options chosen
            for g, us in enumerate(group_units):
                measure(g, {P for u in us for P in _flips(problem, members[u], picked[u])})
    return None if best is None else best[1]


def _flips(problem, members: list[int], positions: frozenset) -> set[frozenset]:
    """The options one position away from `positions` in a unit, but for recomputing a node
    nothing holds (no backward saves it, no recomputed node of the unit reads it): the
    simulator runs that plan as if it were kept (a third of the U-Net's candidates)."""
    saved_by = step_facts(problem).saved_by
    reads = {a for k in positions for a in problem.nodes[members[k]].inputs}
    return {positions ^ {k} for k, i in enumerate(members)
            if k in positions or i in reads or any(saved_by[b] for b in problem.nodes[i].creates)}


def _composed(problem, budget_bytes, members, unit_opts, level):
    """The cheapest composition that fits in the simulator among those the model makes at up to
    MODEL_TRIES model budgets, searched from the real budget (NOTE [ The phase model ]): (its
    simulation, plan, per unit its option's positions), or the last one tried when none fits;
    None when the model has none."""
    best = last = fit = over = None  # fit / over: the highest model budget whose plan fit, the lowest whose did not
    m, seen = budget_bytes, set()
    for _ in range(MODEL_TRIES):
        got = compose(unit_opts, level, m)
        if got is None:
            break
        picked = [unit_opts[u][ko][4] for u, ko in enumerate(got[1])]
        R = frozenset(members[u][p] for u, pos in enumerate(picked) for p in pos)
        if R not in seen:
            seen.add(R)
            last = (simulate(problem, R), R, picked)
            if last[0].peak_bytes <= budget_bytes and (best is None or last[0].recompute_cost < best[0].recompute_cost):
                best = last
        slack = budget_bytes - last[0].peak_bytes
        if slack >= 0:
            fit = m if fit is None else max(fit, m)
        else:
            over = m if over is None else min(over, m)
        # the model's error on this plan, taken off the next model budget (a secant step);
        # bisection where that leaves the bracket
        nxt = m + (slack if slack else -int(STEP * budget_bytes))
        if fit is not None and over is not None and not fit < nxt < over:
            nxt = (fit + over) // 2
        if nxt in (m, fit, over) or (slack >= 0 and slack < TIGHT * budget_bytes):
            break
        m = nxt
    return best or last


@register_solver("block_dp")
def solve_block_dp(problem, budget_bytes):
    """Per-block options composed by an exact DP under the phase model, judged by the simulator
    (see NOTE [ The phase model ]); graphs with fewer than two repeated blocks get the greedy
    descent, and so does a budget no composed or seed plan fits."""
    if not repeated(problem):
        return solve_greedy(problem, budget_bytes)
    if simulate(problem).peak_bytes <= budget_bytes:
        return frozenset()
    got = compose_plan(problem, budget_bytes, solve_mincut(problem, budget_bytes))
    return got if got is not None else solve_greedy(problem, budget_bytes)
