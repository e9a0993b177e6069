"""`auto_checkpoint`: capture, annotate, plan under a byte budget, rewrite."""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import logging
import sys
import warnings
from itertools import chain
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .core.errors import MIB, BudgetWarning, CaptureError, InfeasibleBudgetError, StageError, UncompiledRuntimeWarning, in_stage
from .core.plan import Plan, make_plan
from .core.problem import RematProblem
from .core.simulate import simulate
from .core.solvers import check_budget, infeasible, min_peak_plan, solve
from .core.solvers.registry import is_amount
from .wrap import ModelWrapper
from . import passes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Planned:
    gm: torch.fx.GraphModule | None  # None in a copy, until its first training step
    plan: Plan
    problem: RematProblem
    frontend: str


def _signature(model: torch.nn.Module, args, kwargs):
    """What a plan depends on besides the budget: input structure, shapes, dtypes and devices,
    the autocast state, every submodule's train/eval flag (a captured graph freezes dropout and
    batch norm modes), and the parameters' and buffers' dtypes, devices and requires_grad (a
    captured graph freezes dtypes; frozen parameters change what autograd saves)."""
    from .passes.runtime import autocast_state

    leaves, spec = pytree.tree_flatten((args, kwargs))
    return spec, autocast_state(), tuple(
        (tuple(x.shape), x.dtype, x.device, x.requires_grad) if isinstance(x, torch.Tensor) else x
        for x in leaves
    ), tuple(m.training for m in model.modules()), tuple(
        (t.dtype, t.device, t.requires_grad) for t in chain(model.parameters(), model.buffers()))


@contextlib.contextmanager
def _training(model: torch.nn.Module):
    """Plans are made for training: a model handed over in eval() is planned as `model.train()`
    would set it, and every submodule's flag is put back afterwards."""
    if model.training:
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


DEFAULT_BUDGET_MB = 500


def _budget_bytes(baseline: int, budget_mb, budget) -> int:
    """The budget in bytes: `budget` a fraction in (0, 1] of `baseline`, or `budget_mb` MiB
    (500 when neither is given); both at once is an error."""
    if budget is not None and budget_mb is not None:
        raise ValueError(f"pass budget (a fraction of the activation peak) or budget_mb (MiB), not both; "
                         f"got budget={budget!r} and budget_mb={budget_mb!r}")
    if budget is not None:
        if not is_amount(budget, positive=True) or budget > 1:
            raise ValueError(f"budget is a fraction of the model's activation peak in (0, 1], got {budget!r}; "
                             "for a budget in MiB pass budget_mb")
        return max(1, _fraction_of(budget, baseline))
    if budget_mb is None:
        budget_mb = DEFAULT_BUDGET_MB
    if not is_amount(budget_mb, positive=True):
        raise ValueError(f"budget_mb must be a positive number of MiB, got {budget_mb!r}")
    return check_budget(budget_mb * MIB)


def _fraction_of(fraction: float, baseline: int) -> int:
    """The largest byte count `n` with `n / baseline <= fraction`, as Python divides: a budget
    computed as `floor / baseline` gives back `floor` bytes, which `int(fraction * baseline)`
    could round one byte below."""
    n = int(fraction * baseline)
    while (n + 1) / baseline <= fraction:
        n += 1
    while n > 0 and n / baseline > fraction:
        n -= 1
    return n


_RETRIES = 3  # re-solves under a tighter budget when the dry run finds the plan over budget


TIMINGS = ("estimate", "profile", "flops")


def _device_and_dtype(model: torch.nn.Module, args, kwargs) -> tuple[torch.device, torch.dtype]:
    leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    params = [p for p in model.parameters() if p.is_floating_point()]
    device = leaves[0].device if leaves else params[0].device if params else torch.device("cpu")
    return device, params[0].dtype if params else torch.float32


def node_seconds(model, captured, gm, timing: str) -> dict:
    """`to_problem`'s timing arguments: rates (estimate), measured seconds (profile), or none."""
    from .calibrate import device_rates, profile_nodes

    if timing == "flops":
        return {}
    if timing == "profile":
        return {"seconds": profile_nodes(gm, captured.args, captured.kwargs)}
    return {"rates": device_rates(*_device_and_dtype(model, captured.args, captured.kwargs))}


