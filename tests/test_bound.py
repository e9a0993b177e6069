"""The lower bound for graphs the ILP cannot take (NOTE [ A lower bound for graphs the ILP cannot
take ] in `fxckpt.core.solvers.ilp`): its model admits every plan at its true cost, so it never
exceeds the optimum; the `proven` solver's plans fit and carry their gap."""

import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("scipy")

from fxckpt.core.simulate import simulate  # noqa: E402
from fxckpt.core.solvers import solve  # noqa: E402
from fxckpt.core.solvers.exhaustive import solve_exhaustive  # noqa: E402
from fxckpt.core.solvers.ilp import bound_cost, lower_bound, solve_ilp  # noqa: E402
from fxckpt.core.synthetic import SHAPES, random_problem, repeated_blocks  # noqa: E402

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=25, **SETTINGS)
@given(st.integers(4, 30), st.sampled_from(SHAPES), st.integers(0, 10**6), st.floats(0.0, 1.0))
def test_bound_model_admits_every_plan_at_its_true_cost(n, shape, seed, density):
    """With the choice fixed to any plan and the budget at that plan's simulated peak, the model
    is feasible and its objective is the plan's recompute cost: so no plan that fits is cut off."""
    p = random_problem(n, shape, seed)
    rng = random.Random(seed)
    R = frozenset(c for c in p.candidates() if rng.random() < density)
    sim = simulate(p, R)
    assert bound_cost(p, R, sim.peak_bytes) == pytest.approx(sim.recompute_cost, abs=0.5)


@settings(max_examples=10, **SETTINGS)
@given(st.integers(10, 28), st.sampled_from(SHAPES), st.integers(0, 10**6), st.floats(0.3, 0.9))
def test_lower_bound_never_exceeds_the_ilp_optimum(n, shape, seed, frac):
    p = random_problem(n, shape, seed)
    budget = int(frac * simulate(p).peak_bytes)
    got = solve_ilp(p, budget, seconds=20)
    bound = lower_bound(p, budget)
    if got.lower_bound is None:  # nothing fits: the bound may say so, or be any number
        return
    opt = simulate(p, got.recompute).recompute_cost
    if got.lower_bound >= opt * (1 - 1e-6):  # proven optimal
        assert bound <= opt * (1 + 1e-6)


def test_proven_plans_fit_and_carry_their_gap():
    p = repeated_blocks(6, size=3, seed=3)  # 20 nodes: the ILP proves the optimum
    budget = int(0.6 * simulate(p).peak_bytes)
    opt = simulate(p, solve_ilp(p, budget, seconds=30).recompute).recompute_cost
    plan = solve(p, budget, "proven")
    assert plan.predicted_peak_bytes <= budget
    assert plan.recompute_flops <= solve(p, budget, "auto").recompute_flops
    bound = lower_bound(p, budget)
    assert 0 < bound <= opt
    assert plan.optimality_gap == pytest.approx(1 - bound / simulate(p, p.indices(plan.recompute)).recompute_cost)


def test_exact_plans_from_auto_say_they_are_optimal():
    p = random_problem(12, "skip", 3)  # few candidates: auto searches every subset
    budget = int(0.8 * simulate(p).peak_bytes)
    plan = solve(p, budget, "auto")
    assert plan.optimality_gap == 0.0
    assert "proven optimal" in plan.summary()


def test_values_replayed_before_their_own_step_count_where_they_are_held():
    """Without the values a replay caches for later steps (NOTE [ Values replayed before their
    step ] in `fxckpt.core.solvers.ilp`), the projected model's optimum recomputes n0 and n1
    (4,194,304 FLOPs): n2's backward replays n1 and with it n0, whose value its own backward
    still holds, and the step peaks at 1.28 times the budget. With them the bound is the
    exhaustive optimum (271,581,184 FLOPs)."""
    p = random_problem(10, "chain", seed=0)
    budget = int(0.7 * simulate(p).peak_bytes)
    opt = simulate(p, solve_exhaustive(p, budget))
    assert opt.peak_bytes <= budget
    assert lower_bound(p, budget, tight=True) == pytest.approx(opt.recompute_cost, rel=1e-6)


@settings(max_examples=20, **SETTINGS)
@given(st.integers(6, 14), st.sampled_from(SHAPES), st.integers(0, 10**6), st.floats(0.3, 0.9))
def test_lower_bound_never_exceeds_the_exhaustive_optimum(n, shape, seed, frac):
    p = random_problem(n, shape, seed)
    assume(len(p.candidates()) <= 12)
    budget = int(frac * simulate(p).peak_bytes)
    opt = simulate(p, solve_exhaustive(p, budget))
    bound = lower_bound(p, budget, tight=True)
    if opt.peak_bytes <= budget:  # else nothing fits: the bound may say so, or be any number
        assert bound <= opt.recompute_cost * (1 + 1e-6) + 0.5
