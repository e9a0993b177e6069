"""The plan's predicted peak against the allocator's, per model and budget (issue 9, item 3).

The promise users check is the allocator's peak: on CPU the profiler's allocation events
(`fxckpt.measure.profiled_memory`), which see op-internal scratch (convolution workspaces) and
the runtime's own tensors (RNG states) that live-storage accounting does not. Each step holds
its output until backward ends and starts with every ``.grad`` allocated, as `measure_step` does.

    python benchmarks/allocator.py                          # the benchmark zoo and the test zoo
    python benchmarks/allocator.py --models resnet50 unet --budgets 0.7 0.5 floor
    python benchmarks/allocator.py --without-scratch   # plans that do not charge ops' scratch (as before)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import fxckpt  # noqa: E402
from fxckpt.benchmark.zoo import ZOO as BENCH_ZOO  # noqa: E402
from fxckpt.measure import allocator_step_peak  # noqa: E402
from fxckpt.passes import fake_step  # noqa: E402
from tests.models import ZOO as TEST_ZOO  # noqa: E402

MiB = 2**20


def builders() -> dict:
    found = {name: zoo.build for name, zoo in BENCH_ZOO.items()}
    found.update({f"t:{name}": make for name, make in TEST_ZOO.items()})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="names (test-zoo models as t:NAME); default: all")
    parser.add_argument("--budgets", nargs="*", default=["0.7", "0.5", "floor"])
    parser.add_argument("--without-scratch", action="store_true", help="plan without charging any op's scratch")
    args = parser.parse_args()
    if args.without_scratch:
        fake_step.SCRATCH_OPS = frozenset()
    found = builders()
    names = args.models or list(found)
    print(f"{'model':>14} {'budget':>6} {'budget MiB':>10} {'predicted':>10} {'allocator':>10} {'pred err':>8} "
          f"{'over budget':>11}  peak op")
    for name in names:
        try:
            model, example = found[name]()
        except ImportError as e:
            print(f"{name:>14} skipped: {e}")
            continue
        threads = getattr(BENCH_ZOO.get(name), "threads", None)
        if threads:
            torch.set_num_threads(threads)
        for label in args.budgets:
            m, ex = copy.deepcopy(model), copy.deepcopy(example)
            try:
                if label == "floor":
                    ckpt = fxckpt.auto_checkpoint(m, ex, budget_mb=fxckpt.min_feasible_budget(m, ex) / MiB)
                else:
                    ckpt = fxckpt.auto_checkpoint(m, ex, budget=float(label))
            except fxckpt.InfeasibleBudgetError as e:
                print(f"{name:>14} {label:>6} infeasible (floor {e.min_feasible_bytes / MiB:.3f} MiB)", flush=True)
                continue
            plan = ckpt.plan
            predicted = max(plan.predicted_peak_bytes, plan.dry_run_peak_bytes or 0)
            measured = allocator_step_peak(ckpt, ex)
            peak, op = measured.peak_bytes, measured.peak_op
            print(f"{name:>14} {label:>6} {plan.budget_bytes / MiB:>10.3f} {predicted / MiB:>10.3f} "
                  f"{peak / MiB:>10.3f} {100 * (predicted - peak) / peak:>+7.2f}% "
                  f"{max(0, peak - plan.budget_bytes) / MiB:>10.3f}M  {op}", flush=True)


if __name__ == "__main__":
    main()
