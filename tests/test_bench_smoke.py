"""Smoke test of fxckpt.benchmark on the tiny "quick" model: deterministic facts only (no wall time,
no torch.compile); the tutorial's call form on a tiny transformer; the harness stays out of the library."""

import ast
import pathlib

import pytest
import torch

from fxckpt.benchmark import StrategyResult, compare_strategies, print_comparison_table, to_markdown
from fxckpt.benchmark.strategies import register_strategy, strategy

STRATEGIES = ["none", "every-2", "sqrt segments", "fxckpt 50%", "fxckpt @ every-2"]
ROOT = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = {"fxckpt/bench.py", "fxckpt/demo.py"}  # command-line programs on top of the harness


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
    by_name = {r.strategy: r for r in rows}
    assert [r.strategy for r in rows] == STRATEGIES
    assert {r.status for r in rows} == {"ok"}, [(r.strategy, r.status, r.notes) for r in rows]
    none = by_name["none"]
    # The profiler's peak and LiveBytesMode's agree exactly on this model (no op-internal scratch).
    assert none.peak_mib == pytest.approx(none.live_peak_mib, rel=1e-6)
    for name in STRATEGIES[1:]:
        assert by_name[name].peak_mib < none.peak_mib, name
    assert by_name["sqrt segments"].flops_overhead_pct > 0  # recomputation is counted
    half = by_name["fxckpt 50%"]
    assert half.peak_mib <= half.budget_mib and half.live_peak_mib <= half.budget_mib
    assert half.predicted_mib <= half.budget_mib
    anchored = by_name["fxckpt @ every-2"]
    assert anchored.budget_mib == by_name["every-2"].peak_mib
    assert anchored.live_peak_mib <= anchored.budget_mib
    # fxckpt plans the peak LiveBytesMode sees; the profiler also sees the CPU RNG states kept to
    # replay dropout (made outside the dispatcher): at most one per dropout layer (6 here).
    rng_states_mib = 6 * torch.get_rng_state().nbytes / 2**20
    assert anchored.peak_mib <= anchored.budget_mib + rng_states_mib
    for name in ("every-2", "sqrt segments", "fxckpt 50%", "fxckpt @ every-2"):
        assert by_name[name].grad_diff == 0, name  # dropout replays the same random numbers
    table = to_markdown(rows)
    for name in STRATEGIES:
        assert f"| {name} |" in table
    assert list(rows[0].to_dict())[:3] == ["model", "strategy", "peak_mib"]  # the keys of results.json


def test_tutorial_call_form(one_thread, capsys):
    """The tutorial's call: a transformer of the given shape (GPT-2, tiny here), its progress shown
    (without asking) and its columns printed."""
    rows = compare_strategies(num_layers=2, hidden_size=64, batch_size=2, sequence_length=32, iterations=1,
                              strategies=["none", "hf per-layer"])
    name = "transformer 2x64, batch 2 x seq 32"
    assert [(r.model, r.strategy, r.status) for r in rows] == [
        (name, "none", "ok"), (name, "hf per-layer", "ok")]
    assert rows[0].notes.startswith("profiler peak vs LiveBytesMode")
    assert rows[1].peak_mib < rows[0].peak_mib and rows[1].grad_diff == 0
    assert "[2/2] hf per-layer" in capsys.readouterr().err  # progress, one line per strategy
    print_comparison_table(rows)
    header = capsys.readouterr().out.splitlines()[0].split("  ")
    tutorial = ["peak memory MiB", "compute time s", "memory savings %", "compute overhead % [range]"]
    assert [h.strip() for h in header if h.strip()][2:6] == tutorial
    with pytest.raises(TypeError, match="not both"):
        compare_strategies("quick", num_layers=2)


