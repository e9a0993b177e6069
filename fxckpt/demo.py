"""`python -m fxckpt.demo`: auto_checkpoint on GPT-2 small (random weights) at half its activation peak.

Prints the plan summary, then measured activation peak and step time without and with the plan,
and the largest gradient difference between the two.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import fxckpt
from fxckpt.benchmark.zoo import gpt2
from fxckpt.core.errors import MIB
from fxckpt.measure import measure_step, step_loss


def grads_after_step(model, example, seed: int = 0):
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    step_loss(model(**example)).backward()
    return [p.grad for p in model.parameters()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--budget", type=float, default=0.5, help="fraction of the un-checkpointed activation peak")
    ap.add_argument("--solver", default="auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model, example = gpt2(args.layers, args.hidden, args.heads, args.batch, args.seq, args.vocab)
    reference = copy.deepcopy(model)
    t0 = time.perf_counter()
    ckpt = fxckpt.auto_checkpoint(model, example, budget=args.budget, solver=args.solver)
    print(f"planned in {time.perf_counter() - t0:.1f} s (capture + annotate + solve + rewrite)")
    print(ckpt.plan.summary())

    base = measure_step(reference, example)
    mine = measure_step(ckpt, example)
    diff = max((a - b).abs().max().item() for a, b in zip(grads_after_step(reference, example),
                                                          grads_after_step(ckpt, example)))
    pred = ckpt.plan.predicted_peak_bytes
    print(f"{'':16}{'peak MiB':>10}{'step s':>9}{'FLOPs':>12}")
    print(f"{'no checkpoint':16}{base.peak_bytes / MIB:>10.1f}{base.seconds:>9.2f}{base.flops:>12.3g}")
    print(f"{'fxckpt':16}{mine.peak_bytes / MIB:>10.1f}{mine.seconds:>9.2f}{mine.flops:>12.3g}")
    print(f"budget {ckpt.plan.budget_bytes / MIB:.1f} MiB; predicted {pred / MIB:.1f} MiB, measured "
          f"{mine.peak_bytes / MIB:.1f} MiB ({100 * (pred - mine.peak_bytes) / mine.peak_bytes:+.1f}%); "
          f"FLOPs +{100 * (mine.flops / base.flops - 1):.1f}%, time +{100 * (mine.seconds / base.seconds - 1):.1f}%")
    print(f"largest gradient difference: {diff:.3g}")


if __name__ == "__main__":
    main()
