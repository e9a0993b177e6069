"""The ILP: its relaxation admits every plan at its true cost, so its answers are optimal; it is
the reference the other solvers are measured against."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scipy")

from fxckpt.core.errors import InfeasibleBudgetError, SolverError  # noqa: E402
from fxckpt.core.simulate import simulate  # noqa: E402
from fxckpt.core.solvers import SOLVERS, solve  # noqa: E402
from fxckpt.core.solvers.ilp import relaxed_cost, solve_ilp  # noqa: E402
from fxckpt.core.synthetic import SHAPES, random_problem  # noqa: E402

SETTINGS = dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXED = ("none", "all", "sqrt", "blocks")  # strategies that ignore the budget


def _solve(p, budget, method):
    try:
        return solve(p, budget, method)
    except (InfeasibleBudgetError, SolverError) as e:
        return e


@settings(**SETTINGS)
@given(st.integers(4, 30), st.sampled_from(SHAPES), st.integers(0, 10**6), st.floats(0.0, 1.0))
def test_relaxation_admits_every_plan_at_its_true_cost(n, shape, seed, density):
    """The property the ILP's optimality rests on: with the choice fixed to any plan and the
    budget set to that plan's simulated peak, the MILP is feasible and its objective is the
    plan's simulated recompute FLOPs."""
    p = random_problem(n, shape, seed)
    rng = random.Random(seed)
    R = frozenset(c for c in p.candidates() if rng.random() < density)
    sim = simulate(p, R)
    assert relaxed_cost(p, R, sim.peak_bytes) == pytest.approx(sim.recompute_flops, abs=0.5)


@settings(**SETTINGS)
@given(st.integers(6, 14), st.sampled_from(SHAPES), st.integers(0, 10**6), st.floats(0.2, 1.0))
def test_ilp_equals_the_exhaustive_optimum(n, shape, seed, frac):
    p = random_problem(n, shape, seed)
    if len(p.candidates()) > 12:
        return
    budget = int(frac * simulate(p).peak_bytes)
    ilp, exact = _solve(p, budget, "ilp"), _solve(p, budget, "exhaustive")
    assert type(ilp) is type(exact)
    if not isinstance(exact, Exception):
        assert ilp.recompute_flops == exact.recompute_flops
        assert ilp.optimality_gap == 0.0


@settings(**SETTINGS)
@given(st.integers(10, 28), st.sampled_from(SHAPES), st.integers(0, 10**6), st.floats(0.3, 0.95))
def test_no_solver_beats_the_ilp(n, shape, seed, frac):
    p = random_problem(n, shape, seed)
    budget = int(frac * simulate(p).peak_bytes)
    got = solve_ilp(p, budget)
    proven_infeasible = got.lower_bound is None
    ilp_cost = None if proven_infeasible else simulate(p, got.recompute).recompute_flops
    for method in sorted(SOLVERS):
        if method in ("exhaustive", "ilp") or method in FIXED:
            continue
        plan = _solve(p, budget, method)
        if isinstance(plan, Exception):
            continue
        assert not proven_infeasible, f"{method} fits a budget the ILP proved infeasible"
        assert plan.recompute_flops >= ilp_cost, method


def test_auto_reports_a_proven_gap_on_small_graphs(monkeypatch):
    import fxckpt.core.solvers.auto as auto

    # The ILP's limit is wall time; on a loaded machine these take a few seconds to prove.
    monkeypatch.setattr(auto, "ILP_SECONDS", 60.0)
    for seed in range(4):
        p = random_problem(20, "skip", seed)
        budget = int(0.8 * simulate(p).peak_bytes)
        plan = _solve(p, budget, "auto")
        if isinstance(plan, Exception):
            continue
        assert plan.optimality_gap is not None and plan.optimality_gap <= 1e-3
        assert plan.recompute_flops == solve(p, budget, "ilp").recompute_flops


def test_ilp_refuses_large_graphs():
    with pytest.raises(ValueError, match="auto"):
        solve(random_problem(500, "chain", 0), 2**30, "ilp")


def test_auto_and_mincut_are_within_two_percent_of_the_ilp():
    """The issue's bar: within 2% of the ILP's cost on at least 95% of instances (auto); mincut
    alone, a heuristic, is held to 90% here (its distribution is in benchmarks/solvers.py)."""
    close = {"auto": 0, "mincut": 0}
    checked = 0
    for seed in range(6):
        for shape in SHAPES:
            p = random_problem(10 + 3 * seed, shape, seed)
            base = simulate(p).peak_bytes
            for frac in (0.85, 0.7, 0.55):
                budget = int(frac * base)
                got = solve_ilp(p, budget)
                if got.lower_bound is None:
                    continue
                opt = simulate(p, got.recompute).recompute_flops
                checked += 1
                for method in close:
                    plan = _solve(p, budget, method)
                    if not isinstance(plan, Exception) and plan.recompute_flops <= 1.02 * opt:
                        close[method] += 1
    assert checked >= 20
    assert close["auto"] >= 0.95 * checked, (close, checked)
    assert close["mincut"] >= 0.90 * checked, (close, checked)


def test_a_fitting_incumbent_is_proven_by_the_projected_bound_alone(monkeypatch):
    """NOTE [ The projected bound first ]: where the projected relaxation's bound meets the
    incumbent's cost, the incumbent is returned as proven and the full MILP is never built."""
    import fxckpt.core.solvers.ilp as ilp

    p = random_problem(24, "chain", 5)
    budget = int(0.6 * simulate(p).peak_bytes)
    opt = solve_ilp(p, budget)
    cost = simulate(p, opt.recompute).recompute_cost

    def no_milp(*args, **kwargs):
        raise AssertionError("the full MILP was built")

    monkeypatch.setattr(ilp, "build", no_milp)
    got = solve_ilp(p, budget, incumbent=opt.recompute)
    assert got.recompute == opt.recompute
    assert cost * (1 - ilp.GAP) <= got.lower_bound <= cost
