"""fxckpt: automatic activation checkpointing for PyTorch training, planned under a byte budget."""

from .api import CheckpointedModule, auto_checkpoint
from .batch import max_batch_size, peak_formula
from .manual import CheckpointedSequential, SelectiveCheckpoint, checkpoint
from .errors import CaptureError, FxckptError, InfeasibleBudgetError, SolverError
from .plan import Plan
from .problem import RematProblem
from .simulate import simulate
from .solvers import SOLVERS, register_solver, solve
from .solvers.chain import LayerProfile, OptimalCheckpointer, SegmentedCheckpointing

__all__ = [
    "CaptureError", "CheckpointedModule", "CheckpointedSequential", "FxckptError", "InfeasibleBudgetError", "LayerProfile",
    "OptimalCheckpointer", "Plan", "RematProblem", "SegmentedCheckpointing", "SelectiveCheckpoint", "checkpoint",
    "SOLVERS", "SolverError", "auto_checkpoint", "max_batch_size", "measure_step", "peak_formula",
    "register_solver", "simulate", "solve",
]


def __getattr__(name):  # measure pulls in more of torch; import it on first use
    if name in ("measure_step", "StepMeasurement"):
        from . import measure
        return getattr(measure, name)
    raise AttributeError(f"module 'fxckpt' has no attribute {name!r}")
