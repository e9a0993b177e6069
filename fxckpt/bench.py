"""`python -m fxckpt.bench`: every checkpointing strategy on the benchmark zoo, written to disk.

    python -m fxckpt.bench [--quick] [--models gpt2-small llama ...] [--out benchmarks/results] [--iterations 3]

Runs `fxckpt.benchmark.compare_strategies` on each model (all strategies) and writes
``<out>/<YYYY-MM-DD>/`` (``<YYYY-MM-DD>-quick/`` with ``--quick``, so a smoke run never
overwrites a full one): ``results.md`` (the table, per-row notes, and where fxckpt is not ahead
of another strategy at equal memory, with the numbers that say why), ``results.json`` (every row
and the environment), and ``<model>.png`` per model (measured peak against recompute FLOPs
overhead; fxckpt's budgets as a connected curve). ``--quick`` runs only the tiny "quick" model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .benchmark import ZOO, compare_strategies, print_comparison_table, to_markdown

log = logging.getLogger(__name__)

FULL_ZOO = ("quick", "gpt2-small", "llama", "resnet50", "unet")
_PEAK_TOLERANCE = 0.005  # a peak within 0.5% of the anchor's counts as the same memory
_FLOPS_TOLERANCE = 0.05  # percentage points of FLOPs overhead
_MEASUREMENT = """\
How it was measured (`fxckpt.benchmark`; same method for every strategy of a model):

