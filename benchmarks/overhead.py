"""Wall overhead of the eager runtime, as paired step-time ratios against the original module.

    python benchmarks/overhead.py [--model gpt2|encoder|both|<a zoo model, e.g. resnet50>] [--pairs 7] [--budgets 1.0 0.5]

Per model and budget: budget 1.0 is the captured graph with nothing recomputed, which measures
what the machinery costs by itself; a lower budget gives a plan, printed beside its estimated
recompute seconds over the estimated forward (`Plan.recompute_seconds`). Each pair runs one original step and one
checkpointed step back to back (order alternating) and records their ratios of wall time and of
the process's CPU time (with one torch thread, the step's own work: steadier than wall on a shared
machine); printed: median and [smallest, largest] of the ratios minus one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fxckpt
from fxckpt.benchmark.zoo import ZOO
from fxckpt.measure import step_loss


def encoder():
    """A 4-layer nn.TransformerEncoder, d=128, batch 8 x 128 (dropout 0.1)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False).train()
    return model, torch.randn(8, 128, 128)


def _step(model, args, kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one training step."""
    for p in model.parameters():
        p.grad = None
    t0, c0 = time.perf_counter(), time.process_time()
    step_loss(model(*args, **kwargs)).backward()
    return time.perf_counter() - t0, time.process_time() - c0


def paired(model, ckpt, args, kwargs, pairs: int) -> tuple[list[float], list[float]]:
    """Ratios checkpointed / original of wall and of CPU time, one per pair."""
    _step(model, args, kwargs), _step(ckpt, args, kwargs)  # warm-up
    wall, cpu = [], []
    for i in range(pairs):
        if i % 2:
            mine, base = _step(ckpt, args, kwargs), _step(model, args, kwargs)
        else:
            base, mine = _step(model, args, kwargs), _step(ckpt, args, kwargs)
        wall.append(mine[0] / base[0])
        cpu.append(mine[1] / base[1])
    return wall, cpu


def _fmt(ratios) -> str:
    pct = sorted(100 * (r - 1) for r in ratios)
    return f"{statistics.median(pct):+.1f}% [{pct[0]:+.1f}, {pct[-1]:+.1f}]"


def report(name, model, example, budgets, pairs: int) -> None:
    args, kwargs = ((), example) if isinstance(example, dict) else ((example,), {})
    print(f"\n== {name}")
    for b in budgets:
        ckpt = fxckpt.auto_checkpoint(model, example, budget=b)
        plan = ckpt.plan
        wall, cpu = paired(model, ckpt, args, kwargs, pairs)
        est = "" if getattr(plan, "recompute_seconds", None) is None else (  # None: plans in FLOPs
            f", est. recompute {1e3 * plan.recompute_seconds:.1f} ms = {100 * plan.recompute_seconds / plan.forward_seconds:.1f}%"
            " of the est. forward")
        print(f"budget {b:.0%}: recompute {len(plan.recompute)} nodes, +{100 * plan.recompute_overhead:.1f}% FLOPs{est}; "
              f"vs original over {pairs} pairs: wall {_fmt(wall)}, CPU time {_fmt(cpu)}")


def main(argv=None) -> None:
    from fxckpt.demo import gpt2

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=("gpt2", "encoder", "both", *ZOO), default="both",
                    help="gpt2 and encoder, or one model of fxckpt.benchmark.zoo")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time is one thread's work)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model in ("encoder", "both"):
        model, x = encoder()
        report("TransformerEncoder 4 x d128, batch 8 x 128", model, x, args.budgets, args.pairs)
    if args.model in ZOO:
        model, example = ZOO[args.model].build()
        report(ZOO[args.model].description, model, example, args.budgets, args.pairs)
    if args.model in ("gpt2", "both"):
        model, example = gpt2(12, 768, 12, 2, 256, 50257)
        report("GPT-2 small, batch 2 x 256", model, example, args.budgets, args.pairs)


if __name__ == "__main__":
    main()
