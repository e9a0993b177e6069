"""Predicted against measured activation peak on the test zoo, at 100%, 50%, 25% of each
model's un-checkpointed peak and at the smallest feasible budget.

    python benchmarks/prediction.py
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxckpt  # noqa: E402
from fxckpt.measure import measure_step  # noqa: E402
from tests.models import ZOO  # noqa: E402

MiB = 2**20


def main() -> None:
    print(f"{'model':>14} {'budget':>8} {'budget MiB':>10} {'predicted':>10} {'dry run':>10} {'measured':>10} {'error':>7}")
    worst = 0.0
    for name, make in ZOO.items():
        model, example = make()
        for label in ("100%", "50%", "25%", "min"):
            m, ex = copy.deepcopy(model), copy.deepcopy(example)
            try:
                if label == "min":
                    ckpt = fxckpt.auto_checkpoint(m, ex, budget_mb=fxckpt.min_feasible_budget(m, ex) / MiB)
                else:
                    ckpt = fxckpt.auto_checkpoint(m, ex, budget=float(label[:-1]) / 100)
            except fxckpt.InfeasibleBudgetError as e:
                print(f"{name:>14} {label:>8} infeasible (smallest feasible {e.min_feasible_bytes / MiB:.3f} MiB)")
                continue
            p = ckpt.plan
            measured = measure_step(ckpt, ex, warmup=False).peak_bytes
            err = (p.predicted_peak_bytes - measured) / measured
            worst = max(worst, abs(err))
            print(f"{name:>14} {label:>8} {p.budget_bytes / MiB:>10.3f} {p.predicted_peak_bytes / MiB:>10.3f} "
                  f"{p.dry_run_peak_bytes / MiB:>10.3f} {measured / MiB:>10.3f} {100 * err:>+6.3f}%")
    print(f"largest prediction error: {100 * worst:.3f}%")


if __name__ == "__main__":
    main()
