"""The public API as README.md and the docstrings document it: every documented name exists, with
the documented parameters (names, kinds and defaults; annotations may change). Renaming a name or
a parameter fails here: change the README and this table together, on purpose."""

import importlib
import inspect
import pathlib
import re

import pytest

import fxckpt
import fxckpt.core

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

TOP_LEVEL = {
    "BudgetWarning", "CaptureError", "CheckpointedModule", "CheckpointedSequential", "FxckptError",
    "InfeasibleBudgetError", "LayerProfile", "LossError", "OptimalCheckpointer", "Plan", "RematProblem", "SOLVERS",
    "SegmentedCheckpointing", "SelectiveCheckpoint", "ShardingError", "SolverError", "StageError",
    "UncompiledRuntimeWarning", "UncountedMemoryWarning", "auto_checkpoint", "backend", "checkpoint", "compiled_plans", "max_batch_size",
    "measure_step", "min_feasible_budget", "peak_formula", "register_solver", "simulate", "solve", "step_loss",
}
CORE = {
    "Buffer", "BudgetWarning", "CaptureError", "FxckptError", "Grad", "InfeasibleBudgetError", "LossError", "Node", "NodeCost",
    "Plan", "RematProblem", "SOLVERS", "ShardingError", "Simulation", "SolverError", "StageError",
    "UncompiledRuntimeWarning", "UncountedMemoryWarning", "random_problem", "register_solver", "simulate", "solve",
}

# (module, name) -> its signature without annotations
SIGNATURES = {
    ("fxckpt", "auto_checkpoint"):
        "(model, example_input, budget_mb=None, *, budget=None, solver='auto', timing='estimate', loss_fn=None)",
    ("fxckpt", "min_feasible_budget"): "(model, example_input, *, solver='auto', loss_fn=None)",
    ("fxckpt", "max_batch_size"): "(model, example_input, budget_mb, batch_dim=0, *, solver='auto', limit=65536)",
    ("fxckpt", "peak_formula"): "(model, example_input, recompute=(), batch_dim=0, batches=(2, 4))",
    ("fxckpt", "measure_step"): "(model, example_input, *, loss_fn=None, repeats=1, warmup=True)",
    ("fxckpt", "step_loss"): "(output)",
    ("fxckpt", "checkpoint"): "(fn, /, *args, **kwargs)",
    ("fxckpt", "CheckpointedSequential"): "(*layers, checkpoint_segments)",
    ("fxckpt", "SelectiveCheckpoint"): "(model, checkpoint_layers)",
    ("fxckpt", "backend"):
        "(budget_mb=None, budget=None, solver='auto', compiler='inductor', verify=False, **inductor_options)",
    ("fxckpt", "compiled_plans"): "(model)",
    ("fxckpt", "solve"): "(problem, budget_bytes, method='auto')",
    ("fxckpt", "simulate"): "(problem, recompute=(), *, timeline=False, live_at_peak=False, cap=None)",
    ("fxckpt", "register_solver"): "(name)",
    ("fxckpt", "LayerProfile"): "(name, activation_bytes, compute_cost=1.0)",
    ("fxckpt", "OptimalCheckpointer"): "(layers)",
    ("fxckpt.core", "random_problem"): "(n, shape='chain', seed=0, *, ban_rate=0.05)",
    ("fxckpt.benchmark", "compare_strategies"):
        "(model_or_name=None, example_input=None, *, strategies=None, iterations=3, budgets=(0.5, 0.25), seed=0, "
        "live_check=('none', 'fxckpt'), model_name=None, num_layers=None, hidden_size=None, batch_size=None, "
        "sequence_length=None, progress=None, isolate=('compile ', 'fxckpt compile '))",
    ("fxckpt.benchmark", "print_comparison_table"): "(results)",
    ("fxckpt.viz", "plot_timeline"): "(problem, plan=None, ax=None)",
    ("fxckpt.viz", "plot_graph"): "(problem, plan=None, *, max_groups=60, ax=None)",
}


def _plain(obj) -> str:
    sig = inspect.signature(obj)
    params = [p.replace(annotation=p.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=sig.empty))


def _resolve(dotted: str):
    """The module or attribute a dotted name in the README names."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_top_level_names():
    assert set(fxckpt.__all__) == TOP_LEVEL
    assert set(fxckpt.core.__all__) == CORE
    for module, names in ((fxckpt, TOP_LEVEL), (fxckpt.core, CORE)):
        missing = [n for n in sorted(names) if not hasattr(module, n)]
        assert not missing, f"{module.__name__} lacks {missing}"


@pytest.mark.parametrize(("module", "name"), sorted(SIGNATURES))
def test_documented_signature(module, name):
    assert _plain(getattr(importlib.import_module(module), name)) == SIGNATURES[module, name]


def test_every_name_the_readme_uses_exists():
    dotted = sorted(set(re.findall(r"\bfxckpt(?:\.[A-Za-z_]\w*)+", README.read_text())))
    assert len(dotted) > 30
    unresolved = []
    for name in dotted:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            unresolved.append(name)
    assert not unresolved, f"README.md names what fxckpt lacks: {unresolved}"


def test_readme_keywords_are_parameters():
    """Keyword arguments the README passes to a documented callable are its parameters."""
    text = README.read_text()
    checked = 0
    for (module, name), _ in SIGNATURES.items():
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for call in re.finditer(rf"\b{name}\(([^()]*(?:\([^()]*\)[^()]*)*)\)", text):
            for kw in re.findall(r"(?:^|[,(]\s*)([a-z_]\w*)=", call.group(1)):
                assert kw in params or takes_any, f"README calls {name}(..., {kw}=...): not a parameter"
                checked += 1
    assert checked >= 10
