"""`ilp`: the exact optimum under the simulator, by a MILP relaxation and lazy cuts.

NOTE [ Why a relaxation plus cuts, not one exact MILP ]
The runtime's memory is not linear in the keep/recompute choices: a recipe materializes at its
first unpack, possibly early as another recipe's input, its inputs stay held until then, and
every materialization is a peak event of its own. So the MILP here models a *lower bound* of the
simulated live bytes at every forward and backward step, linear in binary r (recompute) with
continuous helpers: n (recipe needed), D (materialized by step k), H (still held at step k), g
(buffer alive at a step). Every constraint holds for the runtime's true values, so every plan
that truly fits is feasible in the MILP, with its true recompute cost as objective. Solve,
judge the answer with `simulate`: if it fits it is optimal (nothing cheaper fits even the
relaxation); if not, a no-good cut removes exactly that choice and the MILP is solved again.
When the time limit comes first, the best plan that fits is returned with the last MILP
objective as a proven lower bound (the plan's optimality gap).

scipy (HiGHS) is optional and imported lazily: `pip install fxckpt[ilp]`.
"""

from __future__ import annotations

import math
import time
import warnings
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field

from ..simulate import simulate, step_facts, step_marks
from .auto import solve_auto
from .registry import Solved, recompute_of, register_solver
from .rounding import repaired

SECONDS = 30.0  # default limit for the whole cut loop
LIMIT = 400  # nodes: the model has O(nodes x backward steps) columns


class _Model:
    """Columns and rows of a MILP, built as dicts."""

    def __init__(self):
        self.lb, self.ub, self.integer, self.cost = [], [], [], []
        self.rows: list[tuple[dict[int, float], float, float]] = []
        self._matrix = None  # (rows, columns, A, lo, hi) as last built: rows and columns are only added

    def matrix(self):
        """The rows as a sparse matrix with their bounds, built again only after rows or columns were added."""
        from scipy.sparse import csr_matrix

        if self._matrix is None or self._matrix[:2] != (len(self.rows), len(self.lb)):
            data, ri, ci, lo, hi = [], [], [], [], []
            for j, (terms, a, b) in enumerate(self.rows):
                for v, w in terms.items():
                    ri.append(j), ci.append(v), data.append(w)
                lo.append(a), hi.append(b)
            A = csr_matrix((data, (ri, ci)), shape=(len(self.rows), len(self.lb)))
            self._matrix = (len(self.rows), len(self.lb), A, lo, hi)
        return self._matrix[2:]

    def var(self, lb=0.0, ub=1.0, integer=False, cost=0.0) -> int:
        self.lb.append(lb), self.ub.append(ub), self.integer.append(int(integer)), self.cost.append(cost)
        return len(self.lb) - 1

    def ge(self, terms: dict[int, float], rhs: float) -> None:  # sum(terms) >= rhs
        self.rows.append((terms, rhs, float("inf")))

    def le(self, terms: dict[int, float], rhs: float) -> None:
        self.rows.append((terms, -float("inf"), rhs))


@dataclass
class _Recipes:
    """The recipe columns: n_x (recipe x needed), and inside each recipe's window of backward
    steps D[x][k] (materialized by step k) and H[x][k] (a holder remains at step k's mark)."""

    needed: list[int]  # n_x, per node
    slots: dict[int, list[tuple[int, int]]]  # x -> (saver position or K, r column) of its saved slots
    consumers: dict[int, list[int]]  # x -> needed-recipe consumers u (src[x] recomputable)
    recipe: list[int] = field(default_factory=list)  # nodes that may need a recipe
    D: dict[int, dict[int, int]] = field(default_factory=dict)
    H: dict[int, dict[int, int]] = field(default_factory=dict)


def build(problem, budget_bytes: int):
    """The relaxation as a `_Model`, and the column of r_x for each candidate x, in five steps:
    the choice columns, the recipes each choice needs, when each recipe materializes and is
    held, the bytes each step holds, and one budget row per step that could exceed it."""
    m = _Model()
    st = step_facts(problem)
    r = _choice_columns(m, problem)
    rec = _recipe_needs(m, problem, st, r)
    _recipe_windows(m, problem, r, rec)
    marks, conds, const = _liveness(problem, st, r, rec)
    _budget_rows(m, st, marks, conds, const, budget_bytes)
    return m, r


