"""The largest batch of GPT-2 small (seq 256, fp32) whose training step fits a budget, found
by planning on fake tensors, then verified by measuring real steps at that batch.

    python benchmarks/max_batch.py [--budget-mb 1024] [--seq 256]
"""

from __future__ import annotations

import argparse
import time

import fxckpt
from fxckpt.batch import with_batch
from fxckpt.benchmark.zoo import gpt2
from fxckpt.measure import measure_step

MiB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-mb", type=float, default=1024)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args()
    model, example = gpt2(args.layers, 768, 12, 1, args.seq, 50257)
    t0 = time.perf_counter()
    batch, ckpt = fxckpt.max_batch_size(model, example, budget_mb=args.budget_mb)
    print(f"largest batch under {args.budget_mb:.0f} MiB: {batch} (search {time.perf_counter() - t0:.0f} s)")
    print(ckpt.plan.summary())
    measured = measure_step(ckpt, with_batch(example, batch), warmup=False).peak_bytes
    print(f"measured at batch {batch}: {measured / MiB:.1f} MiB (budget {args.budget_mb:.0f})")
    try:
        fxckpt.auto_checkpoint(model, with_batch(example, batch + 1), budget_mb=args.budget_mb)
        print(f"batch {batch + 1}: a plan exists (unexpected)")
    except fxckpt.InfeasibleBudgetError as e:
        print(f"batch {batch + 1}: no plan ({e})")
    plain = fxckpt.max_batch_size(model, example, budget_mb=args.budget_mb, solver="none")[0]
    print(f"without recomputation the largest batch is {plain}")


if __name__ == "__main__":
    main()
