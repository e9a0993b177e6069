"""The solver registry: `register_solver` adds `fn(problem, budget_bytes)` under a name to
`SOLVERS`. Each solver module registers itself by importing this module (never the package),
so that `fxckpt.core.solvers` can import every solver at its top without a cycle."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..problem import RematProblem

__all__ = ["SOLVERS", "Solved", "Solver", "check_budget", "is_amount", "recompute_of", "register_solver"]

Solver = Callable[[RematProblem, int], "frozenset | Solved"]


@dataclass(frozen=True)
class Solved:
    """A solver's answer with a proven lower bound on the recompute cost (`RematProblem.cost`)
    of any plan that fits (a solver that knows one returns this instead of a bare frozenset)."""

    recompute: frozenset
    lower_bound: float | None = None


SOLVERS: dict[str, Solver] = {}


def register_solver(name: str):
    """Register `fn(problem, budget_bytes) -> frozenset of node indices` under `name`.

    Example:
        >>> @register_solver("nothing-doc-example")
        ... def nothing(problem, budget_bytes):
        ...     return frozenset()
    """
    def deco(fn: Solver) -> Solver:
        if name in SOLVERS:
            raise RuntimeError(f"solver {name!r} is registered twice")
        SOLVERS[name] = fn
        return fn
    return deco


def recompute_of(answer) -> frozenset:
    return answer.recompute if isinstance(answer, Solved) else frozenset(answer)


def is_amount(x, *, positive: bool = False) -> bool:
    """Whether ``x`` is a real number (not a bool), not NaN, at least 0 (above 0 if ``positive``):
    what every budget must be, in bytes, MiB or as a fraction."""
    return not isinstance(x, bool) and isinstance(x, (int, float)) and (x > 0 if positive else x >= 0)


def check_budget(budget_bytes) -> int:
    if not is_amount(budget_bytes):
        raise ValueError(f"budget must be a non-negative number of bytes, got {budget_bytes!r}")
    return int(budget_bytes) if math.isfinite(budget_bytes) else 2**62