def _choice_columns(m: _Model, p) -> dict[int, int]:
    """r_x, binary, per candidate x (fixed by a user's "save" / "recompute" preference)."""
    nodes = p.nodes
    r: dict[int, int] = {}
    for c in p.candidates():
        pref = nodes[c].prefer
        r[c] = m.var(lb=1.0 if pref == "recompute" else 0.0, ub=0.0 if pref == "save" else 1.0, integer=True)
    return r


def _recipe_needs(m: _Model, p, st, r: dict[int, int]) -> _Recipes:
    """n_x: recipe x needed. Direct: a saved slot of a recomputed producer; transitive: an input
    node of a needed recipe whose source is recomputed."""
    nodes, n = p.nodes, len(p.nodes)
    K = len(p.backward_order)
    pos = {c: k for k, c in enumerate(p.backward_order)}
    src, last = p.source, p.last_writer
    rv = r.get  # column of r_x, or None when x can never be recomputed (r_x = 0)
    nv = [m.var() for _ in range(n)]
    slots: dict[int, list[tuple[int, int]]] = defaultdict(list)  # x -> (saver position or K, r column)
    for c, node in enumerate(nodes):
        for b in st.saves[c]:
            pc = rv(st.producer[b])
            if pc is None:
                continue
            x = last[b]
            m.ge({nv[x]: 1, pc: -1}, 0)
            slots[x].append((pos.get(c, K), pc))
    consumers: dict[int, list[int]] = defaultdict(list)  # x -> needed-recipe consumers u (src[x] recomputable)
    for u in range(n):
        for a in st.inputs[u]:
            s = src[a]
            if s is not None and rv(s) is not None:
                m.ge({nv[a]: 1, nv[u]: -1, r[s]: -1}, -1)
                consumers[a].append(u)
    return _Recipes(nv, slots, consumers)


def _recipe_windows(m: _Model, p, r: dict[int, int], rec: _Recipes) -> None:
    """D[x][k] and H[x][k], only inside x's window: it cannot materialize before its (or a
    consumer's) first slot, and without consumers nothing holds it past its last slot."""
    K, src = len(p.backward_order), p.source
    nv, slots, consumers = rec.needed, rec.slots, rec.consumers
    recipe = sorted(set(slots) | set(consumers) | {u for us in consumers.values() for u in us})
    first, final = {}, {}
    for x in sorted(recipe, reverse=True):  # consumers run after their inputs
        first[x] = min([k for k, _ in slots.get(x, ()) if k < K] + [first[u] for u in consumers.get(x, ())], default=K)
        final[x] = K - 1 if consumers.get(x) or any(k == K for k, _ in slots.get(x, ())) else \
            max((k for k, _ in slots.get(x, ())), default=-1)
    D = {x: {k: m.var() for k in range(first[x], K)} for x in recipe}
    H = {x: {k: m.var() for k in range(first[x], final[x] + 1)} for x in recipe}
    for x in recipe:
        at_k: dict[int, list[int]] = defaultdict(list)  # slots by the last step they hold x
        runs: dict[int, list[int]] = defaultdict(list)  # slots by the step whose backward unpacks x
        for k, pc in slots.get(x, ()):
            at_k[min(k, K - 1)].append(pc)  # a saver that never runs holds its slot to the end
            runs[k].append(pc)
        triggers: dict[int, float] = {}
        for k in range(first[x], K):
            d, h = D[x][k], H[x].get(k)
            m.le({d: 1, nv[x]: -1}, 0)
            if k > first[x]:
                m.ge({d: 1, D[x][k - 1]: -1}, 0)
            if h is not None and k + 1 in H[x]:
                m.ge({h: 1, H[x][k + 1]: -1}, 0)
            for pc in runs.get(k, ()):
                m.ge({d: 1, pc: -1}, 0)
                triggers[pc] = triggers.get(pc, 0.0) - 1
            for pc in at_k.get(k, ()):
                if h is not None:
                    m.ge({h: 1, pc: -1}, 0)
            upper = {d: 1.0, **triggers}
            for u in consumers.get(x, ()):
                s = r[src[x]]
                du = D[u].get(k)
                if du is None:  # u cannot have materialized yet: held if needed
                    if h is not None:
                        m.ge({h: 1, nv[u]: -1, s: -1}, -1)
                    continue
                m.ge({d: 1, du: -1, s: -1}, -1)
                if h is not None:
                    m.ge({h: 1, nv[u]: -1, du: 1, s: -1}, -1)
                upper[du] = upper.get(du, 0.0) - 1
            m.le(upper, 0)
        if K - 1 in D[x]:
            m.cost[D[x][K - 1]] = float(p.cost[x])
    rec.recipe, rec.D, rec.H = recipe, D, H