def test_compiled_fxckpt_row_reports_its_prediction_not_livebytes(one_thread):
    """A compiled row gets no LiveBytesMode figure (under a dispatch mode Dynamo runs the model
    eagerly: the quick model's un-checkpointed 11.2 MiB was printed for every `fxckpt compile`
    row), and an fxckpt compile row the prediction of its backend's plans. `aot_eager` here:
    inductor's compile would take minutes."""
    import fxckpt
    from fxckpt.benchmark.flops import CountingInductor
    from fxckpt.benchmark.strategies import Prepared, register_strategy

    backends = []

    @register_strategy("fxckpt compile 50% under aot_eager (test)")
    def _aot_eager(model, example):
        torch._dynamo.reset()
        backends.append(fxckpt.backend(budget=0.5, compiler="aot_eager"))
        return Prepared(torch.compile(model, backend=backends[-1]), model, counter=CountingInductor(),
                        predict=backends[-1].predicted_peak_bytes)

    try:
        rows = compare_strategies("quick", strategies=["none", "fxckpt compile 50% under aot_eager (test)"],
                                  iterations=1)
    finally:
        torch._dynamo.reset()
    none, row = rows
    assert row.status == "ok", row.notes
    assert none.live_peak_mib is not None and row.live_peak_mib is None
    (plan,) = fxckpt.compiled_plans(backends[-1])
    assert row.predicted_mib == plan.predicted_peak_bytes / 2**20 < none.peak_mib


@register_strategy("compile crash (test)")  # isolated by default: its name starts as torch's compile rows
def _segfaults(model, example):
    import ctypes

    ctypes.string_at(0)  # what torch's partitioner did to a TinyCNN bench run: SIGSEGV


def test_a_crashing_compiled_row_costs_that_row_only(one_thread):
    """A compiled row whose process dies (torch's own `compile budget 0.5` row segfaulted in a
    TinyCNN bench run and took the whole benchmark down) gets a status naming the signal, and
    the rows after it are measured."""
    rows = compare_strategies("quick", strategies=["none", "compile crash (test)", "every-2"], iterations=1)
    assert [(r.strategy, r.status) for r in rows] == [
        ("none", "ok"), ("compile crash (test)", "crashed (SIGSEGV)"), ("every-2", "ok")]


def test_an_isolated_row_measures_what_it_measures_in_process(one_thread):
    """A row run in its own process (the model, input, reference step and earlier rows pickled to
    it) reports the same deterministic figures as in this process."""
    here, there = (compare_strategies("quick", strategies=["none", "every-2"], iterations=1, isolate=prefixes)[1]
                   for prefixes in ((), ("every-",)))
    assert here.status == there.status == "ok", (here.notes, there.notes)
    for field in ("peak_mib", "flops", "flops_overhead_pct", "grad_diff", "saved_pct", "forward_check_bytes"):
        assert getattr(there, field) == getattr(here, field), field
    assert there.grad_diff == 0 and there.none_step_seconds is not None  # its timed steps paired with none's


def test_strategy_registry():
    assert strategy("every-4", {}) is not strategy("every-2", {})
    with pytest.raises(ValueError, match="unknown strategy 'every other'.*'every-K'"):
        strategy("every other", {})
    assert strategy("fxckpt min", {}) is strategy("fxckpt min", {})
    from fxckpt.benchmark.strategies import SkipStrategy

    with pytest.raises(SkipStrategy, match="anchor 'x' not measured"):
        strategy("fxckpt @ x", {"x": StrategyResult("m", "x", status="failed")})


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix()
                                        for folder in ("fxckpt", "passes") for p in (ROOT / folder).rglob("*.py")
                                        if "benchmark" not in p.relative_to(ROOT).parts))
def test_library_does_not_import_the_harness(path):
    if path in PROGRAMS:
        pytest.skip("a command-line program on top of the harness")
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [("." * node.level) + (node.module or "")]
            names += [f"{names[0]}.{a.name}" if node.module else names[0] + a.name for a in node.names]
        else:
            continue
        assert not any("benchmark" in n.split(".") for n in names), f"{path} imports the harness: {names}"
