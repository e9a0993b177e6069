"""The torch.compile backend: fxckpt chooses what AOTAutograd saves, under a byte budget.

`torch.compile(model, backend="fxckpt", options={"budget_mb": 500})` (the name is registered
through the `torch_dynamo_backends` entry point) or `torch.compile(model, backend=fxckpt.backend(
budget_mb=500))`. Inside the compiler, AOTAutograd traces the joint forward + backward graph;
fxckpt's partitioner builds a `RematProblem` from it (`fxckpt.compile.joint`), solves it with
the solvers `auto_checkpoint` uses, and splits the joint graph so that backward recomputes what
the plan recomputes. Inductor (or AOTAutograd's eager runner) compiles both halves.

NOTE [ Graph breaks share the budget in first-run order ]
Dynamo partitions each graph on its own, when it first runs. The graphs of one step run their
forwards in that order and their backwards in reverse, so a later graph runs while the earlier
ones hold what they saved. A graph is therefore planned for the budget minus what the graphs
compiled before it (from other frames) hold across their forward/backward boundary; eager code
between graphs is not counted (nor a loss computed eagerly from the outputs: `out.sum()` and its
seed gradient, 8 bytes). `budget=` (a fraction) applies to each graph's own peak.
What a graph holds across its boundary includes its outputs: like `fxckpt.measure_step`, the
prediction assumes the caller references the model's output until backward finishes, so an
output is held to the end of the step even where a later graph consumes it (GPT-2's logits,
returned by the model and read by the loss graph: 49.08 MiB of a 213.39 MiB step at 2x256, seq
128, the whole gap to a measurement that dropped the output before backward). An intermediate
crossing a forced break that nobody returns is over-counted by at most its own size, and only
while the graph that produced it runs its backward (`predicted_peak_bytes`).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import torch.fx as fx

from fxckpt.core.errors import MIB, InfeasibleBudgetError
from fxckpt.core.plan import Plan, make_plan
from fxckpt.core.problem import RematProblem
from fxckpt.core.simulate import simulate
from fxckpt.core.solvers import SOLVERS, min_peak_plan, solve
from fxckpt.core.solvers.registry import is_amount

from .joint import build_problem, saved_values

log = logging.getLogger(__name__)
COMPILERS = ("inductor", "aot_eager")
_OWN = {"budget_mb", "budget", "solver", "compiler", "verify"}


@dataclass(frozen=True)
class CompiledGraph:
    """One graph the backend partitioned: its plan, its problem and the budget it was given."""

    name: str
    frame: int | None  # Dynamo's frame id (graph breaks: one frame per graph)
    plan: Plan
    problem: RematProblem
    boundary_bytes: int  # held across its forward/backward boundary


def _fxckpt_version() -> str:
    try:
        return version("fxckpt")
    except PackageNotFoundError:
        return "unknown"


class FxckptBackend:
    """A Dynamo backend whose partitioner is fxckpt's; see `backend`."""

    def __init__(self, budget_mb: float | None = None, budget: float | None = None, solver: str = "auto",
                 compiler: str = "inductor", verify: bool = False, **inductor_options):
        if (budget_mb is None) == (budget is None):
            raise ValueError("give exactly one of budget_mb= (MiB) or budget= (a fraction of the graph's "
                             "un-checkpointed activation peak)")
        limit = budget_mb if budget_mb is not None else budget
        if not is_amount(limit, positive=True):
            raise ValueError(f"the budget must be a positive number, got {limit!r}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; registered: {sorted(SOLVERS)}")
        if compiler not in COMPILERS:
            raise ValueError(f"compiler must be one of {COMPILERS}, got {compiler!r}")
        if inductor_options and compiler != "inductor":
            raise ValueError(f"options {sorted(inductor_options)} are inductor's, but compiler={compiler!r}")
        self.budget_mb, self.budget, self.solver, self.compiler = budget_mb, budget, solver, compiler
        self.verify, self.inductor_options = bool(verify), dict(inductor_options)
        self.graphs: list[CompiledGraph] = []
        self.inner_compile = None  # inductor's per-graph compiler, replaceable (the benchmarks count FLOPs there)

    def __repr__(self) -> str:
        limit = f"budget_mb={self.budget_mb}" if self.budget_mb is not None else f"budget={self.budget}"
        return f"fxckpt.backend({limit}, solver={self.solver!r}, compiler={self.compiler!r})"

    def uuid(self) -> str:
        """What the compiled code depends on: fxckpt's version and code, the budget, the solver."""
        h = hashlib.sha256(repr((_fxckpt_version(), self.budget_mb, self.budget, self.solver, self.compiler)).encode())
        for path in sorted(Path(__file__).parent.glob("*.py")) + sorted(Path(__file__).parents[1].glob("core/**/*.py")):
            h.update(path.read_bytes())
        return h.hexdigest()

    @property
    def plans(self) -> list[Plan]:
        return [g.plan for g in self.graphs]

    def __call__(self, gm: fx.GraphModule, example_inputs):
        from torch._guards import CompileContext

        compile_id = CompileContext.current_compile_id()
        frame = compile_id.frame_id if compile_id is not None else None
        partition = _Partitioner(self, frame)
        compiled = self._compile(gm, example_inputs, partition)
        if self.verify:
            from .verify import verified

            return verified(self, gm, example_inputs, compiled, partition)
        return compiled

    def _compile(self, gm, example_inputs, partitioner):
        # AOTAutograd's cache would skip the partitioner, and with it the plan: off for these graphs.
        with torch._functorch.config.patch(enable_autograd_cache=False):
            if self.compiler == "inductor":
                from torch._inductor.compile_fx import compile_fx

                inner = {"inner_compile": self.inner_compile} if self.inner_compile is not None else {}
                return compile_fx(gm, example_inputs, **inner,
                                  config_patches={**self.inductor_options, "custom_partitioner_fn": partitioner})
            from torch._dynamo.backends.common import aot_autograd
            from torch._dynamo.backends.debugging import boxed_nop

            return aot_autograd(fw_compiler=boxed_nop, bw_compiler=boxed_nop, partition_fn=partitioner,
                                keep_inference_input_mutations=True)(gm, example_inputs)

    def held_by_others(self, frame) -> int:
        """Bytes that graphs of other frames, compiled earlier, hold across their boundary."""
        latest = {g.frame: g for g in self.graphs if g.frame != frame}
        return sum(g.boundary_bytes for g in latest.values())

    def predicted_peak_bytes(self) -> int:
        """The step's predicted activation peak: each graph's (latest per frame) predicted peak over
        what the graphs compiled before it hold (NOTE [ Graph breaks share the budget in first-run order ])."""
        latest = {g.frame: g for g in self.graphs}
        held = worst = 0
        for g in latest.values():
            worst = max(worst, held + g.plan.predicted_peak_bytes)
            held += g.boundary_bytes
        return worst

    def _lowest(self, problem: RematProblem, floor: int) -> Plan:
        """The plan at the smallest feasible peak an error named, or the lowest-peak plan known where
        the solver cannot reach that floor (seen on the U-Net under inductor; issue #10 item 7)."""
        try:
            return solve(problem, floor, self.solver)
        except InfeasibleBudgetError:
            return make_plan(problem, min_peak_plan(problem), solver="min peak", budget_bytes=None, solve_seconds=0.0)

    def plan(self, problem: RematProblem, frame) -> Plan:
        """Solve one graph's problem under its share of the budget (NOTE [ Graph breaks share the budget ])."""
        held = self.held_by_others(frame) if self.budget_mb is not None else 0
        if self.budget_mb is not None:
            budget = self.budget_mb * MIB - held
        else:
            budget = self.budget * simulate(problem).peak_bytes
        try:
            plan = solve(problem, max(0, int(budget)), self.solver)
        except InfeasibleBudgetError as e:
            if self.budget is not None:  # a fraction asks for that saving where it is possible
                log.warning("%s: %s; planned at its smallest feasible peak", problem.name, e)
                plan = self._lowest(problem, e.min_feasible_bytes)
            elif not held:
                raise
            else:
                raise InfeasibleBudgetError(self.budget_mb * MIB, e.min_feasible_bytes + held, e.pinned) from e
        sim = simulate(problem, problem.indices(plan.recompute))
        self.graphs.append(CompiledGraph(problem.name, frame, plan, problem, sim.boundary_bytes))
        log.info("%s", plan.summary())
        return plan


