"""fxckpt.profiling: exact per-op timelines with module scope, per-layer breakdowns, plots."""

import doctest
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import fxckpt
import fxckpt.profiling
from fxckpt.measure import LiveBytesMode, measure_step
from fxckpt.profiling import MemoryProfiler, MemoryVisualizer

MiB = 2**20  # a 512x512 float32 tensor
W = 512 * 512 * 4 + 512 * 4  # one Linear(512, 512)'s weight + bias gradients


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))


def deep():
    """Linear + GELU x 4: a plan at 70% recomputes the GELUs (10 MiB -> 6 MiB predicted)."""
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(512, 512), nn.GELU())])


def test_allocations_sum_to_the_timeline():
    model, x = mlp(), torch.randn(512, 512, requires_grad=True)
    with LiveBytesMode(label=lambda: None) as live:
        out = model(x)
        (out * out).sum().backward()
        del out
    assert len(live.labels) == len(live.timeline) > 10
    for t, (nbytes, _) in enumerate(live.timeline):
        assert nbytes == sum(a.nbytes for a in live.allocations if a.born <= t and (a.died is None or t < a.died))


def test_layer_breakdown_is_exact():
    model, x = mlp(), torch.randn(512, 512)
    profiler = MemoryProfiler("cpu")
    with profiler.profile(model):
        out = model(x)
        out.sum().backward()
    r = profiler.result()
    layers = {l.scope: l for l in r.layers}
    # Linear 0 saves its input (made before the step: not counted); ReLU saves its output, which
    # Linear 2 saves too (one storage); the caller holds the output until backward.
    assert (layers["0"].activation_bytes, layers["1"].activation_bytes, layers["2"].activation_bytes) == (0, MiB, MiB)
    assert layers["0"].gradient_bytes == layers["2"].gradient_bytes == W
    assert layers["1"].gradient_bytes == 0
    assert layers["0"].temporary_bytes == MiB  # its output, freed after ReLU read it
    assert r.timeline[0].phase == "forward" and r.timeline[-1].phase == "backward"
    assert {op.scope for op in r.timeline[r.backward_start:]} >= {"0", "1", "2"}
    assert r.peak_bytes == max(op.live_bytes for op in r.timeline)
    assert r.peak_op.phase == "backward"
    # the loss and backward's seed gradient (4 bytes each) are made outside the model
    assert (layers["(outside)"].activation_bytes, layers["(outside)"].temporary_bytes) == (8, 0)
    assert [(l.scope, l.activation_bytes) for l in r.breakdown(depth=0)] == [("", 2 * MiB + 8)]


def test_profile_with_preallocated_grads_matches_measure_step():
    model, x = mlp(), torch.randn(512, 512)
    expected = measure_step(model, x).peak_bytes
    profiler = MemoryProfiler()
    with profiler.profile(model, preallocate_grads=True):
        out = model(x)  # held until backward ends, as measure_step does
        fxckpt.measure.step_loss(out).backward()
    r = profiler.result()
    assert r.peak_bytes == expected
    assert all(l.gradient_bytes == 0 for l in r.layers)  # accumulated into the preallocated .grad


def test_checkpointed_model_profile_agrees_with_its_plan():
    model, x = deep(), torch.randn(512, 512)
    ckpt = fxckpt.auto_checkpoint(model, x, budget=0.7)
    profiler = MemoryProfiler()
    with profiler.profile(ckpt, preallocate_grads=True):
        out = ckpt(x)
        fxckpt.measure.step_loss(out).backward()
    r = profiler.result()
    assert r.peak_bytes == ckpt.plan.dry_run_peak_bytes  # the same meter on fake tensors
    assert abs(r.peak_bytes - ckpt.plan.predicted_peak_bytes) <= 8  # the simulator's scalar loss
    assert {op.scope for op in r.timeline} >= {"0", "1", "6", "7"}  # the model's own names


def test_bad_use_is_explained():
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        MemoryProfiler("meta")
    with pytest.raises(RuntimeError, match="no profile yet"):
        MemoryProfiler().result()


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    model, x = deep(), torch.randn(512, 512)
    ckpt = fxckpt.auto_checkpoint(model, x, budget=0.7)
    profiles = {}
    for name, m in (("none", model), ("fxckpt", ckpt)):
        profiler = MemoryProfiler()
        with profiler.profile(m, name, preallocate_grads=True):
            out = m(x)
            fxckpt.measure.step_loss(out).backward()
        profiles[name] = profiler.result()
    viz = MemoryVisualizer()
    fig = viz.plot_memory_timeline(profiles, predicted=ckpt, path=tmp_path / "t.png")
    lines = fig.axes[0].get_lines()
    predicted = lines[-1]
    assert max(predicted.get_ydata()) == pytest.approx(ckpt.plan.predicted_peak_mib)
    assert max(predicted.get_xdata()) == pytest.approx(len(profiles["none"].timeline) - 1)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    fig = viz.plot_layer_heatmap(profiles["none"], path=tmp_path / "h.svg")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [l.scope for l in profiles["none"].layers]
    assert b"<svg" in (tmp_path / "h.svg").read_bytes()[:400]
    rows = [{"strategy": "none", "peak_mib": 10.0, "flops_overhead_pct": 0.0},
            {"strategy": "sqrt", "peak_mib": 5.0, "flops_overhead_pct": 30.0},
            {"strategy": "worse", "peak_mib": 8.0, "flops_overhead_pct": 40.0}, ckpt.plan]
    fig = viz.plot_memory_vs_compute_tradeoff(rows)
    frontier = fig.axes[0].get_lines()[0]  # "worse" is beaten by sqrt on both axes
    assert list(frontier.get_ydata()) == [10.0, ckpt.plan.predicted_peak_mib, 5.0]
    fig = viz.plot_strategy_comparison(rows)
    assert [p.get_width() for p in fig.axes[0].patches] == [10.0, 5.0, 8.0, ckpt.plan.predicted_peak_mib]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_profile_records_the_allocator():
    model, x = mlp().cuda(), torch.randn(512, 512, device="cuda")
    profiler = MemoryProfiler("cuda")
    with profiler.profile(model, preallocate_grads=True):
        out = model(x)  # held until backward ends, as measure_step does
        fxckpt.measure.step_loss(out).backward()
    r = profiler.result()
    assert r.allocator_peak_bytes >= r.peak_bytes > 0
    assert r.allocator_peak_bytes == measure_step(model, x).peak_bytes  # the allocator's view, both
    assert all(op.allocated_bytes is not None for op in r.timeline)


def test_doctests():
    assert doctest.testmod(fxckpt.profiling, optionflags=doctest.ELLIPSIS).failed == 0


def test_submodule_loads_lazily():
    code = ("import sys, fxckpt; assert 'fxckpt.profiling' not in sys.modules and 'matplotlib' not in sys.modules; "
            "assert fxckpt.profiling.MemoryProfiler and 'matplotlib' not in sys.modules; print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
