"""Where `auto_checkpoint`'s planning time goes, per stage, on GPT-2 small or another zoo model.

    python benchmarks/planning.py [--runs 3] [--budget 0.5] [--layers 12] [--model gpt2-small]

Stages, timed around the functions `fxckpt.api` calls (nothing re-implemented here): calibration
(`fxckpt.calibrate.measure_rates`, the one-time micro-benchmark, run fresh), capture
(torch.export), annotate (a fake training step), to_problem, solve, rewrite and the dry run (a
fake step of the rewritten graph). Printed per stage: the median over `--runs` plannings of
wall seconds and of this process's CPU seconds (steadier than wall on a shared machine; fake
tensors run in one thread), and the smallest CPU seconds (steadiest under others' load).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

import fxckpt
import fxckpt.api as api
from fxckpt import calibrate, passes
from fxckpt.benchmark.zoo import ZOO, gpt2

_STAGES = ((passes, "capture"), (passes, "annotate"), (passes, "to_problem"), (api, "solve"), (passes, "rewrite"),
           (api, "dry_run_peak"))


def _timed(fn, name: str, spent: dict):
    def wrapper(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return wrapper


def plan_stages(model, example, budget: float) -> tuple[dict[str, tuple[float, float]], fxckpt.Plan]:
    """(wall, CPU) seconds of each stage of one `auto_checkpoint` call, and its plan."""
    spent: dict[str, list] = defaultdict(list)
    originals = [(where, name, getattr(where, name)) for where, name in _STAGES]
    for where, name, fn in originals:
        setattr(where, name, _timed(fn, name, spent))
    try:
        total = _timed(fxckpt.auto_checkpoint, "total", spent)
        plan = total(model, example, budget=budget).plan
    finally:
        for where, name, fn in originals:
            setattr(where, name, fn)
    return {k: (sum(w for w, _ in v), sum(c for _, c in v)) for k, v in spent.items()}, plan


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--layers", type=int, default=12, help="GPT-2 small's layers (gpt2-small only)")
    ap.add_argument("--model", default="gpt2-small", choices=sorted(ZOO))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.model == "gpt2-small":
        model, example = gpt2(args.layers, 768, 12, 2, 256, 50257)
        title = f"GPT-2 small ({args.layers} layers, batch 2 x 256)"
    else:
        model, example = ZOO[args.model].build()
        title = args.model
    t0, c0 = time.perf_counter(), time.process_time()
    rates = calibrate.measure_rates("cpu")
    calibration = (time.perf_counter() - t0, time.process_time() - c0)
    calibrate.set_device_rates(rates)  # planning below uses these, not a cached file
    runs = [plan_stages(model, example, args.budget) for _ in range(args.runs)]
    stages, plan = [name for _, name in _STAGES] + ["total"], runs[-1][1]
    print(f"{title}, budget {args.budget:.0%}, median of {args.runs} "
          f"plannings; {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'stage':14}{'wall s':>9}{'CPU s':>9}{'min CPU s':>11}")
    print(f"{'calibration':14}{calibration[0]:>9.2f}{calibration[1]:>9.2f}  (once per device, then cached)")
    for s in stages:
        wall = statistics.median(r[0].get(s, (0, 0))[0] for r in runs)
        cpu = [r[0].get(s, (0, 0))[1] for r in runs]
        print(f"{s:14}{wall:>9.2f}{statistics.median(cpu):>9.2f}{min(cpu):>11.2f}")
    print(plan.summary())


if __name__ == "__main__":
    main()
