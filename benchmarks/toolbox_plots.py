"""The practitioner's toolbox on GPT-2 small (random weights): profiles, plots and a plan's picture.

`python benchmarks/toolbox_plots.py [--out DIR] [--seq 256] [--batch 2]` writes timeline.png,
tradeoff.png, heatmap.png, strategies.png, graph.png and plan.html to DIR and prints the figures
each plot shows.
"""

import argparse
import pathlib

import torch

import fxckpt
from fxckpt.benchmark.zoo import gpt2
from fxckpt.measure import measure_step
from fxckpt.profiling import MemoryProfiler, MemoryVisualizer
from fxckpt.viz import plot_graph, scope_groups


def profile(model, example, name):
    profiler = MemoryProfiler()
    with profiler.profile(model, name, preallocate_grads=True):
        out = model(**example)
        out.loss.backward()
        del out
    return profiler.result()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="toolbox_plots")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, example = gpt2(12, 768, 12, args.batch, args.seq, 50257)
    plans = [fxckpt.auto_checkpoint(model, example, budget=b) for b in (0.8, 0.6, 0.5)]
    ckpt = plans[1]
    print(ckpt.plan.summary())
    viz = MemoryVisualizer()
    none, mine = profile(model, example, "none"), profile(ckpt, example, "fxckpt 60%")
    for r in (none, mine):
        print(r.summary())
    viz.plot_memory_timeline({"none": none, "fxckpt 60%": mine}, predicted=ckpt, path=out / "timeline.png")
    viz.plot_layer_heatmap(none, depth=3, path=out / "heatmap.png")
    for l in none.breakdown(depth=3):
        print(f"  {l.scope:28} act {l.activation_bytes / 2**20:7.2f}  grad {l.gradient_bytes / 2**20:7.2f}  "
              f"temp {l.temporary_bytes / 2**20:7.2f} MiB")
    base = measure_step(model, example, warmup=False)
    rows = [{"strategy": "none", "peak_mib": base.peak_mib, "flops_overhead_pct": 0.0}]
    for c in plans:
        m = measure_step(c, example, warmup=False)
        rows.append({"strategy": f"fxckpt {c.plan.budget_bytes / 2**20:.0f} MiB", "peak_mib": m.peak_mib,
                     "flops_overhead_pct": 100 * (m.flops / base.flops - 1)})
    for r in rows:
        print(f"  {r['strategy']:20} {r['peak_mib']:8.1f} MiB  +{r['flops_overhead_pct']:.1f}% FLOPs")
    viz.plot_memory_vs_compute_tradeoff(rows + [c.plan for c in plans], path=out / "tradeoff.png")
    viz.plot_strategy_comparison(rows, path=out / "strategies.png")
    depth, groups = scope_groups(ckpt.problem)
    print(f"graph: {len(ckpt.problem.nodes)} nodes in {len(groups)} scopes (depth {depth})")
    plot_graph(ckpt.problem, ckpt.plan).figure.savefig(out / "graph.png")
    (out / "plan.html").write_text(ckpt.plan._repr_html_())


if __name__ == "__main__":
    main()
