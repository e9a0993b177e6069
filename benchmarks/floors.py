"""fxckpt's smallest feasible budget against every eager anchor's measured peak (issue 9, item 4).

Each anchor (Hugging Face per-layer gradient checkpointing, √n segments, every block checkpointed)
is measured as `fxckpt.benchmark.compare_strategies` measures it: the allocator's peak of one
step. fxckpt's floor is `min_feasible_budget`, and "fxckpt min" measures the plan made at it.

    python benchmarks/floors.py --models llama quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fxckpt.benchmark import ZOO, compare_strategies  # noqa: E402

ANCHORS = ("hf per-layer", "sqrt segments", "every-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(ZOO))
    args = parser.parse_args()
    print(f"{'model':>10} {'none':>9} " + " ".join(f"{a:>14}" for a in ANCHORS)
          + f" {'fxckpt floor':>12} {'fxckpt min':>10} {'lowest anchor':>14}  (MiB, allocator)")
    for name in args.models:
        threads = ZOO[name].threads
        if threads:
            torch.set_num_threads(threads)
        rows = {r.strategy: r for r in compare_strategies(name, strategies=["none", *ANCHORS, "fxckpt min"],
                                                          iterations=1, live_check=())}
        peak = lambda s: rows[s].peak_mib if s in rows and rows[s].peak_mib is not None else float("nan")  # noqa: E731
        fx = rows.get("fxckpt min")
        floor = fx.budget_mib if fx is not None and fx.budget_mib is not None else float("nan")
        lowest = min((peak(a), a) for a in ANCHORS if peak(a) == peak(a))
        print(f"{name:>10} {peak('none'):>9.2f} " + " ".join(f"{peak(a):>14.2f}" for a in ANCHORS)
              + f" {floor:>12.2f} {peak('fxckpt min'):>10.2f} {lowest[0]:>8.2f} ({lowest[1]})", flush=True)


if __name__ == "__main__":
    main()
