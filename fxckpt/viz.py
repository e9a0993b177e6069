"""Pictures of a plan: the simulated memory timeline of a training step. Matplotlib is
imported on first use (`pip install fxckpt[plot]`)."""

from __future__ import annotations

from .core.plan import Plan
from .core.problem import RematProblem
from .core.simulate import simulate

MIB = 2**20


def pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'fxckpt[plot]'") from e
    return plt


def simulated_timeline(problem: RematProblem, plan: Plan | None = None) -> tuple[tuple[int, str], ...]:
    """``(live activation bytes, "forward|recompute|backward <node>")`` at every simulated step,
    with the plan's recomputations (none without a plan)."""
    recompute = problem.indices(plan.recompute) if plan is not None else ()
    return simulate(problem, recompute, timeline=True).timeline


def plot_timeline(problem: RematProblem, plan: Plan | None = None, ax=None):
    """Live activation bytes at every simulated step, with and without the plan, and the budget.

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> ax = plot_timeline(random_problem(12, "chain"))
    """
    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot([b / MIB for b, _ in simulated_timeline(problem)], label="no checkpointing", lw=1)
    if plan is not None:
        ax.plot([b / MIB for b, _ in simulated_timeline(problem, plan)], label=f"{plan.solver}: recompute {len(plan.recompute)} nodes", lw=1)
        if plan.budget_bytes is not None:
            ax.axhline(plan.budget_bytes / MIB, color="k", ls="--", lw=0.8, label="budget")
    ax.set_xlabel("step (forward nodes, then recomputations and backward nodes)")
    ax.set_ylabel("live activation MiB")
    ax.legend(loc="upper left", fontsize=8)
    return ax