def _liveness(p, st, r: dict[int, int], rec: _Recipes):
    """Lower bounds of the bytes live at every forward and backward step, from the run without a
    plan: conds[t][b] lists the linear expressions buffer b's liveness g_{b,t} must exceed;
    const[t] is what lives outside buffers."""
    nodes, src = p.nodes, p.source
    nv, recipe, D, H = rec.needed, rec.recipe, rec.D, rec.H
    rv = r.get
    plain = step_marks(p)  # the run without a plan: the liveness the bounds start from
    fwd_marks = [mk for mk in plain if mk.kind == "forward"]
    bwd_marks = [mk for mk in plain if mk.kind == "backward"]
    marks = [(t, "f", mk.node, mk.live_bytes, mk.live_buffers) for t, mk in enumerate(fwd_marks)]
    marks += [(len(fwd_marks) + k, "b", mk.node, mk.live_bytes, mk.live_buffers) for k, mk in enumerate(bwd_marks)]
    conds: list[dict[int, list[dict[int, float] | float]]] = [defaultdict(list) for _ in marks]
    const = [0] * len(marks)
    for t, kind, i, live, alive in marks:
        const[t] = live - sum(st.nbytes[b] for b in alive)
        k = t - len(fwd_marks)
        for b in alive:
            prod = st.producer[b]
            if rv(prod) is None or st.output_holds[b] or (kind == "f" and i <= st.forward_last[b]):
                conds[t][b].append(1.0)
            else:
                conds[t][b].append((1.0, {r[prod]: -1.0}))  # 1 - r_p: held because kept
        if kind == "b":
            for x in recipe:
                if k in H[x]:
                    for b in nodes[x].creates:  # cached after materializing, until released
                        conds[t][b].append((-1.0, {D[x][k]: 1.0, H[x][k]: 1.0}))
    for x in recipe:  # inputs held by a needed, unmaterialized recipe
        for a in st.inputs[x]:
            s = src[a]
            if s is None:
                continue
            for b in nodes[a].value:
                for t, kind, i, _, _ in marks:
                    if kind == "f" and i <= st.forward_last[b]:
                        continue
                    expr = {nv[x]: 1.0}
                    if rv(s) is not None:
                        expr[r[s]] = expr.get(r[s], 0.0) - 1.0
                    if kind == "b":
                        d = D[x].get(t - len(fwd_marks))
                        if d is not None:
                            expr[d] = -1.0
                    conds[t][b].append((0.0, expr))
    return marks, conds, const


def _budget_rows(m: _Model, st, marks, conds, const, budget_bytes: int) -> None:
    """One row per step whose live bytes could exceed the budget: sum of g_{b,t} * bytes fits."""
    for t, _, _, _, _ in marks:
        fixed, free = const[t], {}
        for b, cs in conds[t].items():
            if 1.0 in cs:
                fixed += st.nbytes[b]
            elif st.nbytes[b]:
                free[b] = cs
        if fixed + sum(st.nbytes[b] for b in free) <= budget_bytes:
            continue  # fits whatever is chosen
        row: dict[int, float] = {}
        for b, cs in free.items():
            g = m.var()
            for c0, expr in cs:
                m.ge({g: 1.0, **{v: -w for v, w in expr.items()}}, c0)
            row[g] = float(st.nbytes[b])
        m.le(row, budget_bytes - fixed)


def _milp(m: _Model, seconds: float, nodes: int | None = None):
    """HiGHS on `m`, for `seconds` of wall time; with `nodes`, at most that many branch-and-bound
    nodes (1: the root alone, whose bound does not depend on the machine's speed)."""
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
    except ImportError as e:
        raise ImportError("the 'ilp' solver needs scipy: pip install 'fxckpt[ilp]'") from e
    A, lo, hi = m.matrix()
    options = {"time_limit": max(0.01, seconds)}
    if nodes is not None:  # HiGHS's own option, passed through by scipy (with a warning): the root's heuristics
        options.update(node_limit=nodes, mip_heuristic_effort=0.0)  # cost CPU s and found no better choice on the zoo
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
        return milp(np.array(m.cost), integrality=np.array(m.integer), bounds=Bounds(m.lb, m.ub),
                    constraints=LinearConstraint(A, lo, hi), options=options)


def _cost_fixed_at(m, r, recompute) -> float | None:
    """Model `m`'s least objective with its choice variables `r` fixed to `recompute`; None where
    that makes it infeasible."""
    for c, v in r.items():
        m.lb[v] = m.ub[v] = float(c in recompute)
    res = _milp(m, SECONDS)
    return float(res.fun) if res.status == 0 else None


