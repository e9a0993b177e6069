"""The time estimate (`fxckpt.core.timing`) against measured per-node times, per op kind.

    python benchmarks/estimator.py [--model gpt2|encoder|both] [--repeats 5]

For each model: the device rates (`fxckpt.calibrate.device_rates`, measured or cached), then
every annotated node's estimated seconds beside its measured seconds (`profile_nodes`: median of
`--repeats` forward runs under no_grad, as the runtime replays it). Printed per op kind: nodes,
measured and estimated totals, their ratio, and the median per-node ratio; then the same for the
nodes a plan at `--budget` recomputes. Models: GPT-2 small from its config (random weights,
batch 2 x 256) and a 4-layer nn.TransformerEncoder (d=128, batch 8 x 128).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import torch

import fxckpt
from fxckpt import calibrate, passes
from fxckpt.core.timing import estimate_seconds
from fxckpt.demo import gpt2
from overhead import encoder  # the sibling benchmark's model


def _kind(op: str) -> str:
    return op.removeprefix("aten.").split(".")[0] if op.startswith("aten.") else op


def report(name: str, model, example, budget: float, repeats: int) -> None:
    args, kwargs = (example, {}) if isinstance(example, tuple) else ((), example) if isinstance(example, dict) else ((example,), {})
    captured = passes.capture(model, kwargs if kwargs else args)
    gm = passes.annotate(captured)
    rates = calibrate.device_rates(*_device_dtype(model))
    measured = calibrate.profile_nodes(gm, captured.args, captured.kwargs, repeats=repeats)
    problem = passes.to_problem(gm, rates=rates)
    plan = fxckpt.solve(problem, int(budget * fxckpt.simulate(problem).peak_bytes))
    replayed = set(fxckpt.simulate(problem, problem.indices(plan.recompute)).recomputed)
    print(f"\n== {name}: {rates}")
    rows = defaultdict(list)
    for node in gm.graph.nodes:
        cost = node.meta.get("fxckpt")
        if cost is None or node.name not in measured or not (cost.creates or cost.writes):
            continue
        est = estimate_seconds(rates, cost.flops, cost.bytes_read + cost.bytes_written, cost.ops, cost.random_elements)
        row = (measured[node.name], est)
        rows[_kind(problem.nodes[problem.index[node.name]].op)].append(row)
        rows["(all nodes)"].append(row)
        if node.name in replayed:
            rows[f"(recomputed at {budget:.0%})"].append(row)
    print(f"{'op kind':34}{'nodes':>6}{'measured ms':>13}{'estimated ms':>14}{'est/meas':>10}{'median node':>13}")
    for kind, rs in sorted(rows.items(), key=lambda kv: -sum(m for m, _ in kv[1])):
        meas, est = sum(m for m, _ in rs), sum(e for _, e in rs)
        med = statistics.median(e / m for m, e in rs if m > 0)
        print(f"{kind[:34]:34}{len(rs):>6}{1e3 * meas:>13.3f}{1e3 * est:>14.3f}{est / meas:>10.2f}{med:>13.2f}")


def _device_dtype(model):
    p = next(model.parameters())
    return p.device, p.dtype


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=("gpt2", "encoder", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.5)
    args = ap.parse_args(argv)
    if args.model in ("encoder", "both"):
        model, x = encoder()
        report("TransformerEncoder 4 x d128, batch 8 x 128", model, x, args.budget, args.repeats)
    if args.model in ("gpt2", "both"):
        model, example = gpt2(12, 768, 12, 2, 256, 50257)
        report("GPT-2 small, batch 2 x 256", model, example, args.budget, args.repeats)


if __name__ == "__main__":
    main()
