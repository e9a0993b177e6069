"""GPT-2 small (12 layers, 768 hidden, batch 2 x seq 256, fp32, random weights) under fxckpt budgets.

For no checkpointing and for 50%, 25% of the un-checkpointed activation peak and the smallest
feasible budget: predicted and measured activation peak, recompute FLOPs overhead, wall-time
overhead, solve time, largest gradient difference against the unmodified model.

    python benchmarks/gpt2_small.py [--layers 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy

import torch

import fxckpt
from fxckpt.benchmark.zoo import gpt2
from fxckpt.demo import grads_after_step
from fxckpt.core.errors import InfeasibleBudgetError
from fxckpt.measure import measure_step

MiB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, example = gpt2(args.layers, 768, 12, args.batch, args.seq, 50257)
    reference = copy.deepcopy(model)
    ref_grads = grads_after_step(reference, example)
    base = measure_step(reference, example, repeats=args.repeats)
    print(f"GPT-2 small, {args.layers} layers, batch {args.batch} x seq {args.seq}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'budget':>14} {'budget MiB':>10} {'pred MiB':>9} {'meas MiB':>9} {'err %':>6} {'FLOPs +%':>8} "
          f"{'time +%':>8} {'solve s':>8} {'plan s':>7} {'max |dgrad|':>11}")
    print(f"{'none (eager)':>14} {'':>10} {'':>9} {base.peak_bytes / MiB:>9.1f} {'':>6} {0:>8.1f} {0:>8.1f} "
          f"{'':>8} {'':>7} {0:>11.3g}")
    specs = [("fxckpt 100%", dict(budget=1.0)), ("fxckpt 50%", dict(budget=0.5)), ("fxckpt 25%", dict(budget=0.25)),
             ("smallest", None)]
    for label, spec in specs:
        m = copy.deepcopy(reference)
        import time
        t0 = time.perf_counter()
        if spec is None:
            spec = dict(budget_mb=fxckpt.min_feasible_budget(m, example) / MiB)
            t0 = time.perf_counter()
        try:
            ckpt = fxckpt.auto_checkpoint(m, example, **spec)
        except InfeasibleBudgetError as e:
            print(f"{label:>14} infeasible: smallest feasible {e.min_feasible_bytes / MiB:.1f} MiB")
            continue
        plan_s = time.perf_counter() - t0
        meas = measure_step(ckpt, example, repeats=args.repeats)
        grads = grads_after_step(ckpt, example)
        diff = max((a - b).abs().max().item() for a, b in zip(ref_grads, grads))
        p = ckpt.plan
        print(f"{label:>14} {p.budget_bytes / MiB:>10.1f} {p.predicted_peak_bytes / MiB:>9.1f} {meas.peak_bytes / MiB:>9.1f} "
              f"{100 * (p.predicted_peak_bytes - meas.peak_bytes) / meas.peak_bytes:>+6.1f} "
              f"{100 * (meas.flops / base.flops - 1):>8.1f} {100 * (meas.seconds / base.seconds - 1):>8.1f} "
              f"{p.solve_seconds:>8.2f} {plan_s:>7.1f} {diff:>11.3g}")


if __name__ == "__main__":
    main()
