"""One recompute cost for every solver, the simulator and the plan (torch-free).

NOTE [ One recompute cost ] in fxckpt/core/problem.py: FLOPs for untimed problems, estimated
nanoseconds where the nodes carry `seconds`; a plan costs what backward materializes."""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxckpt.core.problem import Buffer, Node, RematProblem
from fxckpt.core.simulate import recompute_cost, simulate
from fxckpt.core.solvers import solve
from fxckpt.core.synthetic import SHAPES, random_problem

MiB = 2**20
BUDGETED = ("exhaustive", "greedy", "mincut", "ilp", "auto", "chain_dp")


def timed(p: RematProblem, seconds) -> RematProblem:
    nodes = tuple(dataclasses.replace(n, seconds=s) for n, s in zip(p.nodes, seconds))
    return dataclasses.replace(p, nodes=nodes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(4, 20), st.sampled_from(SHAPES), st.integers(0, 10**6), st.data())
def test_static_cost_is_the_simulated_cost(n, shape, seed, data):
    p = random_problem(n, shape, seed=seed)
    R = frozenset(data.draw(st.sets(st.sampled_from(p.candidates()))) if p.candidates() else ())
    sim = simulate(p, R)
    assert recompute_cost(p, R) == sim.recompute_cost == sim.recompute_flops
    assert sim.recompute_seconds is None
    secs = [data.draw(st.floats(1e-7, 1e-2)) for _ in p.nodes]
    t = timed(p, secs)
    tsim = simulate(t, R)
    assert recompute_cost(t, R) == tsim.recompute_cost == sum(round(secs[p.index[x]] * 1e9) for x in tsim.recomputed)
    assert tsim.recompute_seconds == pytest.approx(sum(secs[p.index[x]] for x in tsim.recomputed))


def two_choices() -> RematProblem:
    """x -> a -> b -> c -> out, each creating 1 MiB saved by its consumer's backward: 5 MiB held
    at the boundary. Fitting 4 MiB takes recomputing one of a, b (x and c may not be): `a` is a
    big matmul at a high FLOP rate, `b` an elementwise op with few counted FLOPs but slow."""
    def node(i, name, flops, **kw):
        return Node(name, "op", inputs=(i - 1,) if i else (), creates=(i,), value=(i,), saves=(i - 1,) if i else (),
                    requires_grad=True, flops=flops, **kw)
    nodes = (node(0, "x", 1, ban="input"), node(1, "a", 1000), node(2, "b", 10), node(3, "c", 1, ban="pinned"),
             node(4, "out", 1, is_output=True, ban="graph output"))
    return RematProblem(nodes, tuple(Buffer(f"{n.name}:0", MiB, i) for i, n in enumerate(nodes)))


@pytest.mark.parametrize("method", BUDGETED)
def test_every_solver_minimizes_the_same_cost(method):
    p = two_choices()
    budget = simulate(p).peak_bytes - MiB
    assert simulate(p, {1}).peak_bytes <= budget and simulate(p, {2}).peak_bytes <= budget
    by_flops = solve(p, budget, method)
    assert by_flops.recompute == {"b"} and by_flops.recompute_seconds is None
    # a: 1000 FLOPs in 1 us; b: 10 FLOPs in 50 us (the per-op overhead and its bytes)
    t = timed(p, [1e-6, 1e-6, 5e-5, 1e-6, 1e-6])
    by_time = solve(t, budget, method)
    assert by_time.recompute == {"a"}
    assert by_time.recompute_seconds == pytest.approx(1e-6) and by_time.recompute_flops == 1000
    assert "est. 0.00 ms" in by_time.summary()


def test_a_plan_costs_what_backward_replays():
    """A recomputed node that no backward needs costs nothing: the solvers' cost is the
    simulator's, not the sum over the names in the plan."""
    p = two_choices()
    c = dataclasses.replace(p.nodes[3], saves=())  # b's buffer: saved by no backward
    q = dataclasses.replace(p, nodes=p.nodes[:3] + (c,) + p.nodes[4:])
    assert recompute_cost(q, {2}) == simulate(q, {2}).recompute_cost == 0
    assert recompute_cost(q, {1}) == 1000


def test_mixed_units_are_rejected():
    p = two_choices()
    with pytest.raises(ValueError, match="estimate every node or none"):
        timed(p, [1e-6, None, 1e-6, 1e-6, 1e-6])