def relaxed_cost(problem, recompute, budget_bytes: int) -> float | None:
    """The MILP's least objective with the choice fixed to `recompute`; None if the relaxation
    rejects it. For a plan that truly fits, this must be its true recompute cost (the tests
    check it: it is what makes the relaxation a relaxation)."""
    return _cost_fixed_at(*build(problem, budget_bytes), recompute)


def solve_ilp(problem, budget_bytes: int, seconds: float = SECONDS, incumbent=None) -> Solved:
    """The cheapest plan whose simulated peak fits, proven optimal unless `seconds` run out;
    then the best plan found (or `incumbent`) with the MILP's lower bound."""
    if len(problem.nodes) > LIMIT:
        raise ValueError(f"the ILP takes graphs of at most {LIMIT} nodes, this one has {len(problem.nodes)}; "
                         "use 'auto'")
    base = simulate(problem)
    if base.peak_bytes <= budget_bytes or not problem.candidates():
        return Solved(frozenset(), 0.0 if base.peak_bytes <= budget_bytes else None)
    deadline = time.perf_counter() + seconds
    best = None
    bound = 0.0  # proven: no plan that fits costs less
    if incumbent is not None:
        sim = simulate(problem, incumbent)
        if sim.peak_bytes <= budget_bytes:
            best = (sim.recompute_cost, frozenset(incumbent))
            best, bound = _projected_first(problem, budget_bytes, best, seconds)
            if best[0] <= bound * (1 + GAP):
                return Solved(best[1], min(bound, best[0]))
    m, r = build(problem, budget_bytes)
    cols = sorted(r)
    while time.perf_counter() < deadline:
        res = _milp(m, deadline - time.perf_counter())
        if res.status == 2:  # no remaining choice fits even the relaxation
            bound = float("inf")
            break
        dual = getattr(res, "mip_dual_bound", None)
        if dual is not None and math.isfinite(dual):
            bound = max(bound, dual)
        if res.x is None:  # time limit before any MILP solution
            break
        R = frozenset(c for c in cols if res.x[r[c]] > 0.5)
        sim = simulate(problem, R)
        fits = sim.peak_bytes <= budget_bytes
        if fits and (best is None or sim.recompute_cost < best[0]):
            best = (sim.recompute_cost, R)
        if res.status != 0 or fits or (best is not None and best[0] <= bound * (1 + 1e-9)):
            break  # time limit, or proven optimal (up to HiGHS's relative gap)
        cut = {r[c]: (-1.0 if c in R else 1.0) for c in cols}  # exclude exactly this choice
        m.ge(cut, 1 - len(R))
    if best is None:  # nothing found to fit (proven when bound is infinite): solve() says why
        return Solved(frozenset(), None)
    return Solved(best[1], min(bound, best[0]))


# NOTE [ A lower bound for graphs the ILP cannot take ]
# The relaxation above has O(nodes x backward steps) columns: 697k on GPT-2 small. Projected onto
# the choices, it keeps a bound that is still proven, with a column per candidate (r_x), per
# recipe backward may materialize (m_x) and per buffer and set of recipes holding it (g), a few
# thousand on real models. The plan pays for every recipe backward materializes (`materialized`:
# m_x >= r_p for each saved slot of a recomputed producer p whose backward runs, m_a >= m_u +
# r_src(a) - 1 for each remat input a of u). At every step t of the run without a plan whose
# bytes could exceed the budget, the live bytes are at least those held whatever is chosen, plus
# each buffer held for backward unless its producer is recomputed (g >= 1 - r_p; a backward's own
# saved buffers are live at it either way, held or rematerialized for it), plus each value a
# recipe reads, until the first backward step that can materialize the recipe (g >= m_x -
# r_src; before this term the bound's own choice overshot GPT-2 small's budget by 26% at 50%).
# These are `_liveness`'s conditions less the terms in D and H, which only add bytes. What is
# left out is the transient of rematerializing and a recipe held past that first step. On GPT-2
# small at 50% HiGHS proves a gap of 0.3% in 20 s, and its own choice fits the budget at 19% less
# recompute than `auto`'s; at 70%, 11% in 20 s. CP-SAT (OR-Tools, 2 workers, same model, 20 s)
# bounded 68 and 193 ms where HiGHS bounds 120 and 347 ms: no new dependency.

