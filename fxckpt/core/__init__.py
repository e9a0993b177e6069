"""The torch-free core of fxckpt: the problem IR, the simulator, plans and the solvers.

Nothing here imports torch, so planning questions (what fits, what it costs) can be asked and
tested anywhere; the torch.fx passes build a `RematProblem` and execute a `Plan`.

Example:
    >>> from fxckpt.core import random_problem, simulate, solve
    >>> p = random_problem(20, seed=0)
    >>> solve(p, simulate(p).peak_bytes).recompute
    frozenset()
"""

from .costs import NodeCost
from .errors import (BudgetWarning, CaptureError, FxckptError, InfeasibleBudgetError, LossError, ShardingError, SolverError,
                     StageError, UncompiledRuntimeWarning, UncountedMemoryWarning)
from .plan import Plan
from .problem import Buffer, Grad, Node, RematProblem
from .simulate import Simulation, simulate
from .solvers import SOLVERS, register_solver, solve
from .synthetic import random_problem

__all__ = [
    "Buffer", "BudgetWarning", "CaptureError", "FxckptError", "Grad", "InfeasibleBudgetError", "LossError", "Node", "NodeCost", "Plan",
    "RematProblem", "SOLVERS", "ShardingError", "Simulation", "SolverError", "StageError", "UncompiledRuntimeWarning", "UncountedMemoryWarning",
    "random_problem", "register_solver", "simulate", "solve",
]