- **peak MiB**: activation peak of one training step (forward + backward of the model's loss), from
  `torch.profiler` memory events (every CPU-allocator allocation and free, so inductor-compiled code
  is seen too), with every `.grad` allocated beforehand so parameters, inputs and gradients are not
  counted. `LiveBytesMode` (fxckpt's dispatch-mode counter) cannot measure compiled modules: Dynamo
  runs eager code while a dispatch mode is active. It is run on the eager `none` and fxckpt rows as a
  cross-check (**LiveBytes MiB**); the `none` row's note gives the agreement. A second check, for
  compiled rows too: after a forward, the bytes the profiler sees still allocated must equal the
  distinct storages autograd saved for backward plus the outputs (the "profiler check" notes).
- **FLOPs +%**: `FlopCounterMode` FLOPs of the step (matmuls, convolutions and, added here, CPU flash
  attention; pointwise ops count 0) over `none`'s. Compiled rows count the same rules on the forward
  and backward graphs inductor compiles, each time one runs (so recomputation in the backward graph
  is included; code between graph breaks is not).
- **time +%**: median of the strategy's timed steps (after a warm-up) over the median of `none` steps
  timed in between them (each timed step is followed by one of `none` on its own copy, so load from
  other processes hits both alike). The machine had 2 cores shared with other work: treat
  differences of ~10% as noise.
- **solve/compile s**: fxckpt's solver seconds (the whole planning time is in the notes), or
  torch.compile's first step minus a normal step.
- **max |Δgrad|**: largest absolute difference of any parameter gradient from `none`'s, both steps
  seeded alike.
- **predicted MiB**: fxckpt's plan; fxckpt plans the peak that LiveBytesMode measures.
"""


def _plot(rows: Sequence[dict], path: Path, title: str) -> None:
    """Measured peak (x) vs recompute FLOPs overhead % (y): one labelled point per strategy,
    fxckpt's rows as a connected curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["peak_mib"] is not None and r["flops_overhead_pct"] is not None]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    fx = sorted((r for r in ok if r["strategy"].startswith("fxckpt")), key=lambda r: r["peak_mib"])
    if fx:
        ax.plot([r["peak_mib"] for r in fx], [r["flops_overhead_pct"] for r in fx], "-o", color="tab:red",
                label="fxckpt (budgets)", zorder=3)
    for r in ok:
        if r["strategy"].startswith("fxckpt"):
            continue
        marker, color = ("s", "tab:blue") if r["strategy"].startswith("compile") else ("D", "tab:green")
        if r["strategy"] == "none":
            marker, color = "*", "black"
        ax.scatter(r["peak_mib"], r["flops_overhead_pct"], marker=marker, color=color, s=70, zorder=4)
    for (x, y), names in _coincident(ok).items():
        ax.annotate(" / ".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7,
                    color="tab:red" if all(n.startswith("fxckpt") for n in names) else "black")
    ax.set_xlabel("measured activation peak (MiB)")
    ax.set_ylabel("recompute FLOPs overhead vs none (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="tab:red", marker="o", label="fxckpt (budgets, @ anchors)"),
               Line2D([], [], color="tab:green", marker="D", ls="", label="eager strategies"),
               Line2D([], [], color="tab:blue", marker="s", ls="", label="torch.compile"),
               Line2D([], [], color="black", marker="*", ls="", label="none")]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _coincident(rows: Sequence[dict]) -> dict[tuple[float, float], list[str]]:
    """Strategy names grouped by plotted point (peaks within 0.5%, FLOPs within 0.1 points): one
    label per point."""
    groups: dict[tuple[float, float], list[str]] = {}
    for r in sorted(rows, key=lambda r: r["peak_mib"]):
        x, y = r["peak_mib"], r["flops_overhead_pct"]
        key = next((k for k in groups if abs(k[0] - x) <= 0.005 * max(k[0], x) and abs(k[1] - y) <= 0.1), None)
        groups.setdefault(key or (x, y), []).append(r["strategy"])
    return groups


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:+.1f}{unit}"


def not_ahead(rows: Sequence[dict]) -> tuple[list[str], list[str]]:
    """For each "fxckpt @ X" row: findings where fxckpt is not ahead of X at X's memory (it cannot
    reach it, goes over it, recomputes more FLOPs, or takes longer), and the anchors it beats on
    both FLOPs and time."""
    by_name = {r["strategy"]: r for r in rows}
    findings, ahead = [], []
    for r in rows:
        if not r["strategy"].startswith("fxckpt @ "):
            continue
        x = r["strategy"][len("fxckpt @ "):]
        a = by_name.get(x)
        if a is None or a["status"] != "ok":
            continue
        compiled = x.startswith("compile")
        if r["status"] == "infeasible":
            findings.append(f"**{x}** ({a['peak_mib']:.1f} MiB): fxckpt cannot reach this memory; {r['notes']}. "
                            f"fxckpt's floor is set by what is live at its peak and cannot be recomputed away, "
                            f"which {x} lowers by other means" + (" (compiled code frees and fuses buffers "
                                                                 "that eager code keeps)" if compiled else "") + ".")
            continue
        if r["status"] != "ok":
            findings.append(f"**{x}**: fxckpt failed at this budget: {r['status']} {r['notes']}".rstrip() + ".")
            continue
        problems = []
        if r["peak_mib"] > a["peak_mib"] * (1 + _PEAK_TOLERANCE):
            why = (f"planned {r['predicted_mib']:.1f} MiB and LiveBytesMode measured {r['live_peak_mib']:.1f} MiB, "
                   f"so the excess is memory outside live tensor storages, which the profiler sees and fxckpt's "
                   f"model does not: scratch buffers inside ops, CPU RNG-state copies" if r.get("live_peak_mib") is not None and r.get("predicted_mib")
                   and r["live_peak_mib"] <= a["peak_mib"] * (1 + _PEAK_TOLERANCE)
                   else f"planned {r['predicted_mib']:.1f} MiB" if r.get("predicted_mib") else "")
            problems.append(f"measured peak {r['peak_mib']:.1f} MiB is above the {a['peak_mib']:.1f} MiB of {x}"
                            + (f" ({why})" if why else ""))
        more_flops = (r["flops_overhead_pct"] is not None and a["flops_overhead_pct"] is not None
                      and r["flops_overhead_pct"] > a["flops_overhead_pct"] + _FLOPS_TOLERANCE)
        if more_flops:
            problems.append(f"recomputes more: FLOPs {_fmt(r['flops_overhead_pct'], '%')} vs "
                            f"{_fmt(a['flops_overhead_pct'], '%')} for {x}"
                            + (" (inductor recomputes fused pointwise ops, which count 0 FLOPs)" if compiled else ""))
        slower = r["time_overhead_pct"] > a["time_overhead_pct"]
        if slower:
            cause = ("compiled, fused kernels against fxckpt's eager step" if compiled else
                     "with fewer or equal recompute FLOPs, so the difference is fxckpt's runtime overhead "
                     "(saved-tensor hooks and recipes) or noise" if not more_flops else "it recomputes more")
            problems.append(f"slower: time {_fmt(r['time_overhead_pct'], '%')} vs "
                            f"{_fmt(a['time_overhead_pct'], '%')} for {x} ({cause})")
        if problems:
            findings.append(f"**{x}** ({a['peak_mib']:.1f} MiB): " + "; ".join(problems) + ".")
        else:
            ahead.append(f"{x} (FLOPs {_fmt(r['flops_overhead_pct'], '%')} vs {_fmt(a['flops_overhead_pct'], '%')}, "
                         f"time {_fmt(r['time_overhead_pct'], '%')} vs {_fmt(a['time_overhead_pct'], '%')})")
    return findings, ahead


def _environment() -> dict:
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
           "machine": f"{platform.machine()}, {platform.system()}"}
    for name in ("transformers", "diffusers"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    return env


def _markdown(date: str, env: dict, results: dict, total_seconds: float, iterations: int) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k in ("torch", "transformers", "diffusers") and v)
    header = (f"CPU, {env['threads']} threads ({env['machine']}), fp32, {versions}; `python -m fxckpt.bench"
              f"{' --iterations ' + str(iterations) if iterations != 3 else ''}` "
              f"(models: {', '.join(results)}); {iterations} timed step(s) per strategy; "
              f"total run time {total_seconds / 60:.1f} min.\n")
    parts = [f"# Checkpointing strategies compared ({date})\n", header, _MEASUREMENT]
    for name, res in results.items():
        parts.append(f"## {name}\n\n{res['description']}. Run time {res['seconds']:.0f} s.\n\n"
                     + to_markdown(res["rows"]))
    parts.append("## Where fxckpt is not ahead at equal memory\n\n"
                 "Each `fxckpt @ X` row plans fxckpt at X's measured peak. Listed: the anchors where fxckpt "
                 "cannot reach X's memory, ends above it (by more than 0.5%), recomputes more FLOPs, or takes "
                 "longer.\n")
    for name, res in results.items():
        findings, ahead = not_ahead(res["rows"])
        if not any(r["strategy"].startswith("fxckpt @") for r in res["rows"]):
            parts.append(f"### {name}\n\nNo equal-memory rows (status: "
                         f"{', '.join(sorted({r['status'] for r in res['rows']}))}).\n")
            continue
        text = "\n".join(f"- {f}" for f in findings) if findings else "- none: fxckpt is ahead of every anchor."
        if ahead:
            text += "\n\nAhead (fewer or equal FLOPs and less time at the same memory): " + "; ".join(ahead) + "."
        parts.append(f"### {name}\n\n{text}\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the tiny 'quick' model (a smoke run)")
    ap.add_argument("--models", nargs="+", choices=list(ZOO), help=f"default: {' '.join(FULL_ZOO)}")
    ap.add_argument("--out", default="benchmarks/results", help="results folder (a dated subfolder is created)")
    ap.add_argument("--iterations", type=int, default=3, help="timed steps per strategy (median)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    models = args.models or (["quick"] if args.quick else list(FULL_ZOO))
    date = datetime.date.today().isoformat()
    out = Path(args.out) / (date + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)

    env = _environment()
    results: dict[str, dict] = {}
    t_start = time.perf_counter()
    for name in models:
        t0 = time.perf_counter()
        rows = compare_strategies(name, iterations=args.iterations)
        results[name] = {"description": ZOO[name].description, "seconds": time.perf_counter() - t0, "rows": rows}
        print(f"\n{name} ({results[name]['seconds']:.0f} s): {ZOO[name].description}")
        print_comparison_table(rows)
        if any(r["status"] == "ok" for r in rows):
            _plot(rows, out / f"{name}.png", f"{name}: activation peak vs recompute FLOPs")
    total = time.perf_counter() - t_start

    (out / "results.json").write_text(json.dumps(
        {"date": date, "environment": env, "iterations": args.iterations, "total_seconds": total, "models": results},
        indent=1, default=str) + "\n")
    (out / "results.md").write_text(_markdown(date, env, results, total, args.iterations))
    print(f"\nwrote {out}/results.md, results.json and {len(list(out.glob('*.png')))} PNG(s) in {total:.0f} s")


if __name__ == "__main__":
    main()