# NOTE [ Values replayed before their step ]
# A replay materializes its recomputed inputs first, and each stays cached while a saved slot of
# a later backward step still holds it: on ResNet-50, conv2d_14's backward replays the residual
# chain of stage 0 (relu_9, add__13, batch_norm_10, conv2d_10, ...) for the steps after it. The
# projected model counted none of those values at the step that replays them, so its optimum at
# 50% (97.10 ms at pinned rates) peaks at 1.10 times the budget there, and its bound (96.99 ms
# after 82 CPU s) stood 14% below `auto`'s plan. With `cached`, a column per recipe x and backward
# step k bounds "x materialized by step k" from both sides (>= r_p of each slot of x at or
# before k and >= D_u + r_src(x) - 1 for each consumer u; <= their sum and <= m_x), so that each
# value of x is live at k where it is and a slot after k still holds it (g >= D), and a recipe's
# inputs stay held past its first step until it is materialized (g >= m_x - r_src - D). The
# columns are shared by the steps where their bounds are the same. On ResNet-50 at 50% its model
# peak equals the simulated peak of `auto`'s plan and of its perturbations, its LP bounds 91.02
# against 85.97 ms, and its MILP proves 102.81 ms in 470 CPU s, with a plan of 108.03 ms that
# fits (`auto`: 113.19); at 70% it closes in 83 CPU s on a plan that fits, the optimum (52.80 ms,
# `auto` 53.49; benchmarks/results/2026-12-01/resnet50_bound.md). But it has 30k columns against 486
# (U-Net: 95k against 1.2k), so it runs only when asked (`tight`), after the small model and
# only where the small one's optimum does not fit: with 60 s each on the shared 2-core machine
# (4-10 CPU s) it moved no zoo bound. Still left out: the transient of a replay (it runs before
# the backward step's mark, whose own transient is counted).


def lower_bound(problem, budget_bytes: int, seconds: float = SECONDS, tight: bool = False) -> float | None:
    """A proven lower bound on the recompute cost (`RematProblem.cost`) of every plan whose
    simulated peak fits `budget_bytes` (NOTE [ A lower bound for graphs the ILP cannot take ]);
    inf when none can fit, None when `seconds` ran out before any bound. With `tight`, also the
    model that counts values replayed before their step (NOTE [ Values replayed before their
    step ]): higher, but it pays only with minutes of CPU on real graphs.

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> from fxckpt.core.simulate import simulate
        >>> p = random_problem(20, seed=1)
        >>> budget = int(0.7 * simulate(p).peak_bytes)
        >>> lower_bound(p, budget) <= simulate(p, solve_ilp(p, budget).recompute).recompute_cost
        True
    """
    return _bound_solve(problem, budget_bytes, seconds, tight)[0]


def _bound_solve(problem, budget_bytes: int, seconds: float, tight: bool = False):
    """(lower bound, the relaxation's best choice or None): the projected model; with `tight`, in
    half the time, then, unless its proven optimum fits, the model with early replays (NOTE
    [ Values replayed before their step ]) in the time left: the higher of their bounds."""
    deadline = time.perf_counter() + seconds
    bound, choice, done = _bound_milp(problem, budget_bytes, seconds / 2 if tight else seconds, cached=False)
    if not tight or done and (choice is None or simulate(problem, choice).peak_bytes <= budget_bytes):
        return bound, choice  # infeasible, or an optimum that fits: the optimum
    higher, other, _ = _bound_milp(problem, budget_bytes, deadline - time.perf_counter(), cached=True)
    if higher is not None and (bound is None or higher > bound):
        bound = higher
    return bound, choice if other is None else other


def _bound_milp(problem, budget_bytes: int, seconds: float, cached: bool):
    """(lower bound, best choice or None, whether proven optimal or infeasible) of one projected
    model. HiGHS through scipy reports no dual bound when time runs out before a first solution;
    then the LP relaxation's optimum is the bound (weaker: 105 against 120 ms of recompute after
    20 s on GPT-2 small at 70%)."""
    m, r = _bound_model(problem, budget_bytes, cached=cached)
    if not m.rows:
        return 0.0, frozenset(), True
    deadline = time.perf_counter() + seconds
    res = _milp(m, seconds)
    if res.status == 2:
        return float("inf"), None, True
    choice = None if res.x is None else frozenset(c for c, j in r.items() if res.x[j] > 0.5)
    dual = getattr(res, "mip_dual_bound", None)
    if dual is not None and math.isfinite(dual):
        return max(0.0, float(dual)), choice, res.status == 0
    m.integer = [0] * len(m.integer)
    lp = _milp(m, max(1.0, deadline - time.perf_counter()))
    return (float(lp.fun) if lp.status == 0 else None), choice, False


