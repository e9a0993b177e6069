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

from .benchmark import ZERO_GRADS, ZOO, StrategyResult, compare_strategies, print_comparison_table, to_markdown

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
- **time +% [range]**: median of the strategy's timed steps (after a warm-up) over the median of the
  `none` steps timed in between them (each timed step is followed by one of `none` on its own copy,
  so load from other processes hits both alike); in brackets the smallest and largest ratio of a
  step to the `none` step right after it. The machine had 2 cores shared with other work: two rows'
  times differ only where their ranges do not overlap.
- **solve/compile s**: fxckpt's solver seconds (the whole planning time is in the notes), or
  torch.compile's first step minus a normal step.
- **max |Δgrad|**: largest absolute difference of any parameter gradient from `none`'s, both steps
  seeded alike.
- **predicted MiB**: fxckpt's plan; fxckpt plans the peak that LiveBytesMode measures.
- **status**: compiled rows run each in a process of their own, so a compiler that crashes gives
  that row a status such as `crashed (SIGSEGV)` and the other rows are still measured.
"""


def _plot(rows: Sequence[StrategyResult], path: Path, title: str) -> None:
    """Measured peak (x) vs recompute FLOPs overhead % (y): one labelled point per strategy,
    fxckpt's rows as a connected curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.peak_mib is not None and r.flops_overhead_pct is not None]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    fx = sorted((r for r in ok if r.strategy.startswith("fxckpt")), key=lambda r: r.peak_mib)
    if fx:
        ax.plot([r.peak_mib for r in fx], [r.flops_overhead_pct for r in fx], "-o", color="tab:red",
                label="fxckpt (budgets)", zorder=3)
    for r in ok:
        if r.strategy.startswith("fxckpt"):
            continue
        marker, color = ("s", "tab:blue") if r.strategy.startswith("compile") else ("D", "tab:green")
        if r.strategy == "none":
            marker, color = "*", "black"
        ax.scatter(r.peak_mib, r.flops_overhead_pct, marker=marker, color=color, s=70, zorder=4)
    fig.canvas.draw()  # fixes the axes limits, so that data points map to pixels
    right = ax.get_window_extent().x1
    points = [ax.transData.transform((r.peak_mib, r.flops_overhead_pct)) for r in ok]
    placed = [(px - 5, py - 5, 10.0, 10.0) for px, py in points]  # pixel boxes (left, bottom, w, h): markers first
    for (x, y), names in _coincident(ok).items():
        text = " / ".join(names)
        width = 4.2 * len(text)
        point = ax.transData.transform((x, y))
        flip = point[0] + 6 + width > right  # no room on the right: put the label left of the point
        dx, dy = _free_offset(point, width, placed, flip)
        ax.annotate(text, (x, y), textcoords="offset pixels", xytext=(dx, dy), fontsize=7,
                    ha="right" if flip else "left",
                    color="tab:red" if all(n.startswith("fxckpt") for n in names) else "black",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if dy != 5 else None)
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


def _free_offset(point, width: float, placed: list[tuple[float, float, float, float]], flip: bool) -> tuple[float, float]:
    """A pixel offset from ``point`` for a label ``width`` pixels wide, to its right (left if
    ``flip``), that overlaps no box in ``placed`` (tried: 5 px up, then higher, then lower); the
    label's box is added to ``placed``."""
    height, dx = 11.0, (-6 if flip else 6)
    for dy in [5 + 12 * k for k in range(8)] + [-12 * k for k in range(1, 6)]:
        left, bottom = (point[0] - 6 - width if flip else point[0] + 6), point[1] + dy
        if all(left + width < l or l + w < left or bottom + height < b or b + h < bottom for l, b, w, h in placed):
            placed.append((left, bottom, width, height))
            return dx, dy
    return dx, 5


def _coincident(rows: Sequence[StrategyResult]) -> dict[tuple[float, float], list[str]]:
    """Strategy names grouped by plotted point (peaks within 0.5%, FLOPs within 0.1 points): one
    label per point."""
    groups: dict[tuple[float, float], list[str]] = {}
    for r in sorted(rows, key=lambda r: r.peak_mib):
        x, y = r.peak_mib, r.flops_overhead_pct
        key = next((k for k in groups if abs(k[0] - x) <= 0.005 * max(k[0], x) and abs(k[1] - y) <= 0.1), None)
        groups.setdefault(key or (x, y), []).append(r.strategy)
    return groups


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:+.1f}{unit}"


def _over_memory(r: StrategyResult, a: StrategyResult, x: str) -> str | None:
    """fxckpt's measured peak above the anchor's, and whether its own plan and LiveBytesMode agree."""
    if r.peak_mib <= a.peak_mib * (1 + _PEAK_TOLERANCE):
        return None
    text = f"measured peak {r.peak_mib:.1f} MiB is above the {a.peak_mib:.1f} MiB of {x}"
    live, planned = r.live_peak_mib, r.predicted_mib
    if live is not None and planned is not None and live <= a.peak_mib * (1 + _PEAK_TOLERANCE):
        where = f"; the profiler's peak is inside {r.peak_op}" if r.peak_op else ""
        text += (f" (planned {planned:.1f} MiB, LiveBytesMode {live:.1f} MiB: the excess is memory outside live "
                 f"tensor storages, which the profiler sees and fxckpt's model does not, such as scratch buffers "
                 f"inside ops or CPU RNG-state copies{where})")
    elif planned is not None:
        text += f" (planned {planned:.1f} MiB)"
    return text


