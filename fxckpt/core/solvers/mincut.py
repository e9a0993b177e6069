"""`mincut`: a parametric minimum cut picks what to hold, a knapsack repair fits the budget.

Phase 1 (cut). Each producer v (a node that allocates buffers) is split into v_in -> v_out with
capacity lam * bytes(v), the bytes its held value / saved buffers occupy; source -> v_in has
capacity cost(v), what replaying it costs (`RematProblem.cost`: FLOPs, or estimated ns). Data flow into a recipe is infinite
(src(a)_out -> v_in for every input a a replay of v reads), and every producer whose buffers
some backward saves connects v_out -> sink. A finite cut then labels each producer: v_in on
the sink side means "recompute v" (its FLOPs are paid), v_in on the source side with v_out on
the sink side means "hold v" (its bytes are paid), and the cut's value is
flops(R) + lam * held(R): the Lagrangian of "fewest FLOPs for these held bytes". Banned,
prefer="save" and non-candidate producers get an infinite source -> v_in (never recomputed);
prefer="recompute" ones an infinite v_in -> sink (always). Random ops need nothing special:
the runtime replays their RNG state, so only `ban` keeps a node from being recomputed.
Larger lam recomputes more (parametric cuts are nested), but the simulated peak is U-shaped
in lam: fewer held bytes, yet longer replays alive at once in backward. So a grid of lam
(the FLOPs-per-byte breakpoints) is cut, with bisection between the last lam over budget and
the cheapest one within; while no cut plan fits, the bytes live at the lowest peak are
reweighted (held ones dearer, replayed ones cheaper) and the grid cut again. Max-flow is
networkx's Boykov-Kolmogorov on small graphs, scipy's C Dinic (int32-scaled) on large ones.

Phase 2 (repair / knapsack). The sum of held bytes ignores timing, so `simulate` judges
every plan. A cut plan over budget is repaired by a peak descent in both directions (at the
peak: recompute a held producer, or hold a replayed one), with greedy's descent as a last
resort on graphs up to _DESCEND_UP_TO nodes. Then, knapsack-style, recomputations are given
back (kept again), the marginal ones first and most FLOPs per held byte first, while the
peak stays within budget (in halving groups on large graphs). Small graphs then get a local
search (swaps of one for up to three, give-one-back-and-descend), bounded in simulations.
Every phase's number of `simulate` calls is bounded by the problem size, not the clock, so
answers are deterministic and 10k-node graphs solve in a few seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import networkx as nx

from ..simulate import recompute_cost, simulate
from .registry import register_solver
from .greedy import descend, prune

try:  # optional (the `ilp` extra): a C max-flow, ~100x faster than networkx on large graphs
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow
except ImportError:  # pragma: no cover
    sp = None

BACKEND = "auto"  # "networkx", "scipy", or "auto": scipy (if installed) from _SCIPY_FROM nodes
_SCIPY_FROM = 200  # ResNet-50 (234 nodes): the same plans at 70 and 50%, its cut phase ~3x faster
_GRID = 24  # multipliers cut per round
_ROUNDS = 4  # reweighting rounds while no cut plan fits
_REFINE = 5  # bisection steps between the last multiplier over budget and the first within
_TRIES = 4  # moves of each kind simulated per repair step
_NODE_SIMULATIONS = 1_500_000  # simulations x nodes each later phase may spend (a few seconds)
_DESCEND_UP_TO = 1500  # nodes: the greedy descent as a last resort on smaller graphs only
_LOCAL_UP_TO = 200  # nodes: local search on smaller graphs only
_CLIMB_UP_TO = 500  # nodes: a shorter hill climb (of a plan that fits) up to this size
_LOCAL_ATTEMPTS = 40  # descents the second local search may run
_STARTS = 4  # plans the local search starts from
_SWAPS = 20000  # one-for-k swaps considered when there are at most this many
_CLIMB_CALLS = 3000  # simulations the local search may spend
_INT32 = 2**31 - 1


@dataclass
class _Cut:
    """The flow graph of a problem (built once by `flow_graph`); `plan(lam, mult)` cuts it for
    one multiplier (`mult[v]` scales producer v's bytes: the reweighting rounds' knob)."""

    producers: list[int]  # nodes that allocate, each split into an in and an out vertex
    allowed: list[int]  # producers the plan may recompute
    forced: frozenset[int]  # producers a user marked "recompute"
    hold_bytes: dict[int, int]  # what keeping each producer holds for backward
    flops: dict[int, int]  # what replaying each allowed producer costs
    vin: dict[int, int]  # the in vertex of each allowed producer
    size: int  # vertices: source 0, sink 1, then in/out per producer
    backend: str  # "scipy" or "networkx"
    # scipy: the edges as arrays, the producers' split edges among them
    rows: Any = None
    cols: Any = None
    caps: Any = None
    split_pos: Any = None
    split_bytes: Any = None
    # networkx: the graph and the producers' split edges
    G: Any = None
    split: list[tuple[int, int]] | None = None

    def plan(self, lam: float, mult: dict[int, float]) -> frozenset[int]:
        """The recompute set of a minimum cut of flops(R) + lam * sum(mult * held bytes)."""
        if self.backend == "scipy":
            reach = self._reach_scipy(lam, mult)
        else:
            G = self.G
            for v, e in zip(self.producers, self.split):
                G.edges[e]["capacity"] = round(lam * mult.get(v, 1.0) * self.hold_bytes[v])
            _, (reach, _) = nx.minimum_cut(G, 0, 1, flow_func=nx.algorithms.flow.boykov_kolmogorov)
        return frozenset(v for v, i in self.vin.items() if i not in reach) | self.forced

    def _reach_scipy(self, lam, mult) -> set[int]:
        caps = self.caps.copy()
        m = np.array([mult.get(v, 1.0) for v in self.producers])
        caps[self.split_pos] = lam * m * self.split_bytes
        finite = np.isfinite(caps)
        total = caps[finite].sum()
        scale = 2**30 / total if total > 0 else 1.0  # int32 capacities: the cut of all finite edges fits
        ints = np.where(finite, np.rint(np.where(finite, caps, 0) * scale), _INT32).astype(np.int32)
        M = sp.csr_array((ints, (self.rows, self.cols)), shape=(self.size, self.size))
        flow = maximum_flow(M, 0, 1).flow
        residual = (M - flow).tocsr()
        residual.data = (residual.data > 0).astype(np.int8)
        residual.eliminate_zeros()
        return set(breadth_first_order(residual, 0, directed=True, return_predecessors=False).tolist())


def flow_graph(problem, backend: str = "auto") -> _Cut:
    """The flow graph whose minimum cuts trade replay cost against held bytes: a source edge per
    allowed producer (its replay cost), a split edge per producer (its held bytes, set per
    multiplier), infinite edges from a producer to the producers whose replay reads it and from
    every saved buffer's producer to the sink."""
    nodes, buffers = problem.nodes, problem.buffers
    saved: set[int] = set()
    for n in nodes:
        if n.requires_grad:
            saved.update(n.saves)
    valued: set[int] = set()  # buffers some node's value refers to (what a recipe holds)
    for n in nodes:
        valued.update(n.value)
    producers = [i for i, n in enumerate(nodes) if n.creates]
    cands = set(problem.candidates())
    allowed = [i for i in producers if i in cands and nodes[i].prefer != "save"]
    forced = frozenset(i for i in allowed if nodes[i].prefer == "recompute")
    members = _replay_members(problem, set(allowed))
    hold_bytes = {v: sum(buffers[b].nbytes for b in set(nodes[v].creates) if b in saved or b in valued)
                  for v in producers}
    cost = problem.cost
    flops = {v: sum(cost[q] for q in members[v]) for v in allowed}
    k = {v: j for j, v in enumerate(producers)}
    vin = {v: 2 + 2 * k[v] for v in producers}  # (0: source, 1: sink)
    vout = {v: 3 + 2 * k[v] for v in producers}
    edges = _flow_edges(problem, producers, members, flops, forced, saved, vin, vout)
    if backend == "auto":
        backend = "scipy" if sp is not None and len(nodes) >= _SCIPY_FROM else "networkx"
    if backend == "scipy" and sp is None:  # pragma: no cover
        raise ImportError("the scipy max-flow backend needs scipy")
    cut = _Cut(producers, allowed, forced, hold_bytes, flops, {v: vin[v] for v in allowed}, 2 + 2 * len(producers),
               backend)
    split = [(vin[v], vout[v]) for v in producers]
    keys = list(edges)
    if backend == "scipy":
        cut.rows = np.array([a for a, _ in keys], dtype=np.int32)
        cut.cols = np.array([b for _, b in keys], dtype=np.int32)
        cut.caps = np.array([np.inf if edges[e] is None else float(edges[e]) for e in keys])
        pos = {e: j for j, e in enumerate(keys)}
        cut.split_pos = np.array([pos[e] for e in split], dtype=np.int64)
        cut.split_bytes = np.array([float(hold_bytes[v]) for v in producers])
    else:
        G = nx.DiGraph()
        G.add_nodes_from(range(cut.size))
        for (a, b), c in edges.items():
            if c is None:
                G.add_edge(a, b)  # no capacity attribute: infinite
            else:
                G.add_edge(a, b, capacity=c)
        cut.G, cut.split = G, split
    return cut


