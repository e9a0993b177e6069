"""Plans of zoo models at fixed rates, dumped to JSON, to see what a change of the time estimate moves.

    python benchmarks/zoo_plans.py OUT.json [--kinds KINDS.json] [--models quick resnet50 gpt2-small] [--budget 0.5]

Rates are fixed (not measured): 1e11 FLOP/s, 1.8e10 B/s, 2.5 us per op, 14 us per replayed node,
1.2e8 random draws/s, and the rated kinds' bytes per second from `--kinds` (a JSON object, e.g.
{"batch_norm": 3.7e9, "max_pool2d": 5.6e8}). Per model: the plan's recomputed nodes, its peak, its
estimated recompute seconds and every node's estimated seconds and op. Compare two dumps with
`--compare BEFORE.json AFTER.json`.
"""

from __future__ import annotations

import argparse
import collections
import json

import fxckpt
from fxckpt import passes
from fxckpt.benchmark.zoo import ZOO
from fxckpt.core.timing import DeviceRates

RATES = dict(device="fixed", flops_per_second=1e11, bytes_per_second=1.8e10, op_overhead_seconds=2.5e-6,
             node_overhead_seconds=1.4e-5, random_per_second=1.2e8)


def plans(models, budget: float, kinds: dict) -> dict:
    rates = DeviceRates(**RATES, **({"kind_bytes_per_second": kinds} if kinds else {}))
    out = {}
    for name in models:
        model, example = ZOO[name].build()
        problem = passes.to_problem(passes.annotate(passes.capture(model, example if isinstance(example, dict) else (example,))),
                                    rates=rates)
        plan = fxckpt.solve(problem, int(budget * fxckpt.simulate(problem).peak_bytes))
        sim = fxckpt.simulate(problem, problem.indices(plan.recompute))
        seconds = {n.name: n.seconds for n in problem.nodes}
        out[name] = {"recompute": sorted(plan.recompute), "recomputed": list(sim.recomputed), "peak": sim.peak_bytes,
                     "est_recompute_s": sum(seconds[n] for n in sim.recomputed), "seconds": seconds,
                     "ops": {n.name: n.op for n in problem.nodes}}
        print(f"{name}: {len(plan.recompute)} nodes recomputed, peak {sim.peak_bytes:,} B, "
              f"est. {out[name]['est_recompute_s']:.4f} s", flush=True)
    return out


def _kind(op: str) -> str:
    return op.removeprefix("aten.").split(".")[0]


def compare(before: dict, after: dict) -> None:
    for name in before.keys() & after.keys():
        a, b = before[name], after[name]
        old_at_new = sum(b["seconds"][n] for n in a["recomputed"])
        print(f"== {name}: {len(a['recompute'])} -> {len(b['recompute'])} nodes, peak {a['peak']:,} -> {b['peak']:,} B, "
              f"est. {a['est_recompute_s']:.4f} -> {b['est_recompute_s']:.4f} s (before's plan at the new prices: "
              f"{old_at_new:.4f} s)")
        for label, plan in (("before", a), ("after", b)):
            print(f"   replays per kind {label}:", dict(collections.Counter(_kind(plan["ops"][n]) for n in plan["recomputed"])))
        ratios = collections.defaultdict(list)
        for n, s in a["seconds"].items():
            if s and b["seconds"].get(n):
                ratios[_kind(a["ops"][n])].append(b["seconds"][n] / s)
        print("   new / old price, median per kind:",
              {k: round(sorted(v)[len(v) // 2], 2) for k, v in ratios.items() if abs(sorted(v)[len(v) // 2] - 1) > 0.01})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?")
    ap.add_argument("--kinds", help="JSON file: rated kind -> bytes per second")
    ap.add_argument("--models", nargs="+", default=["quick", "resnet50", "gpt2-small"])
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args(argv)
    if args.compare:
        compare(*(json.load(open(f)) for f in args.compare))
        return
    if args.out is None:
        ap.error("give OUT.json (or --compare BEFORE AFTER)")
    kinds = json.load(open(args.kinds)) if args.kinds else {}
    with open(args.out, "w") as f:
        json.dump(plans(args.models, args.budget, kinds), f)


if __name__ == "__main__":
    main()
