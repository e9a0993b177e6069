"""Exact dynamic program for *node chains* under the simulator (`fxckpt.core.simulate`).

A node chain (`is_node_chain`; anything else gets None): node 0 reads nothing and node
i >= 1 reads exactly node i-1; every node creates exactly one buffer, which is its value; no node
writes in place; the backward order is the default one (no `bwd_rank`); no node's recipe holds an
RNG state (`recipe_bytes`, NOTE [ RNG states are activation memory ]); a node's backward saves
only its input's buffer and/or its own, without repeats. Outputs' buffers, alive from their
forward on whatever the plan, count as plan-independent bytes.

NOTE [ Why a segment DP is exact on a chain ]
A plan R is a sequence of kept nodes k_0 < k_1 < ... with maximal recomputed runs ("segments")
S = [k+1, k'-1] between consecutive kept nodes k, k' (virtual kept nodes -1 and n at the ends,
holding nothing). Let m be the largest node of S whose buffer some backward saves (`sv`). The
runtime then:
  * needs recipes exactly for [k+1, m] (none when m does not exist; those nodes cost nothing);
  * holds the anchor b_k into backward iff k's buffer is saved, or m exists (recipe k+1 holds it);
  * materializes [k+1, m] all at once, in ascending order, just before the backward of the
    trigger c* = m+1 when node m+1 saves b_m, else c* = m; during that, a non-saved b_x stays
    until recompute x+1, a saved one until the backward of its last (lowest) saver; the anchor,
    when held only by the recipe, goes after recompute k+1.
At every forward step t and backward step c in [k+1, k'] (and recomputes triggered there) the live
bytes are
    const(event)                           plan-independent: grads, extras, transients, loss, outputs
  + P_k = sum of s_i over kept i < k held into backward (fixed by the earlier transitions)
  + local(k, k', event)                    depends on this segment only
since every node above the step has been released and every segment below k has not triggered
yet. So with M(k, k') = max over the transition's events of const + local, a transition is
allowed iff P_k + M(k, k') <= budget, and it sets P_k' = P_k + [b_k held] s_k. The DP keeps at
each kept node the exact Pareto front of (P, cost); no discretization. M(k, k') is maintained
in O(1) per step while k' walks right (O(n^2) transitions at most, fewer when ban / prefer="save"
cut the walks), and fronts are merged with a heap, so the DP costs about
O(transitions + n * front size * log) (see `_dp`).

Exact minimization of recompute cost under a byte budget embeds knapsack, so front sizes (the
distinct held-prefix byte sums) can grow with the byte values; they stay small in practice.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from heapq import heapify, heappop, heappush

from ..problem import RematProblem
from ..simulate import step_facts

NEG = float("-inf")
INF = float("inf")


@dataclass(frozen=True)
class _Chain:
    """Per-node arrays of a node chain (`_chain` builds them): the terms of the docstring's
    live-byte sums, so that a transition's M(k, k') is a few lookups per step."""

    n: int
    s: list  # bytes the plan decides on (0 for outputs' buffers, held whatever the plan)
    ss: list  # the node's backward saves its own buffer
    sv: list  # the node's buffer is saved (by its own backward or the next node's)
    saves_prev: list  # the node's backward saves its input's buffer
    cf: list  # plan-independent bytes at forward step t
    w: list  # forward step t: cf plus the decided bytes of its input's buffer and its own
    cb: list  # plan-independent bytes at the start of backward step c
    v: list  # cb plus backward c's transient bytes
    tr: list  # forward transient bytes
    fl: list  # prefix sums of the recompute cost
    can_r: list  # may be recomputed
    can_k: list  # may be kept


def _chain(p: RematProblem) -> _Chain:
    """The per-node arrays of the node chain `p`."""
    nodes, n = p.nodes, len(p.nodes)
    st = step_facts(p)
    buf = [nd.creates[0] for nd in nodes]
    rg = [nd.requires_grad for nd in nodes]
    out = [st.output_holds[buf[i]] > 0 for i in range(n)]
    size = [p.buffers[buf[i]].nbytes for i in range(n)]
    s = [0 if out[i] else size[i] for i in range(n)] + [0]
    saves = [set(nodes[i].saves) if rg[i] else set() for i in range(n)]
    ss = [buf[i] in saves[i] for i in range(n)] + [False]
    sv = [ss[i] or (i + 1 < n and buf[i] in saves[i + 1]) for i in range(n)]
    saves_prev = [i >= 1 and buf[i - 1] in saves[i] for i in range(n)] + [False]
    cf, ext, outs = [], 0, 0
    for i, nd in enumerate(nodes):
        if rg[i]:
            ext += nd.extra_saved_bytes
        if out[i]:
            outs += size[i]
        cf.append(ext + outs + nd.transient_bytes)
    w = [NEG] + [cf[t] + s[t - 1] + s[t] for t in range(1, n)]
    cb, v = [NEG] * (n + 1), [NEG] * (n + 1)
    base = ext + outs + p.loss_bytes
    for c in p.backward_order:
        cb[c] = base
        v[c] = base + nodes[c].bwd_transient_bytes
        base += st.born[c] - st.dying[c] - nodes[c].extra_saved_bytes
    fl = [0]
    for c in p.cost:
        fl.append(fl[-1] + c)
    cands = set(p.candidates())
    can_r = [i in cands and nodes[i].prefer != "save" for i in range(n)]
    can_k = [not (can_r[i] and nodes[i].prefer == "recompute") for i in range(n)] + [True]
    return _Chain(n=n, s=s, ss=ss, sv=sv, saves_prev=saves_prev, cf=cf, w=w, cb=cb, v=v,
                  tr=[nd.transient_bytes for nd in nodes], fl=fl, can_r=can_r, can_k=can_k)


def is_node_chain(p: RematProblem) -> bool:
    """Whether `p` is a node chain as the module docstring defines it (an empty one is)."""
    nodes = p.nodes
    for i, nd in enumerate(nodes):
        if tuple(nd.inputs) != ((i - 1,) if i else ()):
            return False
        if (len(nd.creates) != 1 or tuple(nd.value) != tuple(nd.creates) or nd.writes or nd.bwd_rank is not None
                or nd.recipe_bytes):  # the DP does not model a recipe's RNG state
            return False
        if p.buffers[nd.creates[0]].producer != i:
            return False
    for i, nd in enumerate(nodes):
        if nd.requires_grad:
            own = {nd.creates[0]} | ({nodes[i - 1].creates[0]} if i else set())
            if len(set(nd.saves)) != len(nd.saves) or not set(nd.saves) <= own:
                return False
    return True


def _transitions(ch: _Chain, k: int, cap: float = INF):
    """Yield (k', M, delta, flops, count) for each allowed next kept node k' > k (n: the end),
    stopping once a lower bound of M that only grows with k' exceeds `cap`."""
    n, s, sv, ss, v, cb, cf, w = ch.n, ch.s, ch.sv, ch.ss, ch.v, ch.cb, ch.cf, ch.w
    sk = s[k] if k >= 0 else 0
    svk = sv[k] if k >= 0 else False
    a = k + 1
    first = cf[a] + sk + s[a] if a < n else NEG
    fwd_rest = NEG
    m = cstar = None
    pre = pre_m1 = 0  # sum of sv*s over S = [a, k'-1], and over [a, k'-2]
    r_all = r_max = NEG
    q_pre = q_ab = v_ab = NEG
    rec_ev = NEG
    svk_sk = sk if svk else 0
    for kk in range(a, n + 1):
        if kk > a and kk < n:
            fwd_rest = max(fwd_rest, w[kk])
        held = svk or m is not None
        if max(first, fwd_rest + (sk if held else 0), q_pre + svk_sk) > cap:
            return  # these events stay in every longer segment
        if ch.can_k[kk]:
            M = max(first, fwd_rest + (sk if held else 0), q_pre + svk_sk,
                    v_ab + (sk if m is not None else svk_sk), rec_ev)
            if kk < n and v[kk] != NEG:
                own = s[kk] if ss[kk] else 0
                if m is None:
                    M = max(M, v[kk] + own + svk_sk)
                elif cstar == kk:
                    M = max(M, cb[kk] + r_max + own, v[kk] + pre + own + svk_sk)
                else:
                    M = max(M, v[kk] + sk + own)
            top = m if m is not None else a - 1
            yield kk, M, (sk if held else 0), ch.fl[top + 1] - ch.fl[a], kk - a
        if kk == n or not ch.can_r[kk]:
            return
        x = kk  # x joins the segment
        rx = ch.tr[x] + (sk if (x == a or svk) else 0) + pre_m1 + (s[x - 1] if x - 1 >= a else 0) + s[x]
        qx = v[x] + pre + (s[x] if ss[x] else 0)
        r_all = max(r_all, rx)
        if sv[x]:
            m = x
            cstar = x + 1 if ch.saves_prev[x + 1] else x
            r_max = r_all
            q_pre = max(q_pre, q_ab, qx)
            q_ab = v_ab = NEG
            rec_ev = cb[x] + r_max if cstar == x else NEG  # the trigger moved up
        elif m is not None and x == cstar:
            q_pre = max(q_pre, qx)
            rec_ev = cb[x] + r_max
        else:
            q_ab, v_ab = max(q_ab, qx), max(v_ab, v[x])
        pre_m1 = pre
        pre += s[x] if sv[x] else 0


def _min_peak(trans, n: int):
    """The lowest simulated peak of any allowed plan: D(k) = min over transitions k -> k' of
    max(M, D(k') + delta), since the events of a transition sit at P + M and P only grows."""
    D = [INF] * (n + 2)
    D[n + 1] = NEG
    for k in range(n - 1, -2, -1):
        D[k + 1] = min((max(M, D[kk + 1] + delta) for kk, M, delta, _, _ in trans[k + 1]), default=INF)
    return D[0]


def _dp(ch: _Chain, trans, budget: float):
    """The cheapest plan whose events all fit `budget`, as the list of its kept nodes, or None.

    Each kept node k holds the exact Pareto front of (P, cost) over the plans up to k (cost:
    flops * (n+1) + recomputed nodes, so ties go to fewer recomputed nodes), P ascending and
    cost descending. A transition k -> k' passes a prefix of k's front, shifted by (delta,
    cost); k' merges its incoming prefixes with a heap, skipping dominated runs by bisection,
    so the work is about (front size + transitions) * log per kept node."""
    n = ch.n
    # room[k]: the largest P at kept node k from which some completion fits (exact: a larger
    # P only tightens every later check); states above it are dead.
    room = [NEG] * (n + 2)
    room[n + 1] = INF
    for k in range(n - 1, -2, -1):
        room[k + 1] = max((min(budget - M, room[kk + 1] - delta) for kk, M, delta, _, _ in trans[k + 1]),
                          default=NEG)
    if room[0] < 0:
        return None
    scale = n + 1
    fronts: list = [None] * (n + 2)  # index k+1: (Ps, Cs, negCs, parents)
    blocks: list[list] = [[] for _ in range(n + 2)]
    fronts[0] = ([0], [0], [0], [None])
    for k in range(-1, n + 1):
        if k >= 0:
            fronts[k + 1] = _merge(fronts, blocks[k + 1])
            blocks[k + 1] = None
        if k == n or fronts[k + 1] is None:
            continue
        Ps = fronts[k + 1][0]
        pmin = Ps[0]
        for kk, M, delta, flops, count in trans[k + 1]:
            lim = min(budget - M, room[kk + 1] - delta)
            if pmin <= lim:
                blocks[kk + 1].append((k, bisect_right(Ps, lim), delta, flops * scale + count))
    final = fronts[n + 1]
    if final is None:
        return None
    kept, at = [], final[3][-1]  # the last state has the lowest cost
    while at is not None:
        k, i = at
        kept.append(k)
        at = fronts[k + 1][3][i]
    return kept


def _merge(fronts, blks):
    """The Pareto front of the union of `blks`: (k, count, delta, add) = the first `count`
    states of k's front shifted by (delta, add)."""
    if not blks:
        return None
    heap, srcs = [], []
    for b, (k, cnt, delta, add) in enumerate(blks):
        Ps, Cs, negCs, _ = fronts[k + 1]
        srcs.append((Ps, Cs, negCs, k, cnt, delta, add))
        heap.append((Ps[0] + delta, Cs[0] + add, b, 0))
    heapify(heap)
    outP, outC, outN, outPar = [], [], [], []
    best = INF
    pop, push = heappop, heappush
    while heap:
        P, C, b, i = pop(heap)
        Ps, Cs, negCs, k, cnt, delta, add = srcs[b]
        if C < best:
            best = C
            outP.append(P)
            outC.append(C)
            outN.append(-C)
            outPar.append((k, i))
        # skip the block's next states that cost at least `best` (costs fall along a block)
        j = bisect_right(negCs, add - best, i + 1, cnt)
        if j < cnt:
            push(heap, (Ps[j] + delta, Cs[j] + add, b, j))
    return outP, outC, outN, outPar


def solve_node_chain(problem: RematProblem, budget_bytes) -> frozenset[int] | None:
    """The cheapest plan (by simulated recompute cost, then fewest recomputed nodes) whose
    simulated peak fits `budget_bytes`, exactly, on a node chain; when nothing fits, the
    cheapest of the lowest-peak plans. None when `problem` is not a node chain."""
    if not is_node_chain(problem):
        return None
    if not problem.nodes:
        return frozenset()
    ch = _chain(problem)
    n = ch.n
    # a transition with M over the budget is useless (P >= 0), so the walks stop there
    kept = _dp(ch, [list(_transitions(ch, k, budget_bytes)) for k in range(-1, n)], budget_bytes)
    if kept is None:  # nothing fits: the cheapest of the lowest-peak plans
        trans = [list(_transitions(ch, k)) for k in range(-1, n)]
        kept = _dp(ch, trans, _min_peak(trans, n))
    keep = set(kept)
    return frozenset(i for i in range(n) if i not in keep)
