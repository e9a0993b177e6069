"""`block_dp` (torch-free): the composition DP is exact under the phase model, and the composed
plan fits the budget in the simulator and never beats the exhaustive optimum."""

from itertools import product

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxckpt.core.errors import InfeasibleBudgetError, SolverError
from fxckpt.core.simulate import phase_peaks, simulate
from fxckpt.core.solvers import solve
from fxckpt.core.solvers import block_dp
from fxckpt.core.solvers.block_dp import between, compose, options_front, phases, signature, units
from fxckpt.core.synthetic import random_problem, repeated_blocks

SETTINGS = dict(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

option = st.tuples(st.integers(0, 40), st.integers(0, 30), st.integers(-20, 15), st.integers(-20, 15))
unit = st.tuples(st.lists(option, min_size=1, max_size=3), st.integers(40, 100), st.integers(40, 100))


def phase_peak(pick, levels):
    """The phase model's price of one option per unit (NOTE [ The phase model ])."""
    peak, held = 0, 0
    for o, (lf, lb) in zip(pick, levels):
        peak = max(peak, lf + o[2] - held, lb + o[3] - held)
        held += o[0]
    return peak


def brute_compose(unit_opts, levels, budget):
    """Every choice of one option per unit, priced by the phase model."""
    costs = [sum(o[1] for o in pick) for pick in product(*unit_opts) if phase_peak(pick, levels) <= budget]
    return min(costs, default=None)


@settings(**SETTINGS)
@given(st.lists(unit, min_size=1, max_size=4), st.integers(0, 120))
def test_compose_is_the_phase_model_optimum(units_, budget):
    unit_opts = [opts for opts, _, _ in units_]
    levels = [(lf, lb) for _, lf, lb in units_]
    got = compose(unit_opts, levels, budget)
    want = brute_compose(unit_opts, levels, budget)
    assert (got and got[0]) == want if want is not None else got is None
    if got is not None:  # the chosen options are priced as claimed and fit the model's budget
        pick = [opts[k] for opts, k in zip(unit_opts, got[1])]
        assert sum(o[1] for o in pick) == got[0]
        assert phase_peak(pick, levels) <= budget


@settings(**SETTINGS)
@given(st.lists(unit, min_size=1, max_size=4), st.integers(0, 120))
def test_fronts_in_arrays_equal_fronts_in_lists(units_, budget):
    # NOTE [ Fronts in arrays ]: the same choices, ties included, with and without numpy
    # (small ranges: many ties in sum d and sum c)
    pytest.importorskip("numpy")
    unit_opts = [opts for opts, _, _ in units_]
    levels = [(lf, lb) for _, lf, lb in units_]
    with_np = compose(unit_opts, levels, budget)
    saved, block_dp.np = block_dp.np, None
    try:
        assert compose(unit_opts, levels, budget) == with_np
    finally:
        block_dp.np = saved


def test_options_front_drops_only_dominated_options():
    a, b, c = (5, 3, 1, 0, frozenset({0})), (5, 4, 1, 0, frozenset({1})), (2, 1, 0, 0, frozenset())
    d = (5, 3, 1, -1, frozenset({2}))  # lower on the backward phase only: it beats a
    assert options_front([a, b, c]) == [a, c]
    assert options_front([a, c, d]) == [c, d]


def test_phase_peaks_split_the_simulated_peak():
    p = repeated_blocks(3, size=3, seed=1)
    phase = phases(p, units(p))
    for R in (frozenset(), frozenset(p.candidates()[1:4])):
        sim, peaks = phase_peaks(p, R, phase)
        assert max(peaks.values()) == sim.peak_bytes == simulate(p, R).peak_bytes
        assert {k for k, _ in peaks} == {"f", "b"} and {u for _, u in peaks} == set(phase)
        for u in set(phase):  # watching one phase: the same peaks there
            sim_u, peaks_u = phase_peaks(p, R, phase, unit=u)
            assert sim_u == sim and all(peaks_u[k, u] == peaks[k, u] for k in "fb")


def test_between_adds_every_option_between_two_nested_ones():
    a, b = frozenset({0}), frozenset({0, 2, 5})
    assert between({a, b}) == {a, b, frozenset({0, 2}), frozenset({0, 5})}
    assert between({a, b}, limit=1) == {a, b}  # b - a has two positions
    assert between({frozenset({1}), frozenset({2})}) == {frozenset({1}), frozenset({2})}  # not nested
    chain = {frozenset(range(k)) for k in range(4)}  # {} < {0} < {0, 1} < {0, 1, 2}: only adjacent pairs count
    assert between(chain) == chain


def test_block_dp_uses_parts_of_its_seeds_options():
    """Eight blocks at 60%: per-layer checkpointing's and the min-cut plan's per-block options are
    nested; the cheapest composition recomputes part of their difference in some blocks (block_dp
    returned the min-cut plan here before it composed such options; the ILP's proven optimum is
    164,626,432 FLOPs, min-cut 418,381,824)."""
    p = repeated_blocks(8, size=6, seed=0)
    budget = int(0.6 * simulate(p).peak_bytes)
    plan = solve(p, budget, "block_dp")
    assert plan.predicted_peak_bytes <= budget
    assert plan.recompute_flops < solve(p, budget, "mincut").recompute_flops


def test_identical_blocks_share_a_signature():
    p = repeated_blocks(4, size=5, seed=3)
    members = units(p)
    assert len(members) == 5  # embed, then four blocks, in execution order (the head is the output)
    sigs = {signature(p, m) for m in members[1:]}
    assert len(sigs) == 1 and signature(p, members[0]) not in sigs


def test_block_dp_prices_where_a_transient_runs():
    """Four blocks at 60%: the block model priced every option's transient at the boundary and
    composed nothing cheaper than the min-cut plan (8,598,323,200 FLOPs); the phase model finds
    the exhaustive optimum (6,448,742,400)."""
    p = repeated_blocks(4, size=3, seed=11)  # 14 candidates: 16,384 plans
    budget = int(0.6 * simulate(p).peak_bytes)
    plan = solve(p, budget, "block_dp")
    assert plan.predicted_peak_bytes <= budget
    assert plan.recompute_flops == solve(p, budget, "exhaustive").recompute_flops == 6_448_742_400


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("frac", [0.8, 0.6])
def test_block_dp_fits_and_never_beats_the_exhaustive_optimum(seed, frac):
    p = repeated_blocks(3, size=3, seed=seed)  # 11 candidates: 2048 plans
    budget = int(frac * simulate(p).peak_bytes)
    try:
        exact = solve(p, budget, "exhaustive")
    except InfeasibleBudgetError:
        with pytest.raises((InfeasibleBudgetError, SolverError)):
            solve(p, budget, "block_dp")
        return
    plan = solve(p, budget, "block_dp")
    assert plan.predicted_peak_bytes <= budget
    assert plan.recompute_flops >= exact.recompute_flops
    assert plan.recompute_flops <= solve(p, budget, "mincut").recompute_flops  # its seeds compete


def test_block_dp_matches_the_optimum_on_a_stack():
    """Six identical blocks: the exhaustive search is out of reach, the ILP proves the optimum."""
    pytest.importorskip("scipy")
    from fxckpt.core.solvers.ilp import solve_ilp
    p = repeated_blocks(6, size=3, seed=3)
    for frac in (0.8, 0.6, 0.45):
        budget = int(frac * simulate(p).peak_bytes)
        ilp = solve_ilp(p, budget, seconds=30)
        opt = simulate(p, ilp.recompute).recompute_cost
        assert ilp.lower_bound >= opt * (1 - 1e-6)  # proven
        assert solve(p, budget, "block_dp").recompute_flops == opt


def test_auto_composes_blocks_where_that_beats_the_min_cut():
    """A 66-node stack of 8 blocks at 80%: the min-cut plan is the best whole-graph plan auto had;
    mixing per-block options is cheaper (auto used to return the min-cut plan here)."""
    p = repeated_blocks(8, size=8, seed=2)
    budget = int(0.8 * simulate(p).peak_bytes)
    auto, mincut = solve(p, budget, "auto"), solve(p, budget, "mincut")
    assert auto.predicted_peak_bytes <= budget
    assert auto.recompute_flops < mincut.recompute_flops


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # 3 solves of 66 nodes each
@given(st.integers(0, 50), st.sampled_from([0.8, 0.6, 0.45]))
def test_auto_is_never_worse_than_mincut_or_block_dp(seed, frac):
    p = repeated_blocks(8, size=8, seed=seed)  # 66 nodes: past auto's exhaustive search and ILP
    budget = int(frac * simulate(p).peak_bytes)
    costs = {}
    for method in ("mincut", "block_dp", "auto"):
        try:
            plan = solve(p, budget, method)
        except (InfeasibleBudgetError, SolverError):
            continue
        assert plan.predicted_peak_bytes <= budget
        costs[method] = simulate(p, p.indices(plan.recompute)).recompute_cost
    if costs:
        assert "auto" in costs and costs["auto"] <= min(costs.values())


@pytest.mark.parametrize("seed", range(3))
def test_flips_skip_only_what_changes_nothing(seed):
    """The neighbours `_flips` leaves out (a node nothing holds) simulate as the option itself."""
    p = random_problem(30, "skip", seed)
    members = p.candidates()
    for positions in (frozenset(), frozenset(range(0, len(members), 3))):
        R = {members[k] for k in positions}
        kept = block_dp._flips(p, members, positions)
        skipped = [k for k in range(len(members)) if positions ^ {k} not in kept]
        base = simulate(p, R)
        for k in skipped:
            sim = simulate(p, R | {members[k]})
            assert (sim.peak_bytes, sim.boundary_bytes, sim.recompute_cost) == \
                (base.peak_bytes, base.boundary_bytes, base.recompute_cost)