def _custom_partitioner_base():
    try:
        from torch._inductor.custom_graph_pass import CustomPartitionerFn
    except ImportError:  # torch without the hook: aot_eager still works
        return object
    return CustomPartitionerFn


class _Partitioner(_custom_partitioner_base()):
    """Inductor's `CustomPartitionerFn` (and AOTAutograd's `partition_fn`): the joint graph to a
    forward and a backward graph that recompute what fxckpt's plan recomputes."""

    def __init__(self, owner: FxckptBackend, frame, recompute_nothing: bool = False):
        self.owner, self.frame, self.recompute_nothing = owner, frame, recompute_nothing
        self.last: Plan | None = None

    def __deepcopy__(self, memo):  # inductor deep-copies its config: keep pointing at our backend
        return self

    def uuid(self) -> str:
        return self.owner.uuid() + (":nothing" if self.recompute_nothing else "")

    def __call__(self, joint: fx.GraphModule, joint_inputs, *, num_fwd_outputs: int,
                 static_lifetime_input_indices=None, **kwargs):
        return partition(joint, num_fwd_outputs=num_fwd_outputs, static_lifetime_input_indices=static_lifetime_input_indices,
                         choose=self._choose, fusion=self.owner.compiler == "inductor")

    def _choose(self, problem: RematProblem) -> Plan:
        if self.recompute_nothing:
            self.last = solve(problem, 2**62, "none")
        else:
            self.last = self.owner.plan(problem, self.frame)
        return self.last