def bound_cost(problem, recompute, budget_bytes: int) -> float | None:
    """The projected relaxation's least objective with the choice fixed to `recompute`; None if it
    rejects the choice. For a plan that fits, this must be its true recompute cost (what makes
    `lower_bound` a bound; the tests check it, as `relaxed_cost` for the ILP)."""
    return _cost_fixed_at(*_bound_model(problem, budget_bytes), recompute)


@register_solver("proven")
def solve_proven(problem, budget_bytes: int, seconds: float = 60.0, incumbent=None, tight: bool = False) -> Solved:
    """`auto`'s plan (or `incumbent`), or the projected relaxation's best choice (repaired by
    `rounding.repaired` where it does not fit) where that fits and costs less, with the
    relaxation's proven lower bound (`lower_bound`, `tight` as there): the exact reference for
    graphs the ILP cannot take, minutes at most, off the default path.

    Example:
        >>> from fxckpt.core.synthetic import repeated_blocks
        >>> p = repeated_blocks(3, size=4, seed=1)
        >>> got = solve_proven(p, int(0.7 * simulate(p).peak_bytes))
        >>> got.lower_bound <= simulate(p, got.recompute).recompute_cost
        True
    """
    plan = recompute_of(solve_auto(problem, budget_bytes)) if incumbent is None else frozenset(incumbent)
    sim = simulate(problem, plan)
    fits = sim.peak_bytes <= budget_bytes
    bound, choice = _bound_solve(problem, budget_bytes, seconds, tight)
    if choice is not None and simulate(problem, choice).peak_bytes > budget_bytes:
        choice = repaired(problem, budget_bytes, choice)  # it ignores transients: repaired by the simulator
    if choice is not None:
        other = simulate(problem, choice)
        if other.peak_bytes <= budget_bytes and (not fits or other.recompute_cost < sim.recompute_cost):
            plan, sim, fits = choice, other, True
    if not fits:
        return Solved(plan, None)
    return Solved(plan, None if bound is None else min(bound, float(sim.recompute_cost)))


def _bound_model(p, budget_bytes: int, cached: bool = True):
    """The projected relaxation as a `_Model`, and the column of r_x per candidate; with `cached`,
    the values backward materializes early held at every later step (NOTE [ Values replayed
    before their step ])."""
    m = _Model()
    st = step_facts(p)
    r = _choice_columns(m, p)
    mat, first, consumers = _materialized_columns(m, p, st, r)
    held: dict[int, list[tuple[int, int, tuple]]] = defaultdict(list)  # b -> (first, x, terms): x holds b
    for x in mat:
        for a in st.inputs[x]:
            if p.source[a] is not None:
                s = r.get(p.source[a])
                terms = ((mat[x], 1.0),) + (((s, -1.0),) if s is not None else ())
                for b in p.nodes[a].value:
                    held[b].append((first[x], x, terms))
    early = _Early(m, p, st, r, mat, consumers) if cached else None
    pinned = {b for b in range(len(p.buffers)) if r.get(st.producer[b]) is None or st.output_holds[b]}
    g_cols: dict[tuple, int] = {}
    keys: dict[tuple, tuple] = {}  # the lower bounds of a g column -> its key, without `early`
    fwd = 0
    for mk in step_marks(p):
        k = -1 if mk.kind == "forward" else fwd
        fwd += mk.kind != "forward"
        fixed, row = mk.live_bytes - budget_bytes, {}
        own = set(st.saves[mk.node]) if mk.kind == "backward" else set()
        live = mk.live_buffers
        lows: dict[int, list[tuple]] = defaultdict(list)  # b -> (c0, terms): g_b >= c0 + sum(terms)
        for b in (live - pinned - own) | (held.keys() - live):  # a live pinned or own buffer is held in every plan
            if mk.kind == "forward" and mk.node <= st.forward_last[b]:
                continue  # live in every plan (counted in live_bytes), or not yet created
            if b in live:
                lows[b].append((1.0, ((r[st.producer[b]], -1.0),)))  # held for backward unless recomputed
            for f, x, terms in held.get(b, ()):
                if f > k:  # no holder of x can have let go of it yet
                    lows[b].append((0.0, terms))
                elif early is not None:  # still held unless materialized by step k
                    lows[b].append((0.0, terms + ((("d", x), -1.0),)))
        for x, qs in early.cached_at(k) if early is not None and k >= 0 else ():
            for b in st.cache[x]:
                if b not in pinned and b not in own and not st.replay_free[b]:
                    lows[b].extend((0.0, ((("d", x), 1.0),)) if q is None else (-1.0, ((("d", x), 1.0), (q, 1.0)))
                                   for q in qs)
        if mk.live_bytes + sum(st.nbytes[b] for b in lows if b not in live) <= budget_bytes:
            continue  # it holds whatever is chosen
        for b in sorted(lows):
            cs, nb = lows[b], float(st.nbytes[b])
            if len(cs) == 1 and cs[0][0] == 1.0:  # live, freed when its producer is recomputed
                pc = cs[0][1][0][0]
                row[pc] = row.get(pc, 0.0) + nb
                continue
            if b in live:
                fixed -= nb
            if early is None:  # NOTE [ Rows of the projected model without early replays ]
                bounds = tuple(cs)
                key = keys.get(bounds)
                if key is None:
                    key = keys[bounds] = _bounds_key(cs, None, k)
            else:
                key = _bounds_key(cs, early, k)
            if key not in g_cols:
                g = g_cols[key] = m.var()
                for c0, terms in key:
                    m.ge({g: 1.0, **{v: -w for v, w in terms}}, c0)
            row[g_cols[key]] = row.get(g_cols[key], 0.0) - nb
        m.ge(row, fixed)
    return m, r


