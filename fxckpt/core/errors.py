"""The errors fxckpt raises: one base type, a few subclasses, each naming the fix."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

MIB = 2**20


class FxckptError(Exception):
    """Base class of every error fxckpt raises on purpose."""


FALLBACK = ("Fallback: checkpoint by hand with fxckpt.checkpoint / torch.utils.checkpoint, and file an issue "
            "with fxckpt quoting this message and the model")


# NOTE [ Typed stage errors ]
# Planning runs torch internals (symbolic tracing, torch.export, fake tensors, autograd) that fail
# in their own ways. A failure inside a stage surfaces as a StageError naming the stage, the node
# that was running (annotation's interpreter and backward trace, the node loops of to_problem and
# rewrite, the dry run's traceback through the generated code and the recipes), the original
# exception chained as __cause__, and what to do. fxckpt's own errors (InfeasibleBudgetError,
# SolverError, ...) pass through unchanged; bad arguments are refused before any stage runs.
class StageError(FxckptError):
    """A step of planning failed inside fxckpt: "capture", "annotate" (the training step on fake
    tensors), "to_problem", "solve", "rewrite" or "dry run" (the rewritten step on fake tensors).
    The exception it failed on is chained (`__cause__`).

    Attributes:
        stage: the step that failed.
        node: where in the graph, e.g. "addmm_3", "backward of linear", "recompute gelu"; None
            where no node was running.
    """

    stage = ""

    def __init__(self, message: str, *, stage: str | None = None, node: str | None = None):
        if stage is not None:
            self.stage = stage
        self.node = node
        super().__init__(message)


class CaptureError(StageError):
    """No front-end could turn the model into a torch.fx graph."""

    stage = "capture"


@contextlib.contextmanager
def in_stage(stage: str, node: Callable[[BaseException], str | None] = lambda e: None):
    """Turn any exception but fxckpt's own raised inside into a `StageError` (a `CaptureError`
    for "capture") naming `stage`, the node `node(exception)` names, the cause and the fallback.

    Example:
        >>> try:
        ...     with in_stage("rewrite", lambda e: "addmm"):
        ...         raise KeyError("x")
        ... except StageError as e:
        ...     print(e.stage, e.node)
        rewrite addmm
    """
    try:
        yield
    except FxckptError:
        raise
    except Exception as e:
        where = node(e)
        lines = str(e).strip().splitlines()
        cls = CaptureError if stage == "capture" else StageError
        raise cls(f"fxckpt's {stage} step failed{f' at node {where}' if where else ''}: {type(e).__name__}: "
                  f"{lines[0][:300] if lines else ''}\n{FALLBACK}", stage=stage, node=where) from e


class LossError(FxckptError, ValueError):
    """The step has nothing to backpropagate: no loss in the model's output and no floating
    tensor in it that requires grad, and no `loss_fn` that makes one."""


class ShardingError(FxckptError):
    """FSDP2's `fully_shard` was applied where fxckpt's captured graph would bypass it."""


class SolverError(FxckptError):
    """A solver returned a plan over the budget although a plan under it exists."""


class UncompiledRuntimeWarning(UserWarning):
    """A `CheckpointedModule` was called under `torch.compile`: its eager runtime (saved-tensor
    hooks) runs uncompiled there; `torch.compile(model, backend="fxckpt")` compiles with a plan."""


class UncountedMemoryWarning(UserWarning):
    """A compiled step holds memory its plans do not count: eager code whose autograd history a
    compiled graph's inputs carry, or a compiled graph run again before its earlier run's backward
    (NOTE [ Memory the plans do not see ] in fxckpt/compile/uncounted.py)."""


class BudgetWarning(UserWarning):
    """A call planned again (a new input shape) was planned above its share of the budget: at its
    smallest feasible peak, which is within the bytes the budget granted the example input."""


class InfeasibleBudgetError(FxckptError, ValueError):
    """No plan keeps the activation peak under the budget.

    Attributes:
        budget_bytes: the budget asked for.
        min_feasible_bytes: the smallest feasible budget: passed as `budget_mb=min_feasible_bytes /
            2**20`, it plans (see NOTE [ The floor is one plan ] in solvers/auto.py).
        pinned: names of the nodes whose memory cannot be recomputed away at that peak.
        peak_at: the step where the lowest plan peaks, e.g. "backward lstm".
        largest: (node, bytes) of the largest tensors live there, largest first: what the floor is made of.
        baseline_bytes: the un-checkpointed peak, when the budget was a fraction of it (None otherwise).
        why: node name -> why it cannot be recomputed, for the pinned nodes that say.
    """

    def __init__(self, budget_bytes: int, min_feasible_bytes: int, pinned: tuple[str, ...] = (), *,
                 peak_at: str = "", largest: tuple[tuple[str, int], ...] = (), baseline_bytes: int | None = None,
                 why: dict[str, str] | None = None):
        self.budget_bytes = int(budget_bytes)
        self.min_feasible_bytes = int(min_feasible_bytes)
        self.pinned = tuple(pinned)
        self.peak_at, self.largest = peak_at, tuple(largest)
        self.baseline_bytes = baseline_bytes
        self.why = dict(why or {})
        shown = ", ".join(self.pinned[:8]) + (" ..." if len(self.pinned) > 8 else "")
        reasons = list(dict.fromkeys(self.why[n] for n in self.pinned[:8] if n in self.why))
        if reasons:  # the first few, once each: most pins share a reason
            shown += f": {'; '.join(reasons[:3])}"
        live = ", ".join(f"{name} ({nbytes / MIB:.2f} MiB)" for name, nbytes in self.largest[:4])
        fraction = (f" (budget >= {round_up(self.min_feasible_bytes / baseline_bytes, 4)} of the "
                    f"{baseline_bytes / MIB:.2f} MiB un-checkpointed peak)" if baseline_bytes else "")
        super().__init__(
            f"budget {self.budget_bytes / MIB:.2f} MiB ({self.budget_bytes:,} bytes) is below the smallest feasible "
            f"activation peak {self.min_feasible_bytes:,} bytes; use budget_mb >= "
            f"{round_up(self.min_feasible_bytes / MIB, 2)}{fraction}"
            + (f" (held at the peak and not recomputable: {shown})" if shown else "")
            + (f"; that peak is at {peak_at}" if peak_at else "")
            + (f", where the largest live tensors come from {live}" if live else "")
        )


def round_up(x: float, digits: int) -> float:
    """`x` rounded up to `digits` decimals: the budget a message names must not round below the
    floor (0.5843 MiB shown as 0.58 was infeasible when passed back)."""
    q = 10**digits
    up = math.ceil(x * q) / q
    return up if up >= x else (math.ceil(x * q) + 1) / q