def _more_flops(r: StrategyResult, a: StrategyResult, x: str) -> str | None:
    if r.flops_overhead_pct is None or a.flops_overhead_pct is None:
        return None
    if r.flops_overhead_pct <= a.flops_overhead_pct + _FLOPS_TOLERANCE:
        return None
    why = " (inductor also recomputes fused pointwise ops, which count 0 FLOPs)" if x.startswith("compile") else ""
    return (f"recomputes more: FLOPs {_fmt(r.flops_overhead_pct, '%')} vs {_fmt(a.flops_overhead_pct, '%')} "
            f"for {x}{why}")


def _overlap(r: StrategyResult, a: StrategyResult) -> bool:
    """Whether two rows' time ranges overlap (their times are not distinguishable)."""
    (rlo, rhi), (alo, ahi) = r.time_range_pct or (None, None), a.time_range_pct or (None, None)
    return rlo is None or alo is None or (rlo <= ahi and alo <= rhi)


def _time(r: StrategyResult) -> str:
    text = _fmt(r.time_overhead_pct, "%")
    if r.time_range_pct:
        text += " [{:+.0f}, {:+.0f}]".format(*r.time_range_pct)
    return text


def _slower(r: StrategyResult, a: StrategyResult, x: str, more_flops: bool) -> str | None:
    if r.time_overhead_pct <= a.time_overhead_pct:
        return None
    if _overlap(r, a):
        return f"not faster: time {_time(r)} vs {_time(a)} for {x}, ranges overlap (no clear difference)"
    if x.startswith("compile"):
        why = "compiled, fused kernels against fxckpt's eager step"
    elif more_flops:
        why = "it recomputes more"
    else:
        why = ("with fewer or equal recompute FLOPs, so the difference is fxckpt's runtime: saved-tensor hooks, "
               "recipes, the captured graph")
    return f"slower: time {_time(r)} vs {_time(a)} for {x} ({why})"


def not_ahead(rows: Sequence[StrategyResult]) -> tuple[list[str], list[str]]:
    """For each "fxckpt @ X" row: findings where fxckpt is not ahead of X at X's memory (it cannot
    reach it, ends above it, recomputes more FLOPs, takes longer, or fails), and the anchors it
    beats on both FLOPs and time."""
    by_name = {r.strategy: r for r in rows}
    findings, ahead = [], []
    for r in rows:
        if not r.strategy.startswith("fxckpt @ "):
            continue
        x = r.strategy[len("fxckpt @ "):]
        a = by_name.get(x)
        if a is None or a.peak_mib is None:
            continue
        label = f"**{x}** ({a.peak_mib:.1f} MiB)"
        wrong = f" ({x}'s own gradients are wrong: status {ZERO_GRADS!r})" if a.status == ZERO_GRADS else ""
        if r.status == "infeasible":
            findings.append(f"{label}: fxckpt cannot reach this memory: {r.notes}.")
            continue
        if r.status != "ok":
            findings.append(f"{label}: fxckpt at this budget: status {r.status!r} {r.notes}".rstrip() + ".")
            continue
        more = _more_flops(r, a, x)
        problems = [p for p in (_over_memory(r, a, x), more, _slower(r, a, x, more is not None)) if p]
        if problems:
            findings.append(f"{label}: " + "; ".join(problems) + wrong + ".")
        else:
            clear = "" if not _overlap(r, a) else ", ranges overlap"
            ahead.append(f"{x} (FLOPs {_fmt(r.flops_overhead_pct, '%')} vs {_fmt(a.flops_overhead_pct, '%')}, "
                         f"time {_time(r)} vs {_time(a)}{clear}){wrong}")
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
                 "cannot reach X's memory, ends above it (by more than 0.5%), recomputes more FLOPs, or is not "
                 "faster (slower: the time ranges do not overlap; not faster: a higher median within "
                 "overlapping ranges).\n")
    for name, res in results.items():
        findings, ahead = not_ahead(res["rows"])
        if not any(r.strategy.startswith("fxckpt @") for r in res["rows"]):
            parts.append(f"### {name}\n\nNo equal-memory rows (status: "
                         f"{', '.join(sorted({r.status for r in res['rows']}))}).\n")
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
        if any(r.peak_mib is not None for r in rows):
            _plot(rows, out / f"{name}.png", f"{name}: activation peak vs recompute FLOPs")
    total = time.perf_counter() - t_start

    rows_as_dicts = {name: {**res, "rows": [r.to_dict() for r in res["rows"]]} for name, res in results.items()}
    (out / "results.json").write_text(json.dumps(
        {"date": date, "environment": env, "iterations": args.iterations, "total_seconds": total,
         "models": rows_as_dicts}, indent=1, default=str) + "\n")
    (out / "results.md").write_text(_markdown(date, env, results, total, args.iterations))
    print(f"\nwrote {out}/results.md, results.json and {len(list(out.glob('*.png')))} PNG(s) in {total:.0f} s")


if __name__ == "__main__":
    main()
