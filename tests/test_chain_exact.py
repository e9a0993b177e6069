"""The exact node-chain DP (torch-free): equal to exhaustive search and to the ILP on chains."""

import dataclasses
import random
from itertools import combinations

import pytest

from fxckpt.core.simulate import simulate
from fxckpt.core.solvers import solve
from fxckpt.core.solvers.chain_exact import is_node_chain, solve_node_chain
from fxckpt.core.solvers.exhaustive import solve_exhaustive
from fxckpt.core.synthetic import random_problem

MiB = 2**20
FRACS = (0.3, 0.5, 0.65, 0.8, 0.9, 1.0)


def _perturbed(p, rng):
    """The same chain with transients, extra saved bytes, a loss, nodes without backward, extra
    outputs and backwards saving both their input and their output."""
    nodes = []
    for i, nd in enumerate(p.nodes):
        kw = {"transient_bytes": rng.choice((0, 0, MiB, 3 * MiB)), "extra_saved_bytes": rng.choice((0, 0, MiB // 2))}
        if rng.random() < 0.1:
            kw["requires_grad"] = False
        if rng.random() < 0.1:
            kw["is_output"] = True
        if i and rng.random() < 0.2:
            kw["saves"] = rng.choice([(i, i - 1), (i - 1, i), (i,), (i - 1,), ()])
        nodes.append(dataclasses.replace(nd, **kw))
    return dataclasses.replace(p, nodes=tuple(nodes), loss_bytes=rng.choice((0, MiB)))


def _chains(count, perturb):
    seed = 0
    while count:
        rng = random.Random(seed)
        p = random_problem(rng.randint(6, 14), "chain", seed)
        if perturb:
            p = _perturbed(p, rng)
        seed += 1
        if len(p.candidates()) <= 12:
            count -= 1
            yield p


def _same_as(p, budget, reference):
    got = solve_node_chain(p, budget)
    sg, sr = simulate(p, got), simulate(p, reference)
    assert (sg.peak_bytes <= budget) == (sr.peak_bytes <= budget), (p.name, budget)
    if sr.peak_bytes <= budget:
        assert sg.recompute_flops == sr.recompute_flops, (p.name, budget, sorted(got), sorted(reference))
    else:  # nothing fits: both are lowest-peak plans
        assert sg.peak_bytes == sr.peak_bytes, (p.name, budget)


@pytest.mark.parametrize("perturb", [False, True])
def test_equals_exhaustive_on_chains(perturb):
    for p in _chains(25, perturb):
        assert is_node_chain(p)
        base = simulate(p).peak_bytes
        for frac in FRACS:
            budget = int(frac * base)
            _same_as(p, budget, solve_exhaustive(p, budget))


def test_equals_ilp_on_longer_chains():
    pytest.importorskip("scipy")
    from fxckpt.core.solvers.ilp import solve_ilp
    for n, seed, frac in [(20, 5, 0.7), (30, 3, 0.5), (40, 8, 0.85)]:
        p = random_problem(n, "chain", seed)
        budget = int(frac * simulate(p).peak_bytes)
        ilp = solve_ilp(p, budget, seconds=30)
        assert ilp.lower_bound is not None
        _same_as(p, budget, ilp.recompute)
        assert simulate(p, solve_node_chain(p, budget)).recompute_flops == pytest.approx(ilp.lower_bound)
        for method in ("chain_dp", "auto"):  # the registered solvers use it on node chains
            assert solve(p, budget, method).recompute_flops == simulate(p, ilp.recompute).recompute_flops


def test_none_for_non_chains():
    for seed in range(10):
        p = random_problem(12, "skip", seed)
        if any(len(nd.inputs) > 1 for nd in p.nodes):
            assert not is_node_chain(p) and solve_node_chain(p, 2**40) is None
    p = random_problem(10, "chain", 0)
    nodes = list(p.nodes)
    nodes[4] = dataclasses.replace(nodes[4], writes=(3,))
    assert solve_node_chain(dataclasses.replace(p, nodes=tuple(nodes)), 2**40) is None
    nodes = list(p.nodes)
    nodes[4] = dataclasses.replace(nodes[4], bwd_rank=3)
    assert solve_node_chain(dataclasses.replace(p, nodes=tuple(nodes)), 2**40) is None


def test_roomy_budget_recomputes_nothing():
    for seed in range(10):
        p = random_problem(30, "chain", seed)
        assert solve_node_chain(p, simulate(p).peak_bytes) == frozenset()
        assert solve_node_chain(p, 2**62) == frozenset()


def _brute_with_prefs(p, budget):
    """Exhaustive search over the plans that honor ban and prefer."""
    cands = [c for c in p.candidates() if p.nodes[c].prefer != "save"]
    forced = frozenset(c for c in cands if p.nodes[c].prefer == "recompute")
    free = [c for c in cands if c not in forced]
    best, lowest = None, None
    for k in range(len(free) + 1):
        for sub in combinations(free, k):
            R = forced | frozenset(sub)
            sim = simulate(p, R)
            if lowest is None or sim.peak_bytes < lowest[0]:
                lowest = (sim.peak_bytes, R)
            if sim.peak_bytes <= budget and (best is None or sim.recompute_flops < best[0]):
                best = (sim.recompute_flops, R)
    return best[1] if best else lowest[1]


def test_honors_ban_and_prefer():
    checked = 0
    for seed in range(40):
        rng = random.Random(1000 + seed)
        p = random_problem(rng.randint(6, 12), "chain", seed)
        nodes = [dataclasses.replace(nd, prefer=rng.choice((None, None, None, "save", "recompute")))
                 for nd in p.nodes]
        p = dataclasses.replace(p, nodes=tuple(nodes))
        if len(p.candidates()) > 11:
            continue
        checked += 1
        base = simulate(p).peak_bytes
        for frac in (0.4, 0.7, 1.0, 2.0):
            budget = int(frac * base)
            got = solve_node_chain(p, budget)
            for i, nd in enumerate(p.nodes):
                if nd.ban is not None or nd.prefer == "save":
                    assert i not in got
                elif nd.prefer == "recompute":
                    assert i in got
            _same_as(p, budget, _brute_with_prefs(p, budget))
    assert checked >= 20


@pytest.mark.parametrize("n", [200, 600])
def test_long_chains_fit(n):
    p = random_problem(n, "chain", 1)
    budget = int(0.5 * simulate(p).peak_bytes)
    got = solve_node_chain(p, budget)
    assert simulate(p, got).peak_bytes <= budget