def plan_model(model: torch.nn.Module, args: tuple, kwargs: dict, *, budget_mb=None, budget=None,
               solver: str = "auto", verify: bool = True, timing: str = "estimate", loss_fn=None,
               granted: int | None = None) -> _Planned:
    """Run the pipeline on one call signature: capture, annotate, solve, rewrite, and (verify)
    a dry run of the rewritten step on fake tensors that must fit the budget too.

    `granted`: for a call planned again, the bytes the budget granted the example input; where
    this call's budget is below its floor but the floor is within `granted`, it is planned at
    the floor with a `BudgetWarning` (NOTE [ Budgets of calls planned again ])."""
    from .distributed import check_no_sharded_submodules, gathered

    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")

    _budget_bytes(1, budget_mb, budget)  # reject bad budgets before any work
    check_no_sharded_submodules(model)
    # Inputs with autograd history (a block re-planned inside its model's forward): plan on
    # leaves with the same requires_grad; planning runs its own backward on fake copies.
    args, kwargs = pytree.tree_map_only(torch.Tensor, _as_leaf, (args, kwargs))
    with gathered(model), _quiet_torch_logs(), _no_gc():
        return _plan(model, args, kwargs, budget_mb, budget, solver, verify, timing, loss_fn, granted)


@contextlib.contextmanager
def _quiet_torch_logs():
    """Torch's own log records off while planning.

    NOTE [ Torch's logs while planning ]
    Planning runs torch on fake tensors and through torch.export, where a failing op logs its
    whole traceback at ERROR ("E... fake_tensor.py] failed while attempting to run meta for
    aten.mm", twenty lines for one wrong input shape) before raising. The exception reaches the
    caller anyway, as a typed error with the original chained (NOTE [ Typed stage errors ]),
    so torch's loggers ("torch" and those below it with a level of their own) are raised to
    CRITICAL for the duration and put back afterwards; fxckpt's own loggers are untouched.
    """
    loggers = [logging.getLogger("torch"), *(x for name, x in logging.root.manager.loggerDict.items()
                                             if name.startswith("torch.") and isinstance(x, logging.Logger) and x.level)]
    levels = [x.level for x in loggers]
    for x in loggers:
        x.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for x, level in zip(loggers, levels):
            x.setLevel(level)


