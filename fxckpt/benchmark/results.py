"""`StrategyResult`: one row of a comparison, what `compare_strategies` returns per strategy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["ZERO_GRADS", "StrategyResult"]

ZERO_GRADS = "zero grads"  # status of a measured row whose step leaves some gradients all-zero, wrongly


@dataclass(frozen=True)
class StrategyResult:
    """One strategy measured on one model. Sizes in MiB, overheads in % of "none"'s.

    The field names are the keys of ``results.json`` (`to_dict`). Unmeasured values are None.
    """

    model: str
    strategy: str
    peak_mib: float | None = None  # measured activation peak (profiler)
    saved_pct: float | None = None  # 100 * (1 - peak / none's peak)
    flops: int | None = None
    flops_overhead_pct: float | None = None
    step_seconds: float | None = None  # median of the timed steps
    time_overhead_pct: float | None = None  # over the median of the "none" steps timed in between
    setup_seconds: float | None = None
    setup_kind: str | None = None  # "solve" (fxckpt) or "compile" (torch.compile)
    grad_diff: float | None = None  # largest absolute gradient difference from "none"
    predicted_mib: float | None = None  # fxckpt's plan
    budget_mib: float | None = None  # fxckpt's budget
    live_peak_mib: float | None = None  # LiveBytesMode's peak, on the rows of `live_check`
    forward_check_bytes: tuple[int, int] | None = None  # see `forward_memory_check`
    none_step_seconds: float | None = None  # median of the "none" steps timed in between
    peak_op: str | None = None  # the aten op running at the profiler's peak
    step_times: list[float] | None = None  # the timed steps
    none_step_times: list[float] | None = None  # the "none" step timed after each
    time_range_pct: list[float] | None = None  # smallest and largest paired time ratio, in %
    status: str = "ok"  # "ok", ZERO_GRADS, "not supported", "infeasible", an exception class name, ...
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict (the keys of ``results.json``)."""
        return dataclasses.asdict(self)