def partition(joint: fx.GraphModule, *, num_fwd_outputs: int, static_lifetime_input_indices=None, choose,
              fusion: bool = False):
    """Split `joint` into forward and backward graphs saving what `choose(problem) -> Plan` keeps
    (`fusion`: inductor compiles them; see `fxckpt.compile.joint.build_problem`).

    The steps of torch's `min_cut_rematerialization_partition` around its choice of saved values:
    dead code and CSE, force-saved collectives / effectful ops / backward mutation sources,
    classification, extraction, then recomputation placed just in time.
    """
    from torch._functorch import config as functorch_config
    from torch._functorch import partitioners as P
    from torch._functorch.compile_utils import fx_graph_cse, raise_getitems
    from torch.fx.experimental.proxy_tensor import is_sym_node

    joint.graph.eliminate_dead_code()
    joint.recompile()
    if functorch_config.cse:
        joint.graph = fx_graph_cse(joint.graph)
        joint.recompile()
    if P.has_recomputable_ops(joint):
        joint = P.cleanup_recompute_tags(joint, is_default_partition=False)
    P.force_save_collectives(joint)
    P.force_save_effectful_ops(joint)
    P.force_save_bw_mutation_src(joint)
    static = static_lifetime_input_indices or []
    info = P.classify_nodes(joint, static, num_fwd_outputs)
    if not info.required_bw_nodes:
        return P.default_partition(joint, None, num_fwd_outputs=num_fwd_outputs,
                                   static_lifetime_input_indices=static)
    jp = build_problem(joint, info, num_fwd_outputs, fusion=fusion)
    plan = choose(jp.problem)
    saved = saved_values(jp, plan.recompute)
    fw, bw = P._extract_fwd_bwd_modules(
        joint, [n for n in saved if not is_sym_node(n)], saved_sym_nodes=[n for n in saved if is_sym_node(n)],
        num_fwd_outputs=num_fwd_outputs, static_lifetime_input_nodes=info.static_lifetime_input_nodes)
    bw = P.reordering_to_mimic_autograd_engine(bw)
    return raise_getitems(fw), raise_getitems(bw)


