"""Tables of `compare_strategies` results: `to_markdown` (what ``results.md`` holds) and
`print_comparison_table` (the tutorial's columns first, then ours)."""

from __future__ import annotations

from collections.abc import Sequence

from .results import StrategyResult

__all__ = ["COLUMNS", "TUTORIAL_COLUMNS", "print_comparison_table", "to_markdown"]

# (field, header): the Markdown table's columns.
COLUMNS = (
    ("model", "model"), ("strategy", "strategy"), ("peak_mib", "peak MiB"), ("saved_pct", "saved %"),
    ("flops_overhead_pct", "FLOPs +%"), ("time_overhead_pct", "time +% [range]"), ("setup_seconds", "solve/compile s"),
    ("grad_diff", "max |Δgrad|"), ("predicted_mib", "predicted MiB"), ("live_peak_mib", "LiveBytes MiB"),
    ("status", "status"),
)
# The printed table: the tutorial's columns (peak memory, compute time, memory savings, compute
# overhead), then the rest of ours. Memory is in MiB (2**20 bytes), as everywhere in fxckpt.
TUTORIAL_COLUMNS = (
    ("model", "model"), ("strategy", "strategy"), ("peak_mib", "peak memory MiB"), ("step_seconds", "compute time s"),
    ("saved_pct", "memory savings %"), ("time_overhead_pct", "compute overhead % [range]"),
    ("flops_overhead_pct", "FLOPs +%"), ("setup_seconds", "solve/compile s"), ("grad_diff", "max |Δgrad|"),
    ("predicted_mib", "predicted MiB"), ("live_peak_mib", "LiveBytes MiB"), ("status", "status"),
)
_LEFT = ("model", "strategy", "status")  # left-aligned columns; numbers are right-aligned


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key == "grad_diff":
        return "0" if value == 0 else f"{value:.3g}"
    if key in ("saved_pct", "flops_overhead_pct", "time_overhead_pct"):
        return f"{value:+.1f}" if key != "saved_pct" else f"{value:.1f}"
    if key in ("setup_seconds", "step_seconds"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _cells(row: StrategyResult, columns=COLUMNS) -> list[str]:
    cells = []
    for key, _ in columns:
        text = _cell(key, getattr(row, key))
        if key == "setup_seconds" and row.setup_kind == "compile" and row.setup_seconds is not None:
            text += " (compile)"
        if key == "time_overhead_pct" and row.time_range_pct and row.time_overhead_pct is not None:
            lo, hi = row.time_range_pct
            text += f" [{lo:+.0f}, {hi:+.0f}]"
        cells.append(text)
    return cells


def to_markdown(results: Sequence[StrategyResult], *, notes: bool = True) -> str:
    """A Markdown table of `compare_strategies` rows, each row's notes listed under it."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in results:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        noted = [r for r in results if r.notes]
        if noted:
            text += "\n" + "\n".join(f"- {r.model} / {r.strategy}: {r.notes}" for r in noted) + "\n"
    return text


def print_comparison_table(results: Sequence[StrategyResult]) -> None:
    """Print `compare_strategies` rows as an aligned text table (notes below): the tutorial's
    columns (peak memory, compute time, memory savings, compute overhead), then fxckpt's
    (recompute FLOPs, solve/compile time, gradient difference, predicted and LiveBytes peaks).

    Example:
        >>> from fxckpt.benchmark import compare_strategies
        >>> print_comparison_table(compare_strategies("quick", strategies=["none", "every-2"], iterations=1))
    """
    table = [[h for _, h in TUTORIAL_COLUMNS]] + [_cells(r, TUTORIAL_COLUMNS) for r in results]
    widths = [max(len(row[i]) for row in table) for i in range(len(TUTORIAL_COLUMNS))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if key in _LEFT else c.rjust(w)
                        for (key, _), c, w in zip(TUTORIAL_COLUMNS, row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in results:
        if r.notes:
            print(f"  {r.model} / {r.strategy}: {r.notes}")
