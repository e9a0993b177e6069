"""The zoo sweep of issue 10: every zoo model at budgets 0.9 / 0.7 / 0.5 / 0.3 of its un-checkpointed
activation peak and at the floor, as a markdown table.

Each row: the outcome (`ok` = gradients of every parameter and input bitwise equal to the
unmodified model's, buffers equal, measured peak under the budget and not above the original's;
`infeasible` = a typed InfeasibleBudgetError whose named floor is above the budget; anything else
is a finding), the largest gradient difference, the budget, predicted, measured and original
peaks in MiB, and the error with whether it is right about its cause.

    python benchmarks/zoo_sweep.py                       # the whole zoo (tens of minutes on 2 cores)
    python benchmarks/zoo_sweep.py --models t5,rnn --budgets 0.5,floor
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fxckpt.core.errors import MIB  # noqa: E402
from tests.models import SWEEP_ZOO  # noqa: E402
from tests.sweep import BUDGETS, FLOOR, Outcome, run_case  # noqa: E402

COLUMNS = ("model", "budget", "outcome", "max grad diff", "buffers", "budget MiB", "predicted MiB",
           "measured MiB", "original MiB", "front-end", "error (right about its cause?)")


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / MIB:.3f}"


def row(o: Outcome) -> str:
    cause = {True: " (right)", False: " (WRONG)", None: ""}[o.cause_right]
    cells = (o.model, str(o.budget), o.status if o.ok else f"**{o.status}**",
             "" if o.grad_diff is None else f"{o.grad_diff:.3g}",
             "" if o.buffers_equal is None else ("equal" if o.buffers_equal else "**differ**"),
             _mib(o.budget_bytes), _mib(o.predicted_bytes), _mib(o.measured_bytes), _mib(o.original_bytes),
             o.frontend or "", ((o.error or "") + cause).replace("|", "/"))
    return "| " + " | ".join(cells) + " |"


def _budget(text: str) -> float | str:
    return text if text == FLOOR else float(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SWEEP_ZOO), help="comma-separated zoo names")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="fractions and/or 'floor'")
    args = parser.parse_args(argv)
    logging.disable(logging.ERROR)  # the table is the output; errors show in its rows
    warnings.simplefilter("ignore")
    names, budgets = args.models.split(","), [_budget(b) for b in args.budgets.split(",")]
    unknown = sorted(set(names) - set(SWEEP_ZOO))
    if unknown:
        parser.error(f"unknown models {unknown}; the zoo has {sorted(SWEEP_ZOO)}")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    outcomes, t0 = [], time.perf_counter()
    for name in names:
        for budget in budgets:
            outcomes.append(run_case(name, budget))
            print(row(outcomes[-1]), flush=True)
    bad = [o for o in outcomes if not o.ok]
    print(f"\n{len(outcomes) - len(bad)} of {len(outcomes)} cases kept the promise "
          f"({time.perf_counter() - t0:.0f} s); findings: "
          + (", ".join(f"{o.model}@{o.budget} {o.status}" for o in bad) or "none"))


if __name__ == "__main__":
    main()
