"""Solve time and cost of every solver on random graphs and on GPT-2 small's graph.

    python benchmarks/solvers.py [--sizes 100 1000] [--gpt2]

Cost is recompute FLOPs; on graphs small enough for the exhaustive search it is also shown
relative to that exact optimum. Budgets are fractions of each graph's un-checkpointed peak.
"""

from __future__ import annotations

import argparse
import statistics
import time

from fxckpt.errors import InfeasibleBudgetError, SolverError
from fxckpt.simulate import simulate
from fxckpt.solvers import solve
from fxckpt.synthetic import SHAPES, random_problem


def run(problem, budget, method):
    t0 = time.perf_counter()
    try:
        plan = solve(problem, budget, method)
        return time.perf_counter() - t0, plan.recompute_flops, "ok"
    except (InfeasibleBudgetError, SolverError) as e:
        return time.perf_counter() - t0, None, type(e).__name__


def gaps(n_instances: int) -> None:
    rows = {m: [] for m in ("greedy", "auto")}
    misses = {m: 0 for m in rows}
    count = 0
    for seed in range(n_instances):
        for shape in SHAPES:
            p = random_problem(14, shape, seed)
            if len(p.candidates()) > 12:
                continue
            base = simulate(p).peak_bytes
            for frac in (0.9, 0.75, 0.6, 0.45):
                b = int(frac * base)
                _, exact, status = run(p, b, "exhaustive")
                if exact is None:
                    continue
                count += 1
                for m in rows:
                    _, cost, _ = run(p, b, m)
                    if cost is None:
                        misses[m] += 1
                    else:
                        rows[m].append((cost - exact) / max(1, exact))
    print(f"\nagainst the exhaustive optimum, {count} feasible instances (14-node random graphs, <= 12 candidates):")
    for m, g in rows.items():
        print(f"  {m:7} within 2%: {100 * sum(x <= 0.02 for x in g) / count:5.1f}%  median gap {100 * statistics.median(g):.1f}%"
              f"  worst {100 * max(g):.0f}%  no plan found: {misses[m]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--gpt2", action="store_true", help="also GPT-2 small's captured graph (needs transformers)")
    ap.add_argument("--instances", type=int, default=25)
    args = ap.parse_args()
    problems = [(f"random skip {n}", random_problem(n, "skip", 0)) for n in args.sizes]
    if args.gpt2:
        from fxckpt import passes
        from fxckpt.demo import gpt2
        model, example = gpt2(12, 768, 12, 2, 256, 50257)
        gm = passes.annotate(passes.capture(model, example))
        problems.append(("GPT-2 small", passes.to_problem(gm)))
    print(f"{'graph':>16} {'nodes':>6} {'budget':>6} {'solver':>8} {'seconds':>8} {'recompute FLOPs':>16} status")
    for name, p in problems:
        base = simulate(p).peak_bytes
        for frac in (0.6,):
            for method in ("sqrt", "greedy", "auto"):
                secs, cost, status = run(p, int(frac * base), method)
                print(f"{name:>16} {len(p.nodes):>6} {frac:>6.2f} {method:>8} {secs:>8.2f} "
                      f"{'' if cost is None else f'{cost:.3g}':>16} {status}")
    gaps(args.instances)


if __name__ == "__main__":
    main()