@contextlib.contextmanager
def _no_gc():
    """The cyclic garbage collector off while planning, and back on (if it was) afterwards.

    NOTE [ No garbage collection while planning ]
    Planning allocates millions of short-lived objects (fx nodes, fake tensors, the solvers'
    rows and sets), so the collector ran ~400 times per planning of GPT-2 small, one of them a
    full collection of everything the process holds (the model, torch's modules): 0.3 of 4.3
    CPU s, for no memory back, as what planning keeps it keeps. Reference counting still frees
    everything acyclic at once; the cycles planning leaves (fake tensors and their graph) are
    collected by the first collection after it. A planning nested in another (a block planned
    again inside its model's forward) leaves the switch as it found it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _as_leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(t.requires_grad)


def _warn_repeated_casts(captured) -> None:
    """Under autocast, say which leaves the step casts more than once: their gradients differ
    from eager autocast's by rounding (NOTE [ Casts autocast's cache would share ])."""
    from .passes.fake_step import repeated_casts
    from .passes.runtime import autocast_state

    if not autocast_state():
        return
    casts = repeated_casts(captured.gm, captured.args, captured.kwargs)
    if casts:
        named = ", ".join(f"{name} ({n} casts)" for name, n in list(casts.items())[:5])
        warnings.warn(
            f"fxckpt runs autocast without its cast cache, so each read of a weight casts it again: {named}"
            f"{' and more' if len(casts) > 5 else ''}. Eager autocast casts each once and sums its gradients in "
            f"{torch.get_autocast_dtype(autocast_state()[0][0])}; fxckpt sums them in the weight's dtype, so these "
            f"gradients differ from eager's by rounding (they equal eager's under "
            f"torch.autocast(..., cache_enabled=False))", stacklevel=3)


# NOTE [ Shapes that depend on values ]
# symbolic_trace records `torch.nonzero`, boolean-mask indexing (`h[h > 0]`), `masked_select`,
# `unique` and `.item()` without running them, so a model using them is captured; planning then
# runs the step on fake tensors, which have no values: those ops raised in annotation, as a
# StageError asking for an issue to be filed. It is the model's construct that no plan can
# follow (the bytes it allocates depend on the data), so it is a CaptureError naming the node and
# the op, as for a construct neither front-end traces.
@contextlib.contextmanager
def _shapes_from_values(model: torch.nn.Module):
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    try:
        yield
    except StageError as e:
        cause = e.__cause__
        if not isinstance(cause, (DataDependentOutputException, DynamicOutputShapeException)) or (
                e.node or "").startswith("backward of "):  # a custom Function's backward: not the model's forward
            raise
        what = ("returns a tensor whose shape depends on the input's values (nonzero, boolean-mask indexing, "
                "masked_select, unique)" if isinstance(cause, DynamicOutputShapeException)
                else "reads a tensor's value as a Python number (.item(), .tolist())")
        raise CaptureError(
            f"cannot plan {type(model).__name__}: node {e.node} ({cause.func}) {what}, which planning on fake "
            "tensors cannot know.\nFallback: checkpoint parts of the model by hand with fxckpt.checkpoint / "
            "torch.utils.checkpoint, or compute that value outside the model", node=e.node) from cause


def _plan(model, args, kwargs, budget_mb, budget, solver, verify, timing, loss_fn, granted) -> _Planned:
    # Under the caller's autocast, as the step will run: torch.export records the dtypes it
    # sees (aten._assert_tensor_metadata), and the plan is made for one autocast state.
    # Each stage's failures surface as a StageError naming it (NOTE [ Typed stage errors ]).
    with in_stage("capture"):
        captured = passes.capture(model, args, kwargs)
    with in_stage("annotate"), _shapes_from_values(model):
        gm = passes.annotate(captured, loss_fn)
        _warn_repeated_casts(captured)
    with in_stage("to_problem"):
        problem = passes.to_problem(gm, name=type(model).__name__, **node_seconds(model, captured, gm, timing))
    baseline = simulate(problem).peak_bytes
    budget_bytes = _budget_bytes(baseline, budget_mb, budget)
    fitted = _fit(problem, gm, captured, budget_bytes, solver, verify, loss_fn)
    if fitted is None and budget is not None and verify:  # NOTE [ The baseline a fraction is of ]
        dry = _checked(problem, frozenset(), gm, captured, solver, verify, loss_fn)[0].dry_run_peak_bytes
        if dry > baseline:
            baseline, budget_bytes = dry, _budget_bytes(dry, budget_mb, budget)
            fitted = _fit(problem, gm, captured, budget_bytes, solver, verify, loss_fn)
    if fitted is None:  # nothing the solver found fits: the floor plan, if the budget allows it
        fitted = _checked(problem, min_peak_plan(problem), gm, captured, solver, verify, loss_fn)
        floor = _peak(fitted[0])
        # min_peak_plan is a heuristic, and the solver is not monotone in the budget: it may fit
        # below it (a stochastic-depth CNN: the floor plan peaked at 377,080 B; auto failed at
        # 377,079 B and fit 360,752 B at 375,000 B). Two more tries, just below and 2% below.
        for target in (floor - 1, floor * 49 // 50):
            lower = _fit(problem, gm, captured, min(target, floor - 1), solver, verify, loss_fn)
            if lower is not None and _peak(lower[0]) < floor:
                fitted, floor = lower, _peak(lower[0])
        if floor > budget_bytes and (granted is None or floor > granted):
            raise infeasible(problem, budget_bytes, floor, baseline if budget is not None else None)
        if floor > budget_bytes:
            warnings.warn(BudgetWarning(
                f"budget={budget} of this call's activation peak ({baseline:,} bytes) is {budget_bytes:,} bytes, "
                f"below its smallest feasible peak {floor:,} bytes: planned at {floor:,} bytes, within the "
                f"{granted:,} bytes the budget granted the example input"), stacklevel=2)
        fitted = (replace(fitted[0], budget_bytes=max(budget_bytes, floor)), fitted[1])
    plan, new_gm = fitted
    log.info("%s", plan.summary())
    return _Planned(new_gm, plan, problem, captured.frontend)


def _fit(problem, gm, captured, budget_bytes: int, solver: str, verify: bool, loss_fn):
    """(plan, rewritten graph) fitting `budget_bytes`, predicted and (`verify`) in the dry run,
    or None where the solver finds none. A plan the dry run finds over budget is solved again
    under a budget tightened by the excess."""
    target = budget_bytes
    for _ in range(_RETRIES + 1):
        try:
            with in_stage("solve"):
                plan = replace(solve(problem, target, method=solver), budget_bytes=budget_bytes)
        except InfeasibleBudgetError:
            return None
        with in_stage("rewrite"):
            new_gm = passes.rewrite(gm, plan)
        if not verify:
            return plan, new_gm
        plan = replace(plan, dry_run_peak_bytes=dry_run_peak(new_gm, captured.args, captured.kwargs, loss_fn))
        if plan.dry_run_peak_bytes <= budget_bytes:
            return plan, new_gm
        log.warning("dry run of the plan peaks at %.2f MiB, over the %.2f MiB budget: solving again",
                    plan.dry_run_peak_bytes / MIB, budget_bytes / MIB)
        target -= plan.dry_run_peak_bytes - budget_bytes
        if target <= 0:
            return None
    return None


def _checked(problem, recompute, gm, captured, solver: str, verify: bool, loss_fn):
    """(plan, rewritten graph) recomputing `recompute`, checked by the dry run like any other:
    `min_peak_plan`'s is the plan whose peak an InfeasibleBudgetError names (see NOTE [ The floor
    is one plan ] in fxckpt/core/solvers/auto.py)."""
    with in_stage("solve"):
        plan = make_plan(problem, recompute, solver=solver, budget_bytes=None, solve_seconds=0.0)
    with in_stage("rewrite"):
        new_gm = passes.rewrite(gm, plan)
    if verify:
        plan = replace(plan, dry_run_peak_bytes=dry_run_peak(new_gm, captured.args, captured.kwargs, loss_fn))
    return plan, new_gm


def _peak(plan: Plan) -> int:
    """What a plan needs: its predicted peak, or its dry run's where that is higher."""
    return max(plan.predicted_peak_bytes, plan.dry_run_peak_bytes or 0)


