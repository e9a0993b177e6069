"""fxckpt: automatic activation checkpointing for PyTorch training, planned under a byte budget.

The torch-free core (`fxckpt.core`: problem, simulator, plans, solvers) imports eagerly; the
parts that need torch (capture and rewrite, the manual toolbox, measurement) load on first use,
so `import fxckpt.core` works where torch is not installed.
"""

from importlib import import_module

from .core import (SOLVERS, BudgetWarning, CaptureError, FxckptError, InfeasibleBudgetError, LossError, Plan, RematProblem,
                   ShardingError, SolverError, StageError, UncompiledRuntimeWarning, UncountedMemoryWarning, register_solver,
                   simulate, solve)
from .core.solvers.chain import LayerProfile, OptimalCheckpointer, SegmentedCheckpointing

# name -> module that defines it (imported on first access: these need torch)
_LAZY = {
    "CheckpointedModule": ".api", "auto_checkpoint": ".api", "min_feasible_budget": ".api",
    "max_batch_size": ".batch", "peak_formula": ".batch",
    "CheckpointedSequential": ".manual", "SelectiveCheckpoint": ".manual", "checkpoint": ".manual",
    "measure_step": ".measure", "StepMeasurement": ".measure", "step_loss": ".measure",
    "backend": ".compile", "compiled_plans": ".compile",
}

# submodules loaded on first attribute access (`fxckpt.profiling.MemoryProfiler` after `import fxckpt`)
_SUBMODULES = ("profiling", "recipes", "training")

__all__ = [
    "BudgetWarning", "CaptureError", "CheckpointedModule", "CheckpointedSequential", "FxckptError", "InfeasibleBudgetError", "LayerProfile", "LossError",
    "OptimalCheckpointer", "Plan", "RematProblem", "SegmentedCheckpointing", "SelectiveCheckpoint", "checkpoint",
    "SOLVERS", "ShardingError", "SolverError", "StageError", "UncompiledRuntimeWarning", "UncountedMemoryWarning", "auto_checkpoint", "backend",
    "compiled_plans", "max_batch_size", "measure_step", "min_feasible_budget", "peak_formula", "register_solver",
    "simulate", "solve", "step_loss",
]


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)  # the import binds it in this namespace
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fxckpt' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
