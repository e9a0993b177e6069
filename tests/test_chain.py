"""The layer-level chain DP and the classic planners (torch-free)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fxckpt.core.errors import InfeasibleBudgetError
from fxckpt.core.solvers.chain import (LayerProfile, OptimalCheckpointer, SegmentedCheckpointing, brute_force_chain,
                                  chain_peak, solve_chain)

MiB = 2**20
layer_lists = st.lists(st.builds(LayerProfile, st.just("l"), st.sampled_from([1, 2, 3, 5, 8]), st.sampled_from([1.0, 2.0, 7.0])),
                       min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(layer_lists, st.floats(0.2, 1.2))
def test_chain_dp_equals_brute_force(layers, frac):
    budget = int(frac * sum(layer.activation_bytes for layer in layers))
    dp, brute = solve_chain(layers, budget), brute_force_chain(layers, budget)
    assert (dp is None) == (brute is None)
    if dp is not None:
        assert dp.recompute_cost == brute.recompute_cost
        assert dp.peak_bytes <= budget and dp.peak_bytes == chain_peak(layers, dp.segments)


def test_optimal_checkpointer_on_equal_layers():
    layers = [LayerProfile(f"block{i}", MiB, 1.0) for i in range(16)]
    plan = OptimalCheckpointer(layers).find_optimal_checkpoints(memory_budget=8 * MiB)
    # 16 layers of 1 MiB under 8 MiB: segments keep their inputs; the cheapest fit recomputes
    # fewer layers than recomputing everything, and the DP's peak is what the model says.
    assert plan.peak_bytes <= 8 * MiB and plan.memory_savings >= 0.5
    assert 0 < len(plan.checkpoint_layers) < 16
    with pytest.raises(InfeasibleBudgetError):
        OptimalCheckpointer(layers).find_optimal_checkpoints(memory_budget=MiB)


def test_segment_planners():
    assert SegmentedCheckpointing.get_segment_boundaries(10, 3) == [(0, 3), (4, 6), (7, 9)]
    assert SegmentedCheckpointing.get_segment_boundaries(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    with pytest.raises(ValueError):
        SegmentedCheckpointing.get_segment_boundaries(4, 5)
    # 16 layers: k segments hold k-1 inputs plus the largest segment; 8 layers' worth allows k=3.
    assert SegmentedCheckpointing.compute_optimal_segments(16, 0.5) == 3
    assert SegmentedCheckpointing.compute_optimal_segments(16, 1.0) == 1