def dry_run_peak(gm: torch.fx.GraphModule, args: tuple, kwargs: dict, loss_fn=None) -> int:
    """The activation peak of one training step of a rewritten graph, run on fake tensors:
    the runtime's real behaviour (recipes, caches, frees) with no real computation, and the
    scratch of the kernels that allocate some (NOTE [ Op scratch the fake values do not show ])."""
    from .measure import LiveBytesMode
    from .passes.fake_step import FakeStep, op_scratch
    from .passes.capture import step_loss
    from .passes.runtime import failed_at

    with in_stage("dry run", lambda e: failed_at(gm, e)), FakeStep(gm, args, kwargs) as step:
        step.leaves()
        loss = step.loss(loss_fn or step_loss)
        live = LiveBytesMode(scratch=op_scratch)
        with live.booking(), step.observe(live.book):  # NOTE [ Observers inside the fake mode ]
            with gm.fxckpt_runtime.active():
                out = gm(*step.args, **step.kwargs)
            value = loss(out)
            with live.following(value):
                value.backward()
            del out, value
    return live.peak_bytes


# NOTE [ The baseline a fraction is of ]
# `budget=f` is a fraction of the step's peak with nothing recomputed, which the simulator
# predicts. Where the dry run (fake kernels, probed scratch) finds that step higher, a fraction
# near 1 is refused though the user asked for no more than the model already needs: a 2-layer
# nn.LSTM's step, simulated at 1,056,320 B, ran at 1,057,344 B (the oneDNN layer's backward), so
# `budget=1.0` named a smallest feasible budget of 1.001. So a fraction that nothing fits is
# taken again of the larger of the two, the need a plan is judged by (`_peak`); the dry run it
# costs is paid only where planning failed anyway.

# NOTE [ Budgets of calls planned again ]
# A call with a new signature is planned again with the same budget: `budget_mb` is absolute,
# `budget` a fraction of that call's own activation peak. A fraction can be infeasible where the
# example's was not: a tiny batch mid-training has a larger share of fixed costs (gradients of
# the weights, the loss), so its floor is a larger fraction of its peak. What the user promised
# is memory: the bytes the budget granted the example input (`CheckpointedModule._granted`).
# So a call planned again whose floor is within those bytes is planned at its floor, with a
# `BudgetWarning` naming both numbers (once: the plan is cached); a floor above them raises
# InfeasibleBudgetError, as does any budget_mb below the floor (there the granted bytes are
# the budget itself), and so does the first plan (auto_checkpoint), which has no grant yet.
# The floor plans at exactly its bytes (NOTE [ The floor is one plan ] in solvers/auto.py).

