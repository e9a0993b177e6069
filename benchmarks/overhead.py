"""Wall overhead of the eager runtime, as paired step-time ratios against the original module.

    python benchmarks/overhead.py [--model gpt2|encoder|both] [--pairs 7] [--budget 0.5]

Per model: (1) the captured graph with nothing recomputed (`budget=1.0`), which measures what the
machinery costs by itself; (2) a plan at `--budget`, beside its estimated recompute seconds over
the estimated forward (`Plan.recompute_seconds`). Each pair runs one original step and one
checkpointed step back to back (order alternating) and records their ratio; printed: median
and [smallest, largest] of the ratios minus one. The machine may be shared: read the ranges.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fxckpt
from fxckpt.measure import step_loss


def _step(model, args, kwargs) -> float:
    for p in model.parameters():
        p.grad = None
    t0 = time.perf_counter()
    step_loss(model(*args, **kwargs)).backward()
    return time.perf_counter() - t0


def paired(model, ckpt, args, kwargs, pairs: int) -> list[float]:
    _step(model, args, kwargs), _step(ckpt, args, kwargs)  # warm-up
    ratios = []
    for i in range(pairs):
        if i % 2:
            mine, base = _step(ckpt, args, kwargs), _step(model, args, kwargs)
        else:
            base, mine = _step(model, args, kwargs), _step(ckpt, args, kwargs)
        ratios.append(mine / base)
    return ratios


def _fmt(ratios) -> str:
    pct = sorted(100 * (r - 1) for r in ratios)
    return f"{statistics.median(pct):+.1f}% [{pct[0]:+.1f}, {pct[-1]:+.1f}]"


def report(name, model, example, budget: float, pairs: int) -> None:
    args, kwargs = ((), example) if isinstance(example, dict) else ((example,), {})
    print(f"\n== {name}")
    for b in (1.0, budget):
        ckpt = fxckpt.auto_checkpoint(model, example, budget=b)
        plan = ckpt.plan
        ratios = paired(model, ckpt, args, kwargs, pairs)
        est = "" if plan.recompute_seconds is None else (
            f", est. recompute {1e3 * plan.recompute_seconds:.1f} ms = {100 * plan.recompute_seconds / plan.forward_seconds:.1f}%"
            " of the est. forward")
        print(f"budget {b:.0%}: recompute {len(plan.recompute)} nodes, +{100 * plan.recompute_overhead:.1f}% FLOPs{est}; "
              f"wall vs original {_fmt(ratios)} over {pairs} pairs")


def main(argv=None) -> None:
    from estimator import encoder  # noqa: the sibling benchmark's model

    from fxckpt.demo import gpt2

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=("gpt2", "encoder", "both"), default="both")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--budget", type=float, default=0.5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.model in ("encoder", "both"):
        model, x = encoder()
        report("TransformerEncoder 4 x d128, batch 8 x 128", model, x, args.budget, args.pairs)
    if args.model in ("gpt2", "both"):
        model, example = gpt2(12, 768, 12, 2, 256, 50257)
        report("GPT-2 small, batch 2 x 256", model, example, args.budget, args.pairs)


if __name__ == "__main__":
    main()
