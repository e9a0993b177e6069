"""Solvers against the ILP optimum, and solve time from 100 to 10k nodes and on real graphs.

    python benchmarks/solvers.py                    # both parts
    python benchmarks/solvers.py --gaps-only --seeds 3
    python benchmarks/solvers.py --times-only --sizes 100 1000 10000 --gpt2 --blocks48
    python benchmarks/solvers.py --gap              # zoo models at 70/50/30%: cost, proven lower bound, gap
    python benchmarks/solvers.py --gap --fracs 0.5  # only at 50%
    python benchmarks/solvers.py --gap --auto-only  # auto alone: its cost, its own bound, CPU and wall s
    python benchmarks/solvers.py --gap --tight --seconds 600  # the bound's tight models too

Cost is recompute FLOPs (the simulator's; --gap: estimated seconds). Budgets are fractions of each graph's
un-checkpointed peak. The ILP is run with a 60 s limit; a gap is counted against its answer
only where it proved optimality.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from fxckpt.core.errors import InfeasibleBudgetError, SolverError
from fxckpt.core.simulate import simulate
from fxckpt.core.solvers import SOLVERS, solve
from fxckpt.core.solvers.ilp import LIMIT as ILP_LIMIT
from fxckpt.core.solvers.ilp import solve_ilp
from fxckpt.core.solvers.registry import recompute_of
from fxckpt.core.synthetic import SHAPES, random_problem

HEURISTICS = [m for m in ("greedy", "mincut", "chain_dp", "block_dp", "auto") if m in SOLVERS]


def run(problem, budget, method):
    t0 = time.perf_counter()
    try:
        plan = solve(problem, budget, method)
        return time.perf_counter() - t0, plan.recompute_flops
    except (InfeasibleBudgetError, SolverError):
        return time.perf_counter() - t0, None


def gaps(sizes, seeds: int, fracs=(0.9, 0.75, 0.6, 0.45)) -> None:
    rows = {m: [] for m in HEURISTICS}
    misses = {m: 0 for m in HEURISTICS}
    secs = {m: [] for m in HEURISTICS}
    ilp_secs, proven, infeasible, unproven = [], 0, 0, 0
    for n in sizes:
        for shape in SHAPES:
            for seed in range(seeds):
                p = random_problem(n, shape, seed)
                base = simulate(p).peak_bytes
                for frac in fracs:
                    b = int(frac * base)
                    t0 = time.perf_counter()
                    got = solve_ilp(p, b, seconds=60)
                    ilp_secs.append(time.perf_counter() - t0)
                    if got.lower_bound is None:
                        infeasible += 1
                        continue
                    cost = simulate(p, got.recompute)
                    if cost.peak_bytes > b:
                        unproven += 1
                        continue
                    opt = cost.recompute_flops
                    if got.lower_bound < opt * (1 - 1e-4):
                        unproven += 1
                        continue
                    proven += 1
                    for m in HEURISTICS:
                        s, c = run(p, b, m)
                        secs[m].append(s)
                        if c is None:
                            misses[m] += 1
                        else:
                            rows[m].append((c - opt) / max(1, opt))
        print(f"  ... {n} nodes done", flush=True)
    print(f"\nagainst the ILP optimum: random graphs of {sizes} nodes, shapes {SHAPES}, {seeds} seeds, budgets {fracs}")
    print(f"ILP: {proven} proven optimal, {infeasible} proven infeasible, {unproven} not proven in 60 s; "
          f"time median {statistics.median(ilp_secs):.2f} s, max {max(ilp_secs):.1f} s")
    print(f"{'solver':>9} {'within 2%':>10} {'exact':>7} {'median gap':>11} {'worst':>8} {'no plan':>8} {'median s':>9} {'max s':>7}")
    for m in HEURISTICS:
        g = rows[m]
        print(f"{m:>9} {100 * sum(x <= 0.02 for x in g) / proven:9.1f}% {100 * sum(x <= 1e-9 for x in g) / proven:6.1f}% "
              f"{100 * statistics.median(g) if g else float('nan'):10.1f}% {100 * max(g, default=0):7.0f}% {misses[m]:8d} "
              f"{statistics.median(secs[m]):9.3f} {max(secs[m]):7.2f}")


def times(sizes, gpt2: bool, blocks48: bool, frac: float = 0.6) -> None:
    problems = [(f"random skip {n}", random_problem(n, "skip", 0)) for n in sizes]
    if gpt2 or blocks48:
        from fxckpt import passes
        from fxckpt.benchmark.zoo import gpt2 as make
        if gpt2:
            model, example = make(12, 768, 12, 2, 256, 50257)
            problems.append(("GPT-2 small", passes.to_problem(passes.annotate(passes.capture(model, example)))))
        if blocks48:
            model, example = make(48, 256, 4, 2, 128, 1000)
            problems.append(("48-block GPT", passes.to_problem(passes.annotate(passes.capture(model, example)))))
    print(f"\nsolve time at {frac:.0%} of the un-checkpointed peak")
    print(f"{'graph':>16} {'nodes':>6} {'solver':>9} {'seconds':>8} {'recompute FLOPs':>16} {'vs ILP':>8}")
    for name, p in problems:
        b = int(frac * simulate(p).peak_bytes)
        opt = None
        if len(p.nodes) <= ILP_LIMIT:
            t0 = time.perf_counter()
            got = solve_ilp(p, b, seconds=60)
            s = time.perf_counter() - t0
            if got.lower_bound is not None:
                c = simulate(p, got.recompute).recompute_flops
                opt = c if got.lower_bound >= c * (1 - 1e-4) else None
                print(f"{name:>16} {len(p.nodes):>6} {'ilp':>9} {s:8.2f} {c:16.4g} "
                      f"{'optimal' if opt is not None else f'lb {got.lower_bound:.4g}':>8}")
        for m in ["sqrt", *HEURISTICS]:
            s, c = run(p, b, m)
            rel = "" if c is None or opt is None else f"{100 * (c - opt) / max(1, opt):+.1f}%"
            print(f"{name:>16} {len(p.nodes):>6} {m:>9} {s:8.2f} {'no plan' if c is None else f'{c:.4g}':>16} {rel:>8}",
                  flush=True)


def real_gaps(fracs=(0.7, 0.5, 0.3), seconds: float = 60, auto_only: bool = False, tight: bool = False) -> None:
    """Each solver's recompute cost and solve time on the zoo's captured models, priced in
    estimated seconds at the tests' pinned device rates (tests/conftest.py, so the table is the
    same on every machine), against the best proven lower bound (the `proven` solver's, HiGHS
    limited to `seconds`); gap = (cost - bound) / cost. With `auto_only`, `auto` alone, against
    the bound it reports itself (the LP's, weaker), with its CPU seconds (process time: what
    the solve costs on one quiet core; the machine's load inflates wall seconds). With `tight`,
    `proven` adds the model of values replayed before their step (`lower_bound`'s `tight`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fxckpt import passes
    from fxckpt.benchmark.zoo import ZOO, llama
    from fxckpt.core.solvers.ilp import solve_proven
    from tests.conftest import PINNED_RATES

    models = [("GPT-2 small", ZOO["gpt2-small"].build),
              ("Llama 8x512, vocab 2000", lambda: llama(8, 512, 1376, 8, 2, 256, 2000)),
              ("ResNet-50", ZOO["resnet50"].build),
              ("U-Net", ZOO["unet"].build)]
    if auto_only:
        print("recompute cost in estimated ms (pinned rates); lower bound: auto's own (the LP's)\n")
        print("| model | nodes | budget | auto cost (ms) | auto's bound (ms) | gap | CPU s | wall s |")
        print("|---|---|---|---|---|---|---|---|")
    else:
        print(f"recompute cost in estimated ms (pinned rates); lower bound: `proven` with HiGHS limited to {seconds:.0f} s\n")
        print("| model | nodes | budget | solver | cost (ms) | lower bound (ms) | gap | seconds |")
        print("|---|---|---|---|---|---|---|---|")
    for name, make in models:
        try:
            model, example = make()
        except ImportError as e:
            print(f"| {name} | | | | not run: {e} | | | |")
            continue
        p = passes.to_problem(passes.annotate(passes.capture(model, example)), rates=PINNED_RATES)
        base = simulate(p).peak_bytes
        for frac in fracs:
            b = int(frac * base)
            if auto_only:
                _auto_row(name, p, frac, b)
                continue
            t0 = time.perf_counter()
            proven = solve_proven(p, b, seconds=seconds, tight=tight)
            proven_s = time.perf_counter() - t0
            bound = proven.lower_bound
            rows = []
            for m in [*HEURISTICS, "proven"]:
                t0 = time.perf_counter()
                if m == "proven":
                    R, s = proven.recompute, proven_s
                else:
                    try:
                        R = solve(p, b, m)
                        R = p.indices(R.recompute)
                    except InfeasibleBudgetError as e:
                        R = e
                    except SolverError:
                        R = None
                    s = time.perf_counter() - t0
                sim = simulate(p, R) if isinstance(R, frozenset) else None
                if isinstance(R, InfeasibleBudgetError):
                    cost = f"infeasible (floor {100 * R.min_feasible_bytes / base:.0f}%)"
                elif sim is None or sim.peak_bytes > b:
                    cost = "no plan"
                else:
                    cost = sim.recompute_cost
                gap = f"{100 * (cost - bound) / cost:.1f}%" if isinstance(cost, int) and cost and bound is not None \
                    else ("0.0%" if cost == 0 else "")
                rows.append((m, cost if not isinstance(cost, int) else f"{cost / 1e6:.2f}",
                             "" if bound is None or not isinstance(cost, int) else f"{bound / 1e6:.2f}", gap, f"{s:.2f}"))
            for m, cost, lb, gap, s in rows:
                print(f"| {name} | {len(p.nodes)} | {frac:.0%} | {m} | {cost} | {lb} | {gap} | {s} |", flush=True)


def _auto_row(name: str, p, frac: float, b: int) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    got = SOLVERS["auto"](p, b)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sim = simulate(p, recompute_of(got))
    bound = getattr(got, "lower_bound", None)
    if sim.peak_bytes > b:
        cost, lb, gap = "no plan", "", ""
    else:
        cost = f"{sim.recompute_cost / 1e6:.2f}"
        lb = "" if bound is None else f"{bound / 1e6:.2f}"
        gap = "" if bound is None or not sim.recompute_cost else f"{100 * (sim.recompute_cost - bound) / sim.recompute_cost:.1f}%"
    print(f"| {name} | {len(p.nodes)} | {frac:.0%} | {cost} | {lb} | {gap} | {cpu:.2f} | {wall:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 1000, 10000])
    ap.add_argument("--gap-sizes", type=int, nargs="*", default=[10, 20, 30, 45, 60])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gpt2", action="store_true", help="GPT-2 small's captured graph (needs transformers)")
    ap.add_argument("--blocks48", action="store_true", help="a 48-block GPT's captured graph (needs transformers)")
    ap.add_argument("--gaps-only", action="store_true")
    ap.add_argument("--times-only", action="store_true")
    ap.add_argument("--gap", action="store_true", help="only the zoo models' table (needs transformers, diffusers for U-Net)")
    ap.add_argument("--seconds", type=float, default=60, help="HiGHS time limit of the lower bound (--gap)")
    ap.add_argument("--auto-only", action="store_true", help="--gap for auto alone, with its own bound and CPU s")
    ap.add_argument("--tight", action="store_true", help="--gap: the bound's tight models too (minutes of CPU to pay)")
    ap.add_argument("--fracs", type=float, nargs="*", default=[0.7, 0.5, 0.3], help="budgets of --gap, as fractions")
    args = ap.parse_args()
    if args.gap:
        return real_gaps(tuple(args.fracs), seconds=args.seconds, auto_only=args.auto_only, tight=args.tight)
    if not args.times_only:
        gaps(args.gap_sizes, args.seeds)
    if not args.gaps_only:
        times(args.sizes, args.gpt2, args.blocks48)


if __name__ == "__main__":
    main()