# NOTE [ Plan cache ]
# One plan per call signature. A loop over many distinct shapes (variable sequence lengths) would
# otherwise keep a rewritten graph per shape forever: the least recently used plan is dropped beyond
# PLAN_CACHE_SIZE, and its signature is planned again if it comes back.
PLAN_CACHE_SIZE = 16


_UNCOMPILED = ("fxckpt: a CheckpointedModule's training step runs its eager runtime (saved-tensor hooks), "
               "uncompiled, under torch.compile. To compile training under fxckpt's plan, compile the model "
               "itself: torch.compile(model, backend=\"fxckpt\", options={\"budget_mb\": ...}) (see fxckpt.compile).")
_warned_uncompiled = False


def _warn_uncompiled() -> None:
    global _warned_uncompiled
    if not _warned_uncompiled:
        _warned_uncompiled = True
        warnings.warn(_UNCOMPILED, UncompiledRuntimeWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The `stacklevel` of the first caller outside torch and fxckpt (Dynamo's frames sit between)."""
    internal = (str(Path(torch.__file__).parent), str(Path(__file__).parent))
    frame, level = sys._getframe(2), 2  # _train_uncompiled is stacklevel 2 in warn()
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    return level


class CheckpointedModule(ModelWrapper):
    """A model that trains like the original while recomputing what its plan says.

    It shares the original's submodules, parameters and buffers (same objects, same
    `state_dict()` keys). With grad enabled it runs a rewritten graph, in training and in
    `eval()` alike (NOTE [ Eval mode with grad ]); under `torch.no_grad()` it runs the original
    forward, with no recompute machinery; its train/eval mode is the model's. A call with another signature (input shapes,
    dtypes, devices, autocast, submodule modes, parameter dtypes and devices; see `_signature`)
    is planned again (same budget and solver) and the plan cached per signature, for the
    `PLAN_CACHE_SIZE` most recently used signatures (see NOTE [ Plan cache ]); a fraction
    budget no plan of that call reaches is planned at the call's floor when the floor is within
    the bytes the example input was granted (NOTE [ Budgets of calls planned again ]).
    The graph runs inside the model's own `__call__`, so hooks on the model itself (FSDP2's
    all-gather, see `fxckpt.distributed`) run around it; hooks on its submodules do not (the
    graph inlines them). Under `torch.compile` its training calls run uncompiled, with one
    `UncompiledRuntimeWarning` (NOTE [ Under torch.compile ]); compile the model with
    `backend="fxckpt"` instead.
    """

    traced_as_its_model = True  # NOTE [ A planned block inside the model ] in passes/capture.py

    def __init__(self, model: torch.nn.Module, planned: _Planned, signature, *, budget_mb, budget, solver, timing,
                 loss_fn=None, granted: int):
        super().__init__(model)
        object.__setattr__(self, "_spec", dict(budget_mb=budget_mb, budget=budget, solver=solver, timing=timing,
                                               loss_fn=loss_fn))
        object.__setattr__(self, "_granted", granted)  # bytes the example input's plan was given
        plans = collections.OrderedDict({signature: planned} if planned.gm is not None else {})
        object.__setattr__(self, "plans", plans)
        object.__setattr__(self, "_current", planned)

    # NOTE [ Copying and saving ]
    # A rewritten graph holds fake tensors (export's node meta) and recipes bound to the model's
    # own modules, so it cannot be copied or pickled with the model. A copy (copy.deepcopy,
    # pickle, torch.save) carries the model, the budget and the current plan's data (`.plan`,
    # `.problem`), and plans again on its first training step: same budget, solver and timing.
    # To save training state, save `state_dict()` (the model's own keys).
    def __reduce__(self):
        current = self._current
        return _restore, (self._model, self._spec, current.plan, current.problem, current.frontend, self._granted)

    @property
    def plan(self) -> Plan:
        """The plan of the most recent call signature with grad enabled: the training plan, or
        after a call in `eval()` the eval plan (NOTE [ Eval mode with grad ])."""
        return self._current.plan

    @property
    def graph_module(self) -> torch.fx.GraphModule | None:
        """The rewritten graph of the most recent call signature (None in a copy that has not
        trained yet, see NOTE [ Copying and saving ])."""
        return self._current.gm

    @property
    def problem(self) -> RematProblem:
        return self._current.problem

    # NOTE [ Eval mode with grad ]
    # A backward after `model.eval()` is common (fine-tuning with dropout off and BatchNorm frozen)
    # and holds activations like any training step: running the original forward there left the
    # step unplanned (a hand-written net: 5.83 MB at the allocator under a 3.21 MB budget). So any
    # call with grad enabled runs a plan. The eval graph differs from the training graph (no
    # dropout, batch norm on running statistics), and submodules' train/eval flags are part of
    # the call signature, so its first call plans the eval graph (same budget, solver and
    # timing; a fraction of the eval graph's own peak), cached beside the training plan; `.plan`
    # is the plan of the latest call, so after an eval call it is the eval plan. A budget the eval
    # graph cannot reach raises InfeasibleBudgetError, as any call planned again does. Under
    # `torch.no_grad()` nothing is held for a backward: the original forward runs, unplanned.
    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled() or torch.compiler.is_exporting():  # NOTE [ A planned block inside the model ]
            return self._model(*args, **kwargs)  # what torch.compile compiles under no_grad
        if torch.compiler.is_compiling():
            return self._train_uncompiled(*args, **kwargs)
        return self._train(*args, **kwargs)

    # NOTE [ Under torch.compile ]
    # The eager runtime cannot be traced: saved-tensor hooks pushed and popped by the graph, recipes
    # keyed by node name, storage weak references. Traced (the zoo transformer at budget 0.5), Dynamo
    # broke the graph 81 times, hit its recompile limit (one recompile per node name through `begin`),
    # printed tracebacks, and with aot_eager gave gradients off by up to 9.5. So a training call under torch.compile (`torch.compile(c)`, `c.compile()`) skips
    # Dynamo: the plan runs eagerly, exactly as without compile, and one UncompiledRuntimeWarning
    # (once per process) points to the compile backend, which plans inside the compiled graph.
    @torch.compiler.disable(reason=_UNCOMPILED)
    def _train_uncompiled(self, *args, **kwargs):
        _warn_uncompiled()
        return self._train(*args, **kwargs)

    def _train(self, *args, **kwargs):
        from .distributed import call_with_forward, check_no_sharded_submodules
        from .passes.capture import training_kwargs

        check_no_sharded_submodules(self._model)  # fully_shard may come after auto_checkpoint
        sig = _signature(self._model, args, kwargs)
        planned = self.plans.get(sig)
        if planned is None:
            log.info("new input signature: planning again for it")
            planned = plan_model(self._model, args, kwargs, **self._spec, granted=self._granted)
            self.plans[sig] = planned
            if len(self.plans) > PLAN_CACHE_SIZE:
                self.plans.popitem(last=False)
        self.plans.move_to_end(sig)
        object.__setattr__(self, "_current", planned)
        kwargs = training_kwargs(self._model, kwargs)
        return call_with_forward(self._model, functools.partial(_run, planned.gm), args, kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_model"), name)


def _restore(model, spec: dict, plan: Plan, problem: RematProblem, frontend: str, granted: int) -> CheckpointedModule:
    """A copy's wrapper: the plan's data now, its graph at the first training step."""
    return CheckpointedModule(model, _Planned(None, plan, problem, frontend), None, **spec, granted=granted)


def _run(gm: torch.fx.GraphModule, *args, **kwargs):
    with gm.fxckpt_runtime.active():
        return gm(*args, **kwargs)


def auto_checkpoint(model: torch.nn.Module, example_input: Any, budget_mb: float | None = None, *,
                    budget: float | None = None, solver: str = "auto", timing: str = "estimate",
                    loss_fn=None) -> CheckpointedModule:
    """Rewrite `model` so a training step's activation peak stays under a budget.

    Args:
        model: the module to train.
        example_input: a tensor, a tuple of positional arguments, or a dict of keyword arguments.
            Later calls may mix positional and keyword arguments.
        budget_mb: the activation budget in MiB (2**20 bytes); 500 when neither it nor `budget`
            is given.
        budget: instead, a fraction in (0, 1] of the model's activation peak (e.g. 0.5): the
            captured graph's, with the model's own checkpoint regions as the model runs them.
            A call with new input shapes is planned again at the same fraction of its own peak;
            where that is below the call's smallest feasible peak (a tiny batch), it is planned
            at that floor, with a `BudgetWarning`, if the floor is within the bytes the budget
            granted `example_input`, and raises InfeasibleBudgetError otherwise. `budget_mb` is
            absolute: a call whose floor is above it raises.
        solver: a registered solver name (see `fxckpt.core.solvers.SOLVERS`).
        timing: what the solver minimizes: "estimate" (default), recompute seconds estimated
            from FLOPs and bytes at the device's measured rates (`fxckpt.calibrate`, measured once
            per device and cached); "profile", seconds measured per node on the example (a few
            real forwards); "flops", recompute FLOPs.
        loss_fn: maps the model's output to the scalar you call ``backward()`` on, as your
            training loop does (e.g. ``lambda out: F.cross_entropy(out.flatten(0, 1), y.flatten())``).
            The plan covers the whole step, the loss's own tensors included (a cross-entropy holds
            a log-softmax and a gradient of the logits' size). Default `fxckpt.step_loss`: the
            output's ``loss`` if it has one (Hugging Face), else the sum of its floating tensors,
            whose gradient allocates nothing. A loss that allocates more than that needs
            ``loss_fn`` for the budget to hold. It is called on the output of every call that
            is planned (the example, then each new input signature), so it must work at every
            shape the model sees: a closure over fixed targets fits one shape. It must be
            picklable for ``torch.save`` of the module.

    Returns:
        A `CheckpointedModule` with `.plan` (predicted peak, recompute FLOPs, solver, solve time).

    Raises:
        InfeasibleBudgetError: the budget is below the smallest feasible peak; the error names it
            (`min_feasible_bytes`; `budget_mb=min_feasible_bytes / 2**20` plans).
        ValueError: the budget is zero, negative or NaN, a fraction above 1, or both `budget` and
            `budget_mb` are given.
        TypeError: `example_input` is not a tensor, tuple, list or dict.
        CaptureError: no front-end could capture the model.
        StageError: a later stage of planning failed (annotation on fake tensors, to_problem,
            solve, rewrite or the dry run): `.stage`, `.node` and the cause chained.

    Example:
        >>> import torch, fxckpt
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
        >>> ckpt = fxckpt.auto_checkpoint(model, torch.randn(32, 64), budget=0.9)
        >>> ckpt(torch.randn(32, 64)).sum().backward()
    """
    from .passes.capture import split_input

    args, kwargs = split_input(example_input)
    with _training(model):
        planned = plan_model(model, args, kwargs, budget_mb=budget_mb, budget=budget, solver=solver, timing=timing,
                             loss_fn=loss_fn)
        signature = _signature(model, args, kwargs)
    return CheckpointedModule(model, planned, signature, budget_mb=budget_mb, budget=budget, solver=solver, timing=timing,
                              loss_fn=loss_fn, granted=planned.plan.budget_bytes)


_TINY_FRACTION = 1e-4  # of the un-checkpointed peak: a budget no real model's plan reaches


def min_feasible_budget(model: torch.nn.Module, example_input: Any, *, solver: str = "auto", loss_fn=None) -> int:
    """The smallest activation budget, in bytes, under which `auto_checkpoint` finds a plan.

    It plans at a tiny budget (1e-4 of the un-checkpointed peak); the `InfeasibleBudgetError`
    names the smallest feasible peak, which is returned (or the tiny budget itself, where that
    fits). The model is left as it was.

    Example:
        >>> import torch, fxckpt
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
        >>> x = torch.randn(32, 64)
        >>> floor = fxckpt.min_feasible_budget(model, x)
        >>> fxckpt.auto_checkpoint(model, x, budget_mb=floor / 2**20).plan.predicted_peak_bytes <= floor
        True
    """
    try:
        return auto_checkpoint(model, example_input, budget=_TINY_FRACTION, solver=solver, loss_fn=loss_fn).plan.budget_bytes
    except InfeasibleBudgetError as e:
        return e.min_feasible_bytes
