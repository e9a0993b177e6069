"""Step time and memory of fxckpt's compile backend against torch.compile (inductor) on one device.

    python benchmarks/compile_bench.py [--repeats 15] [--models gpt2,cnn] [--device cpu]

Rows per model: torch.compile default; torch.compile with
`torch._functorch.config.activation_memory_budget=0.5`; `backend=fxckpt.backend(budget=0.5)`;
`backend=fxckpt.backend(budget_mb=<the budget-0.5 row's measured peak>)`. Columns: measured peak
(CPU: the profiler's allocator events; CUDA: `max_memory_allocated`), fxckpt's prediction, step
time (median of `--repeats` steps, the rows interleaved step by step so that load shifts hit
every row alike) and each row's median paired ratio to the default's step. Every step holds the
output until backward ends (as `fxckpt.measure_step` and the prediction do). Caches are off, so
each row is compiled by its own partitioner.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

import fxckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import gpt2, loss_of, peak  # noqa: E402

MIB = 2**20


def cnn(device: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.models import TinyCNN

    torch.manual_seed(0)
    return TinyCNN().to(device).train(), {"x": torch.randn(32, 3, 32, 32, device=device)}


def timed_step(model, example, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.manual_seed(1)
    out = model(**example)
    loss_of(out).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compiled(base, example, device, backend=None, memory_budget=None):
    """A compiled copy of `base`, compiled now under `memory_budget` if given: two steps, since a
    graph that a later graph re-plans compiles again on its next call (fxckpt's NOTE [ Graph breaks
    share the budget in first-run order ]; GPT-2's model graph at the budget-0.5 row's peak: the
    recompile was timed as a 17x slower step)."""
    m = torch.compile(copy.deepcopy(base), backend=backend) if backend is not None else torch.compile(copy.deepcopy(base))
    with torch._functorch.config.patch(activation_memory_budget=memory_budget if memory_budget is not None else 1.0):
        for _ in range(2):
            timed_step(m, example, device)
    return m


def bench(name, base, example, device, repeats):
    torch._dynamo.reset()
    rows = {"torch.compile default": (compiled(base, example, device), None)}
    rows["torch.compile budget 0.5"] = (compiled(base, example, device, memory_budget=0.5), None)
    anchor = peak(rows["torch.compile budget 0.5"][0], example, device)
    for label, spec in (("fxckpt compile 50%", {"budget": 0.5}),
                        (f"fxckpt compile @ budget 0.5 ({anchor / MIB:.2f} MiB)", {"budget_mb": anchor / MIB})):
        be = fxckpt.backend(**spec)
        try:
            rows[label] = (compiled(base, example, device, backend=be), be)
        except Exception as e:  # an infeasible budget: say so and go on
            print(f"{name}: {label}: {type(e).__name__}: {str(e).splitlines()[-1][:200]}", flush=True)
    times = {label: [] for label in rows}
    for _ in range(repeats):
        for label, (m, _) in rows.items():
            times[label].append(timed_step(m, example, device))
    print(f"\n{name} on {device}, {repeats} interleaved steps per row")
    print(f"| {'strategy':<44} | meas MiB | pred MiB | step ms (median) | vs default (paired median) | recomputed |")
    print(f"|{'-' * 46}|---------:|---------:|-----------------:|---------------------------:|-----------:|")
    base_times = times["torch.compile default"]
    for label, (m, be) in rows.items():
        measured = peak(m, example, device)
        pred = f"{be.predicted_peak_bytes() / MIB:8.2f}" if be is not None else f"{'':>8}"
        rec = f"{sum(len(p.recompute) for p in be.plans):10d}" if be is not None else f"{'':>10}"
        ratio = statistics.median(t / b for t, b in zip(times[label], base_times))
        print(f"| {label:<44} | {measured / MIB:8.2f} | {pred} | {statistics.median(times[label]) * 1e3:16.1f} | "
              f"{ratio:26.3f} | {rec} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="gpt2,cnn")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    for name in args.models.split(","):
        base, example = gpt2(args.layers, args.hidden, args.seq, args.batch, args.device) if name == "gpt2" \
            else cnn(args.device)
        bench(name, base, example, args.device, args.repeats)


if __name__ == "__main__":
    main()