def _replay_members(problem, allowed: set[int]) -> dict[int, set[int]]:
    """What a replay of producer v runs: v, the non-allocating nodes aliasing its buffers (views,
    in-place ops), and the last writers of its buffers."""
    nodes, src, last = problem.nodes, problem.source, problem.last_writer
    members: dict[int, set[int]] = {v: {v} for v in allowed}
    for i, n in enumerate(nodes):
        if src[i] in allowed and not n.creates:
            members[src[i]].add(i)
    for v in allowed:
        for b in nodes[v].creates:
            members[v].add(last[b])
    return members


def _flow_edges(problem, producers, members, flops, forced, saved, vin, vout) -> dict[tuple[int, int], int | None]:
    """The flow graph's edges and capacities (None: infinite; 0 on split edges, set per cut)."""
    nodes, buffers, src = problem.nodes, problem.buffers, problem.source
    edges: dict[tuple[int, int], int | None] = {}
    for v in producers:
        edges[vin[v], vout[v]] = 0  # set per multiplier
        edges[0, vin[v]] = flops[v] if v in members else None
        if v in forced:
            edges[vin[v], 1] = None
    for v in members:
        for q in members[v]:
            for a in nodes[q].inputs:
                u = src[a]
                if u is not None and u != v and nodes[u].creates:
                    edges[vout[u], vin[v]] = None
    for b in saved:
        edges[vout[buffers[b].producer], 1] = None
    return edges


