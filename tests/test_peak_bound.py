"""The proven peak bound (NOTE [ A floor no plan goes below ]): below every plan's simulated peak,
and what makes an infeasible budget cheap to report."""

import dataclasses
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fxckpt.core.errors import InfeasibleBudgetError
from fxckpt.core.peak_bound import peak_lower_bound
from fxckpt.core.simulate import simulate
from fxckpt.core.solvers import min_peak_plan, solve
from fxckpt.core.solvers.auto import _lowest
from fxckpt.core.solvers.exhaustive import solve_exhaustive
from fxckpt.core.synthetic import SHAPES, random_problem

from tests.test_solvers import SMALL

problems = st.builds(random_problem, n=st.integers(6, 40), shape=st.sampled_from(SHAPES), seed=st.integers(0, 10**6),
                     ban_rate=st.sampled_from((0.0, 0.05, 0.3)))


def _plans(p, seed: int, k: int = 12):
    rng = random.Random(seed)
    for _ in range(k):
        share = rng.random()
        yield frozenset(c for c in p.candidates() if rng.random() < share)


@settings(**SMALL)
@given(problems, st.integers(0, 10**6))
def test_no_plan_peaks_below_the_bound(p, seed):
    bound = peak_lower_bound(p)
    assert all(simulate(p, R).peak_bytes >= bound for R in _plans(p, seed))
    if len(p.candidates()) <= 12:
        assert simulate(p, solve_exhaustive(p, 0)).peak_bytes >= bound


@pytest.mark.parametrize("name", ["gpt2", "cnn", "unet"])
def test_no_plan_of_a_real_graph_peaks_below_the_bound(name):
    """Real graphs carry what synthetic ones do not: saved statistics, backward transients and
    unpacks, gradients of many sizes, outputs held to the end."""
    import fxckpt.passes as P
    from tests.models import ZOO

    model, example = ZOO[name]()
    p = P.to_problem(P.annotate(P.capture(model, example)))
    bound = peak_lower_bound(p)
    assert 0 < bound <= simulate(p, min_peak_plan(p)).peak_bytes
    assert all(simulate(p, R).peak_bytes >= bound for R in _plans(p, 0, k=6))


class _Count:
    """Counts simulated runs (every `simulate`, capped or not, is one)."""

    def __init__(self, monkeypatch):
        self.runs = 0
        run = sys.modules["fxckpt.core.simulate"]._Run
        go = run.go

        def counted(inner, *args, **kwargs):
            self.runs += 1
            return go(inner, *args, **kwargs)
        monkeypatch.setattr(run, "go", counted)


def _pinned(seed: int = 1):
    """A graph whose floor is the bound: the first node's forward transient is larger than
    anything a plan can hold (the floor search can stop at its first plan)."""
    p = random_problem(80, "diamond", seed)
    nodes = list(p.nodes)
    nodes[0] = dataclasses.replace(nodes[0], transient_bytes=2**30)
    return dataclasses.replace(p, nodes=tuple(nodes))


def test_the_floor_search_stops_at_the_bound(monkeypatch):
    """Before, min_peak_plan ran the min-cut search and polished whatever the descent had found:
    3,074 simulations here, where the descent's 4 reach the floor."""
    from fxckpt.core.solvers.greedy import descend

    p = _pinned()
    count = _Count(monkeypatch)
    descend(p, 0)
    one_descent = count.runs
    _lowest.cache_clear()
    count.runs = 0
    floor = simulate(p, min_peak_plan(p)).peak_bytes
    assert floor == peak_lower_bound(p)
    assert count.runs <= one_descent + 2


def test_a_budget_below_the_bound_is_refused_without_a_search(monkeypatch):
    """Before, `auto` searched at the budget (min-cut, greedy, the LP's roundings) before naming
    the floor: 12,388 simulations here against the floor search's 8,117."""
    p = random_problem(60, "diamond", 1, ban_rate=0.2)
    floor = simulate(p, min_peak_plan(p)).peak_bytes
    _lowest.cache_clear()
    count = _Count(monkeypatch)
    min_peak_plan(p)
    naming = count.runs
    _lowest.cache_clear()
    count.runs = 0
    with pytest.raises(InfeasibleBudgetError) as e:
        solve(p, peak_lower_bound(p) - 1)
    assert e.value.min_feasible_bytes == floor
    assert count.runs <= naming + 8  # the floor search, and a few runs of its plan (the plan, the error)

