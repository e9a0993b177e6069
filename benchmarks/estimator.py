"""The time estimate (`fxckpt.core.timing`) against measured per-node times, per op kind.

    python benchmarks/estimator.py [--models gpt2 cnn encoder] [--layers 12] [--vocab 50257] [--repeats 5] [--refresh] [--threads 1 [--cpu-clock]]

For each model: the device rates (`fxckpt.calibrate.device_rates`, measured or cached), then
every annotated node's estimated seconds beside its measured seconds (`profile_nodes`: the fastest of
`--repeats` forward runs under no_grad, as the runtime replays it). Printed per op kind: nodes,
measured and estimated totals, their ratio, and the median per-node ratio; then the same for the
nodes a plan at `--budget` recomputes. Models: GPT-2 small from its config (random weights,
batch 2 x 256; `--layers` of its 12), a ResNet-18-shaped CNN from transformers' ResNetConfig
(basic blocks 2-2-2-2, batch 8 x 3 x 128 x 128) and a 4-layer nn.TransformerEncoder (d=128,
batch 8 x 128). `--refresh` measures the device rates again instead of reading the cache.
"""

from __future__ import annotations

import argparse
import time
import statistics
from collections import defaultdict

import torch

import fxckpt
from fxckpt import calibrate, passes
from fxckpt.core.timing import node_seconds
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
        est = node_seconds(rates, cost)
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


def cnn():
    """ResNet-18's shape (basic blocks, depths 2-2-2-2) from a config: random weights, batch 8 x 128 x 128."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
                                                      hidden_sizes=[64, 128, 256, 512])).train()
    labels = torch.randint(0, model.config.num_labels, (8,))  # the config's classes (2 by default)
    return model, {"pixel_values": torch.randn(8, 3, 128, 128), "labels": labels}


def _device_dtype(model):
    p = next(model.parameters())
    return p.device, p.dtype


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", choices=("gpt2", "cnn", "encoder"), default=["gpt2", "cnn"])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257, help="GPT-2's vocabulary (a smaller one: a plan that recomputes)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--refresh", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 on a shared machine, where threads wait on each other")
    ap.add_argument("--cpu-clock", action="store_true",
                    help="time this thread's CPU seconds, not wall (needs --threads 1): free of other processes' load")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cpu_clock:
        if torch.get_num_threads() != 1:
            ap.error("--cpu-clock needs --threads 1 (other threads' CPU time is not this thread's)")
        calibrate.clock = time.thread_time
    if args.refresh:
        calibrate.device_rates("cpu", refresh=True)
    for name in args.models:
        if name == "gpt2":
            model, example = gpt2(args.layers, 768, 12, 2, 256, args.vocab)
            report(f"GPT-2 small ({args.layers} layers, vocab {args.vocab}), batch 2 x 256", model, example, args.budget,
                   args.repeats)
        elif name == "cnn":
            model, example = cnn()
            report("ResNet-18-shaped CNN, batch 8 x 3 x 128 x 128", model, example, args.budget, args.repeats)
        else:
            model, x = encoder()
            report("TransformerEncoder 4 x d128, batch 8 x 128", model, x, args.budget, args.repeats)

if __name__ == "__main__":
    main()