def backend(budget_mb: float | None = None, budget: float | None = None, solver: str = "auto",
            compiler: str = "inductor", verify: bool = False, **inductor_options) -> FxckptBackend:
    """A torch.compile backend that recomputes what fxckpt's solver chooses under a byte budget.

    Args:
        budget_mb: activation budget of the whole training step, in MiB (graphs of one step share
            it; see the README).
        budget: instead, a fraction of each graph's peak with nothing recomputed (a graph that
            cannot reach it is planned at its smallest feasible peak, with a warning).
        solver: a name in `fxckpt.SOLVERS`.
        compiler: "inductor" (default) or "aot_eager" (AOTAutograd's graphs run op by op).
        verify: on the first call of each graph, compare gradients with the same graphs with
            nothing recomputed; on a mismatch, warn and use torch's default partitioner.
        **inductor_options: passed on to inductor's config.

    Example:
        >>> import torch, fxckpt
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> be = fxckpt.backend(budget=0.9, compiler="aot_eager")
        >>> torch.compile(model, backend=be)(torch.randn(4, 8)).sum().backward()
        >>> len(fxckpt.compiled_plans(be))
        1
    """
    return FxckptBackend(budget_mb=budget_mb, budget=budget, solver=solver, compiler=compiler, verify=verify,
                         **inductor_options)


_NAMED: dict[int, tuple[dict, FxckptBackend]] = {}  # id(options) -> (options, its backend)


def fxckpt_backend(gm: fx.GraphModule, example_inputs, *, mode=None, options=None):
    """The backend registered as "fxckpt": `torch.compile(m, backend="fxckpt", options={...})`.

    `options` takes `backend`'s arguments; the other keys go on to inductor's config.
    """
    options = options if options is not None else {}
    hit = _NAMED.get(id(options))
    if hit is None or hit[0] is not options:
        own = {k: v for k, v in options.items() if k in _OWN}
        rest = {k: v for k, v in options.items() if k not in _OWN}
        if "budget_mb" not in own and "budget" not in own:
            raise ValueError('backend="fxckpt" needs options={"budget_mb": ...} (MiB) or {"budget": ...} '
                             "(a fraction of the un-checkpointed peak)")
        hit = _NAMED[id(options)] = (options, FxckptBackend(**own, **rest))
    if mode not in (None, "default"):
        warnings.warn(f"fxckpt backend: mode={mode!r} is ignored; pass inductor options instead", stacklevel=2)
    return hit[1](gm, example_inputs)


def _backend_of(model) -> FxckptBackend | None:
    fn = getattr(model, "dynamo_ctx", None)
    fn = getattr(fn, "callback", None)
    while fn is not None and not isinstance(fn, FxckptBackend):
        compiler = getattr(fn, "compiler_fn", None)  # torch.compile's wrapper of the backend it was given
        if isinstance(compiler, FxckptBackend):
            return compiler
        options = getattr(fn, "kwargs", {}).get("options") if compiler is fxckpt_backend else None
        if options is not None:
            hit = _NAMED.get(id(options))
            return hit[1] if hit is not None and hit[0] is options else None
        fn = getattr(fn, "_torchdynamo_orig_backend", None)
    return fn


def compiled_plans(model) -> list[Plan]:
    """The `Plan` of every graph compiled so far, in compile order, for a model compiled with the
    fxckpt backend (the `torch.compile` result) or for the backend object itself.

    Example:
        >>> import torch, fxckpt
        >>> m = torch.compile(torch.nn.Linear(4, 4), backend="fxckpt", options={"budget": 1.0, "compiler": "aot_eager"})
        >>> m(torch.randn(2, 4)).sum().backward()
        >>> [p.solver for p in fxckpt.compiled_plans(m)]
        ['auto']
    """
    be = model if isinstance(model, FxckptBackend) else _backend_of(model)
    if be is None:
        raise TypeError(f"{type(model).__name__} was not compiled with the fxckpt backend: pass the result of "
                        f"torch.compile(model, backend='fxckpt', ...) or an fxckpt.backend(...) object")
    return be.plans