def _bounds_key(cs: list[tuple], early: _Early | None, k: int) -> tuple:
    """The key of the g column with lower bounds `cs` at backward step `k` (-1: forward): its
    bounds with their columns resolved, de-duplicated and sorted.

    NOTE [ Rows of the projected model without early replays ]
    Without `early` (the model `lp_rounded` builds on `auto`'s path), a bound names its columns
    directly, so a key depends on the bounds alone, and the same bounds of a buffer recur over
    the many steps where it is live or held: the key is built once per distinct list of bounds.
    GPT-2 small at 50% (548 nodes, 1,014 steps): 52,237 keys built before, 258 after; the model
    is the same, row for row; building it took 0.48 -> 0.26 CPU s on a loaded machine."""
    if early is None:
        return tuple(sorted(set(cs)))
    return tuple(sorted({(c0, tuple((early.col(v[1], k) if isinstance(v, tuple) else v, w) for v, w in terms))
                         for c0, terms in cs}))


def _materialized_columns(m: _Model, p, st, r: dict[int, int]):
    """m_x per recipe backward may materialize (cost cost_x; m_x >= r_p for each saved slot of a
    recomputed producer p, m_a >= m_u + r_src(a) - 1 for each remat input a of u), and per
    recipe the first backward step that can materialize it (no holder lets go before)."""
    src, last, K = p.source, p.last_writer, len(p.backward_order)
    mat: dict[int, int] = {}
    first: dict[int, int] = {}
    consumers: dict[int, list[int]] = defaultdict(list)
    stack = []
    for k, c in enumerate(p.backward_order):
        for b in st.saves[c]:
            pc = r.get(st.producer[b])
            if pc is not None:
                x = last[b]
                if x not in mat:
                    mat[x] = m.var(cost=float(p.cost[x]))
                    stack.append(x)
                first[x] = min(first.get(x, K), k)
                m.ge({mat[x]: 1, pc: -1}, 0)
    while stack:
        u = stack.pop()
        for a in st.inputs[u]:
            s = r.get(src[a]) if src[a] is not None else None
            if s is None:
                continue
            if a not in mat:
                mat[a] = m.var(cost=float(p.cost[a]))
                stack.append(a)
            consumers[a].append(u)
            m.ge({mat[a]: 1, mat[u]: -1, s: -1}, -1)
    for x in sorted(mat, reverse=True):  # consumers run after their inputs
        first[x] = min([first.get(x, K)] + [first[u] for u in consumers[x]])
    return mat, first, consumers