def _calls(problem) -> int:
    """Simulations a repair phase may run: bounded by size, not by the clock, so the answer
    does not depend on the machine's load."""
    return max(32, _NODE_SIMULATIONS // max(1, len(problem.nodes)))


def _cost(problem, R) -> int:
    return recompute_cost(problem, R)


# NOTE [ Work, not simulations ]
# The local search stops after a number of questions to its judge (`_Judge.calls`), not after a
# time, so that its answer does not depend on the machine's load. The judge answers many
# questions without running the whole step: a plan already known to be over budget, or one
# whose simulation stopped at a cap (`simulate(cap=...)`) below which it had to stay to be
# better. Those answers are still counted as the full simulations they stand for (a plan's
# first `peak` or `better`, each `fits` of a plan not known to fit), so the memo and the caps
# change how long a search takes and never where it goes: every plan is the one the search
# found when each question ran the simulator to the end. `simulations` counts the runs.
class _Judge:
    """Memoized, capped simulations of one problem at one budget, with `calls` counted as in
    NOTE [ Work, not simulations ]."""

    def __init__(self, problem, budget):
        self.problem, self.budget = problem, budget
        self.peaks: dict[frozenset, int] = {}  # exact peaks
        self.at_least: dict[frozenset, int] = {}  # a lower bound on the peak, from a capped run
        self.judged: set[frozenset] = set()  # plans a question counted once (NOTE [ Work, not simulations ])
        self.calls = self.simulations = 0

    def _count(self, R: frozenset, once: bool) -> None:
        if R not in self.judged:
            self.calls += 1
            if once:
                self.judged.add(R)

    def _run(self, R: frozenset, cap: int | None = None) -> bool:
        """Simulate R, stopping at `cap`; whether its exact peak is now known."""
        pk = simulate(self.problem, R, cap=cap).peak_bytes
        self.simulations += 1
        if cap is None or pk < cap:
            self.peaks[R] = pk
            return True
        self.at_least[R] = max(self.at_least.get(R, 0), cap)
        return False

    def peak(self, R: frozenset) -> int:
        if R not in self.peaks:
            self._count(R, once=True)
            self._run(R)
        return self.peaks[R]

    def fits(self, R: frozenset) -> bool:
        hit = self.peaks.get(R)
        if hit is not None:
            return hit <= self.budget
        self._count(R, once=False)
        if self.at_least.get(R, 0) > self.budget or not self._run(R, cap=self.budget + 1):
            return False
        self.judged.add(R)
        return True

    def better(self, R: frozenset, key: tuple[int, int]) -> bool:
        """Whether `_key` of R is below `key`, a plan over budget's: R must peak within the
        same excess, so its run stops there."""
        limit = self.budget + key[0]
        if R not in self.peaks:
            self._count(R, once=True)
            if self.at_least.get(R, 0) > limit or not self._run(R, cap=limit + 1):
                return False
        return _key(self.problem, self, R) < key


@register_solver("mincut")
def solve_mincut(problem, budget_bytes):
    """Cheapest plan found by multiplier search over minimum cuts, then knapsack repair."""
    if not problem.nodes:
        return frozenset()
    cut = flow_graph(problem, BACKEND)
    forced = cut.forced
    J = _Judge(problem, budget_bytes)
    if J.peak(forced) <= budget_bytes:
        return forced
    movable = [v for v in cut.allowed if v not in forced]
    if not movable:
        return forced
    best, lowest, lo_plan, pool = _cut_phase(problem, cut, J, movable)
    if best is None:  # no cut plan fits: repair the lowest-peak one at its peak
        R = lowest
        # FLOPs-aware, then bytes alone (the lowest peak), each continuing from the best so far
        # with its own tabu list, then bytes alone from scratch, continued once
        for start, alpha in ((lowest, 1.0), (None, 0.0), (forced, 0.0), (None, 0.0)):
            R2 = _repair(problem, R if start is None else start, J, cut, _calls(problem), alpha)
            if _key(problem, J, R2) < _key(problem, J, R):
                R = R2
            if J.peak(R) <= budget_bytes:
                break
        if J.peak(R) > budget_bytes and len(problem.nodes) <= _DESCEND_UP_TO:
            for start in (lowest, forced):  # the greedy descent, as a last resort
                for alpha in (1.0, 0.0):
                    R2 = descend(problem, budget_bytes, alpha=alpha, start=start)
                    if _key(problem, J, R2) < _key(problem, J, R):
                        R = R2
        if J.peak(R) <= budget_bytes:
            R = _give_back(problem, R, lowest, J, cut)
    else:
        R = _give_back(problem, best, lo_plan, J, cut)
    if len(problem.nodes) <= _LOCAL_UP_TO:
        limit = J.calls + _CLIMB_CALLS
        descents = {descend(problem, budget_bytes, start=lowest), descend(problem, budget_bytes)}
        descents = {prune(problem, S, budget_bytes) if J.fits(S) else S for S in descents}
        starts = sorted(set(pool) | descents | {R}, key=lambda S: _key(problem, J, S))[:_STARTS]
        for S in [R] + [S for S in starts if S != R]:
            if J.calls >= limit:
                break
            S = _climb(problem, S, J, cut, limit)
            if _key(problem, J, S) < _key(problem, J, R):
                R = S
        if J.peak(R) <= budget_bytes:
            R = _local(problem, R, J, _LOCAL_ATTEMPTS)
            R = _climb(problem, R, J, cut, J.calls + _CLIMB_CALLS // 4)
    elif len(problem.nodes) <= _CLIMB_UP_TO and J.peak(R) <= budget_bytes:
        R = _climb(problem, R, J, cut, J.calls + min(_CLIMB_CALLS, _calls(problem) // 4))
    if J.peak(R) > budget_bytes and J.peak(lowest) < J.peak(R):
        return lowest
    return R


def _key(problem, J, R):
    """Order of plans: over-budget bytes first, then FLOPs."""
    return (max(0, J.peak(R) - J.budget), _cost(problem, R))


def _climb(problem, R, J, cut, limit: int) -> frozenset[int]:
    """Hill climbing on (bytes over budget, FLOPs) with `simulate` as the judge: recompute or
    keep one producer, swap one recomputed for one kept, then (failing those) swap one for
    two or three, or recompute two more; first improvement wins. Stops after `limit`
    simulations in all (counted by J, so the result does not depend on the machine's speed)."""
    movable = [v for v in cut.allowed if v not in cut.forced]
    flops = cut.flops
    key = _key(problem, J, R)
    while J.calls < limit:
        inside = sorted((v for v in movable if v in R), key=lambda v: -flops[v])
        outside = sorted((v for v in movable if v not in R), key=lambda v: flops[v])
        fits = key[0] == 0
        moves = _cheaper_moves(R, inside, outside, flops) if fits else _lower_moves(R, inside, outside)
        nxt = None
        for S in moves:
            if J.fits(S) if fits else J.better(S, key):
                nxt = S
                break
            if J.calls >= limit:
                break
        if nxt is None:
            return R
        R, key = nxt, _key(problem, J, nxt)
    return R


def _cheaper_moves(R, inside, outside, flops):
    """Plans cheaper than R (which fits), the biggest saving first within each kind."""
    for x in inside:
        yield R - {x}
    for k in (1, 2, 3):
        if math.comb(len(outside), k) * len(inside) > _SWAPS:
            break
        swaps = sorted((sum(flops[y] for y in t) - flops[x], x, t)
                       for x in inside for t in combinations(outside, k)
                       if sum(flops[y] for y in t) < flops[x])
        for _, x, t in swaps:
            yield (R - {x}) | set(t)


def _lower_moves(R, inside, outside):
    """Neighbours of R (over budget): one more or one fewer, one swapped, two more."""
    for y in outside:
        yield R | {y}
    for x in inside:
        yield R - {x}
    for x in inside:
        for y in outside:
            yield (R - {x}) | {y}
    for y, z in combinations(outside, 2):
        yield R | {y, z}


def _grid(cut, mult, movable) -> list[float]:
    ratios = sorted({cut.flops[v] / (mult[v] * cut.hold_bytes[v]) for v in movable if cut.hold_bytes[v] > 0})
    if not ratios:
        return [1.0]
    if len(ratios) > _GRID:
        ratios = [ratios[round(i * (len(ratios) - 1) / (_GRID - 1))] for i in range(_GRID)]
        ratios = sorted(set(ratios))
    return [r * (1 + 1e-7) for r in ratios] + [ratios[-1] * 2 + 1]


def _cut_phase(problem, cut, J, movable):
    """Cut at a grid of multipliers (the peak is U-shaped in lam: fewer held bytes, but longer
    replays in backward); bisect between the last multiplier over budget and the cheapest
    within; while nothing fits, reweight the bytes live at the lowest peak and cut again.
    Returns (cheapest fitting plan or None, lowest-peak plan, the plan just below the best,
    every cut plan seen)."""
    mult = {v: 1.0 for v in movable}
    best: tuple[int, frozenset] | None = None
    lo_plan = cut.forced
    lowest = cut.forced
    buffers = problem.buffers
    pool: list[frozenset] = []
    for _ in range(_ROUNDS):
        lams = _grid(cut, mult, movable)
        plans = [cut.plan(lam, mult) for lam in lams]
        pool.extend(plans)
        fit = [J.fits(R) for R in plans]
        for i, R in enumerate(plans):
            if fit[i] and (best is None or _cost(problem, R) < best[0]):
                best = (_cost(problem, R), R)
                # bisect between the previous multiplier (over budget) and this one
                if i > 0 and not fit[i - 1]:
                    a, b, lo_plan = lams[i - 1], lams[i], plans[i - 1]
                    for _ in range(_REFINE):
                        mid = math.sqrt(a * b)
                        M = cut.plan(mid, mult)
                        if M == lo_plan or M == best[1]:
                            break
                        if J.fits(M):
                            b = mid
                            if _cost(problem, M) < best[0]:
                                best = (_cost(problem, M), M)
                        else:
                            a, lo_plan = mid, M
        if best is not None:
            return best[1], lowest, lo_plan, pool
        low = min(plans + [lowest], key=lambda R: (J.peak(R), _cost(problem, R)))
        lowest = low
        live = simulate(problem, low, live_at_peak=True).live_at_peak
        for b in live:  # held at the peak: costlier to hold; replayed at the peak: cheaper
            v = buffers[b].producer
            if v in mult:
                mult[v] = mult[v] * 0.5 if v in low else mult[v] * 2.0
    return None, lowest, lo_plan, pool


def _repair(problem, R, J, cut, calls: int, alpha: float = 1.0, bulk: bool = True) -> frozenset[int]:
    """Peak descent in both directions: at the simulated peak, hold a replayed producer (which
    also saves FLOPs) or recompute a held one, the best-scored first, and take the first move
    that lowers the peak (failing that, one that keeps it level); each producer moves at most
    once; far over budget, many are recomputed at once (as greedy's bulk step does). The
    number of simulations is bounded. `alpha` weighs FLOPs against bytes in the score (0:
    bytes alone, the lowest peak)."""
    budget, buffers = J.budget, problem.buffers
    movable = set(cut.allowed) - cut.forced
    moved: set[int] = set()
    while calls > 0:
        sim = simulate(problem, R, live_at_peak=True)
        calls -= 1
        if sim.peak_bytes <= budget:
            break
        at: dict[int, int] = {}
        for b in sim.live_at_peak:
            v = buffers[b].producer
            if v in movable and v not in moved:
                at[v] = at.get(v, 0) + buffers[b].nbytes
        ranked = sorted((v for v in at if v not in R), key=lambda v: -at[v] / (cut.flops[v] + 1) ** alpha)
        excess = sim.peak_bytes - budget
        if bulk and len(ranked) > 2 * _TRIES and excess > sum(at[v] for v in ranked[:_TRIES]):
            # far over budget: recompute at once the best-scored half of what covers the excess
            chosen, covered = [], 0
            for v in ranked:
                if covered >= excess:
                    break
                chosen.append(v)
                covered += at[v]
            T = R | set(chosen[: max(1, len(chosen) // 2)])
            calls -= 1
            if simulate(problem, T, cap=sim.peak_bytes).peak_bytes < sim.peak_bytes:
                R = T
                continue
        holds = sorted((v for v in at if v in R), key=lambda v: -at[v])[:_TRIES]
        level = None
        for v in holds + ranked[:8 * _TRIES]:
            pk = simulate(problem, R ^ {v}, cap=sim.peak_bytes + 1).peak_bytes
            calls -= 1
            if pk < sim.peak_bytes:
                level = v
                break
            if pk == sim.peak_bytes and level is None:
                level = v
            if calls <= 0:
                break
        if level is None:
            break
        R = R ^ {level}
        moved.add(level)
    return R


def _give_back(problem, R, lo_plan, J, cut) -> frozenset[int]:
    """Knapsack: keep again recomputed producers, those the next-smaller cut kept first, then
    the most FLOPs per held byte first, while the simulated peak stays in budget."""
    nodes = problem.nodes
    per_byte = lambda v: cut.flops.get(v, problem.cost[v]) / (cut.hold_bytes.get(v, 0) + 1)
    order = sorted((v for v in R if v not in cut.forced), key=lambda v: (v in lo_plan, -per_byte(v)))
    calls = _calls(problem)
    if len(order) <= calls:
        for v in order:
            if J.fits(R - {v}):
                R = R - {v}
        return R
    size = max(1, len(order) // max(1, calls // 4))  # large graphs: groups, halved when they break the budget
    stack = [order[i:i + size] for i in range(0, len(order), size)][::-1]
    while stack and calls > 0:
        chunk = stack.pop()
        calls -= 1
        if J.fits(R - set(chunk)):
            R = R - set(chunk)
        elif len(chunk) > 1:
            h = len(chunk) // 2
            stack.extend((chunk[h:], chunk[:h]))
    return R


def _local(problem, R, J, attempts: int) -> frozenset[int]:
    """Give back one recomputed producer and descend again without it (the greedy descent
    adds what the new peak needs); keep the result when it fits for fewer FLOPs. At most
    `attempts` descents."""
    budget = J.budget
    better = True
    while better and attempts > 0:
        better = False
        for x in sorted(R, key=lambda i: -problem.cost[i]):
            if attempts <= 0:
                break
            if problem.nodes[x].prefer == "recompute":
                continue
            attempts -= 1
            trial = descend(problem, budget, start=R - {x}, exclude={x})
            if J.fits(trial):
                trial = prune(problem, trial, budget)
                if _cost(problem, trial) < _cost(problem, R):
                    R, better = trial, True
                    break
    return R
