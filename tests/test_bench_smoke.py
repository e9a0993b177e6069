"""Smoke test of fxckpt.benchmark on the tiny "quick" model: deterministic facts only (no wall time,
no torch.compile)."""

import pytest
import torch

from fxckpt.benchmark import compare_strategies, to_markdown

STRATEGIES = ["none", "every-2", "sqrt segments", "fxckpt 50%", "fxckpt @ every-2"]


@pytest.fixture
def one_thread():
    """Tiny ops on 2 threads stall when another process holds a core (OpenMP barriers): this
    test takes 2 s on one thread and up to 30 s on two on a busy machine. Nothing asserted
    depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_compare_strategies_quick(one_thread):
    rows = compare_strategies("quick", strategies=STRATEGIES, iterations=1)
    by_name = {r["strategy"]: r for r in rows}
    assert [r["strategy"] for r in rows] == STRATEGIES
    assert {r["status"] for r in rows} == {"ok"}, [(r["strategy"], r["status"], r["notes"]) for r in rows]
    none = by_name["none"]
    # The profiler's peak and LiveBytesMode's agree exactly on this model (no op-internal scratch).
    assert none["peak_mib"] == pytest.approx(none["live_peak_mib"], rel=1e-6)
    for name in STRATEGIES[1:]:
        assert by_name[name]["peak_mib"] < none["peak_mib"], name
    assert by_name["sqrt segments"]["flops_overhead_pct"] > 0  # recomputation is counted
    half = by_name["fxckpt 50%"]
    assert half["peak_mib"] <= half["budget_mib"] and half["live_peak_mib"] <= half["budget_mib"]
    assert half["predicted_mib"] <= half["budget_mib"]
    anchored = by_name["fxckpt @ every-2"]
    assert anchored["budget_mib"] == by_name["every-2"]["peak_mib"]
    assert anchored["live_peak_mib"] <= anchored["budget_mib"]
    # fxckpt plans the peak LiveBytesMode sees; the profiler also sees the CPU RNG states kept to
    # replay dropout (made outside the dispatcher): at most one per dropout layer (6 here).
    rng_states_mib = 6 * torch.get_rng_state().nbytes / 2**20
    assert anchored["peak_mib"] <= anchored["budget_mib"] + rng_states_mib
    for name in ("every-2", "sqrt segments", "fxckpt 50%", "fxckpt @ every-2"):
        assert by_name[name]["grad_diff"] == 0, name  # dropout replays the same random numbers
    table = to_markdown(rows)
    for name in STRATEGIES:
        assert f"| {name} |" in table