class _Early:
    """Per recipe x and backward step k, a column bounding "x materialized by step k" from both
    sides (NOTE [ Values replayed before their step ]), shared by the steps where its bounds
    are the same."""

    def __init__(self, m: _Model, p, st, r: dict[int, int], mat: dict[int, int], consumers: dict[int, list[int]]):
        K = len(p.backward_order)
        pos = {c: k for k, c in enumerate(p.backward_order)}
        self.m, self.r, self.mat, self.consumers, self.src = m, r, mat, consumers, p.source
        self.slots: dict[int, list[tuple[int, int]]] = defaultdict(list)  # x -> (saver position or K, r_p)
        for c in range(len(p.nodes)):
            for b in st.saves[c]:
                pc = r.get(st.producer[b])
                if pc is not None and p.last_writer[b] in mat:
                    self.slots[p.last_writer[b]].append((pos.get(c, K), pc))
        self.steps: dict[int, list[int]] = {}  # x -> sorted steps where its bounds change
        for x in sorted(mat, reverse=True):  # consumers run after their inputs
            own = {k for k, _ in self.slots.get(x, ()) if k < K}
            self.steps[x] = sorted(own.union(*(self.steps[u] for u in consumers.get(x, ()))))
        self.cols: dict[tuple[int, int], int] = {}
        self.at: dict[int, list] = {}

    def col(self, x: int, k: int) -> int | None:
        """The column of "x materialized by step k"; None where nothing can materialize it yet."""
        stack = [x]  # its consumers' columns first: a loop, as chains of recipes run deep
        while stack:
            y = stack[-1]
            i = bisect_right(self.steps[y], k)
            if i == 0 or (y, i) in self.cols:
                stack.pop()
                continue
            todo = [u for u in self.consumers.get(y, ()) if (u, bisect_right(self.steps[u], k)) not in self.cols
                    and bisect_right(self.steps[u], k)]
            if todo:
                stack.extend(todo)
                continue
            self.cols[y, i] = self._new(y, k)
            stack.pop()
        i = bisect_right(self.steps[x], k)
        return self.cols[x, i] if i else None

    def _new(self, x: int, k: int) -> int:
        m, r = self.m, self.r
        d = m.var()
        m.le({d: 1.0, self.mat[x]: -1.0}, 0)  # materialized at all
        upper = {d: 1.0}
        for kk, pc in self.slots.get(x, ()):
            if kk <= k:  # its saver's backward unpacks it
                m.ge({d: 1, pc: -1}, 0)
                upper[pc] = upper.get(pc, 0.0) - 1
        s = r.get(self.src[x])
        for u in self.consumers.get(x, ()):
            i = bisect_right(self.steps[u], k)
            if i:  # replayed as an input of u
                du = self.cols[u, i]
                m.ge({d: 1, du: -1, s: -1}, -1)
                upper[du] = upper.get(du, 0.0) - 1
        m.le(upper, 0)  # nothing else replays it
        return d

    def cached_at(self, k: int) -> list[tuple[int, set[int | None]]]:
        """(x, r_p of its slots still held after step k, or {None} where one is its source's) for
        each recipe that may be materialized by step k and held past it."""
        if k not in self.at:
            out = []
            for x in sorted(self.mat, reverse=True):
                qs = {pc for kk, pc in self.slots.get(x, ()) if kk > k}
                if self.r.get(self.src[x]) in qs:  # materialized means its source is recomputed: held
                    qs = {None}
                if qs and bisect_right(self.steps[x], k):
                    out.append((x, qs))
            self.at[k] = out
        return self.at[k]


# NOTE [ The projected bound first ]
# The MILP above is slow to close on graphs it takes: on the benchmark zoo's quick model (41
# nodes, 38 candidates, 5,793 columns) its LP bound starts 21% below the optimum at budget 0.5
# and HiGHS needed 11 CPU s to prove the optimum that `auto`'s heuristics had already found (with
# the 10 s limit, `auto` returned it as "within 20.4%"). The projected relaxation (`_bound_model`,
# 111 columns there) bounds that cost within 3e-7 of it in well under a second. So where an
# incumbent fits, the projected relaxation runs first: its choice replaces the incumbent where it
# fits and costs less, and an incumbent within GAP of its bound is returned as proven; the MILP
# runs only otherwise, in the time left, its bound never below the projected one.
GAP = 1e-4  # relative: HiGHS's own mip_rel_gap, and what `Plan` reports as proven optimal


def _projected_first(problem, budget_bytes: int, best: tuple, seconds: float) -> tuple[tuple, float]:
    """(best (cost, plan) of `best` and the projected relaxation's choice, its proven bound)."""
    bound, choice = _bound_solve(problem, budget_bytes, seconds)
    if choice is not None:
        sim = simulate(problem, choice)
        if sim.peak_bytes <= budget_bytes and sim.recompute_cost < best[0]:
            best = (sim.recompute_cost, choice)
    return best, (0.0 if bound is None else bound)


@register_solver("ilp")
def _solve_ilp(problem, budget_bytes):
    return solve_ilp(problem, budget_bytes)
