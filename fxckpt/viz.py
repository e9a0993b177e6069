"""Pictures of a plan: the simulated memory timeline of a training step. Matplotlib is
imported on first use (`pip install fxckpt[plot]`)."""

from __future__ import annotations

from .core.plan import Plan
from .core.problem import RematProblem
from .core.simulate import simulate

MIB = 2**20


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'fxckpt[plot]'") from e
    return plt


def plot_timeline(problem: RematProblem, plan: Plan | None = None, ax=None):
    """Live activation bytes at every simulated step, with and without the plan, and the budget.

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> ax = plot_timeline(random_problem(12, "chain"))
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.5))
    base = simulate(problem, timeline=True)
    ax.plot([b / MIB for b, _ in base.timeline], label="no checkpointing", lw=1)
    if plan is not None:
        sim = simulate(problem, problem.indices(plan.recompute), timeline=True)
        ax.plot([b / MIB for b, _ in sim.timeline], label=f"{plan.solver}: recompute {len(plan.recompute)} nodes", lw=1)
        if plan.budget_bytes is not None:
            ax.axhline(plan.budget_bytes / MIB, color="k", ls="--", lw=0.8, label="budget")
    ax.set_xlabel("step (forward nodes, then recomputations and backward nodes)")
    ax.set_ylabel("live activation MiB")
    ax.legend(loc="upper left", fontsize=8)
    return ax
