"""The torch.compile backend: fxckpt chooses what AOTAutograd saves, under a byte budget.

`torch.compile(model, backend="fxckpt", options={"budget_mb": 500})` (the name is registered
through the `torch_dynamo_backends` entry point, and by importing this module where the package
metadata lacks it: NOTE [ The backend's name ]) or `torch.compile(model, backend=fxckpt.backend(
budget_mb=500))`. Inside the compiler, AOTAutograd traces the joint forward + backward graph;
fxckpt's partitioner builds a `RematProblem` from it (`fxckpt.compile.joint`), solves it with
the solvers `auto_checkpoint` uses, and splits the joint graph so that backward recomputes what
the plan recomputes. Inductor (or AOTAutograd's eager runner) compiles both halves.

NOTE [ Graph breaks share the budget in first-run order ]
Dynamo partitions each graph on its own, when it first runs. The graphs of one step run their
forwards in that order and their backwards in reverse, so a later graph runs while the earlier
ones hold what they saved: the step's peak is the largest, over graphs, of a graph's own peak
plus what the graphs before it (first-run order) hold across their forward/backward boundary.
A graph is planned for `budget_mb` minus what the graphs before it hold. When that leaves less
than its smallest feasible peak F, the graph before it is planned again with F reserved at its
boundary (`with_reserve`: the later graphs' bytes, counted once, on top of what it holds while
they run); when that graph cannot leave F either, the one before it is re-planned for its own
floor with that reserve, and so on. Only the first graph failing with every later graph's floor
reserved makes a budget infeasible, and the error names the smallest budget this scheme meets,
so planning in first-run order never makes a feasible budget infeasible (10 MiB on the broken
MLP of tests/test_compile.py failed before, where 9.5 MiB planned). A re-planned graph is
compiled again on its next call (`_Replannable`), because the step that compiled the later
graph has already run its forward: that first step may exceed the budget by what the
re-planned graph stopped holding; every later step fits the plans.
Eager code before and between graphs is not counted (a scalar loss computed from the outputs and
its seed gradient are: NOTE [ The eager loss ] in joint.py), but what it saves for backward is reported, as is a
graph run again before its earlier run's backward (NOTE [ Memory the plans do not see ] in
`uncounted.py`). `budget=` (a fraction) applies to each graph's own peak.
What a graph holds across its boundary includes its outputs: like `fxckpt.measure_step`, the
prediction assumes the caller references the model's output until backward finishes, so an
output is held to the end of the step even where a later graph consumes it (GPT-2's logits,
returned by the model and read by the loss graph: 49.08 MiB of a 213.39 MiB step at 2x256, seq
128, the whole gap to a measurement that dropped the output before backward). An intermediate
crossing a forced break that nobody returns is over-counted by at most its own size, and only
while the graph that produced it runs its backward (`predicted_peak_bytes`).

NOTE [ Later graphs' outputs outlive their backward ]
Backwards run in reverse first-run order, so a graph's backward runs after the backwards of the
graphs after it, which have freed what they saved but not everything they made: the caller
still holds their outputs (`CompiledGraph.after_bytes`: a piece's, only those the whole graph
returns, NOTE [ Outputs only later pieces read ]), and the gradients their backwards returned
for values made by graphs before this one (a skip connection across it) wait for those graphs'
backwards. A 2-layer Mixtral (labels, router logits), split into 5 pieces and a loss graph,
measured 29,439 B over a budget of 930,605 B at the zeros_like of an expert weight's gradient in
a piece's backward: the loss graph's 76,800 B logits and a residual stream's 16,384 B gradient
were live there, uncounted. Each graph's backward is now planned and predicted with them
(`with_reserve`'s `after`: a buffer made at the end of its forward and held to the end of the
step). Pieces' reads are known when the graph is split (`split_graph`); those of other frames
when the graph is compiled, Dynamo's example inputs being the tensors the earlier graphs made,
or when it first runs (`_note_reads`, by the identity of its inputs). Both come after the
earlier graphs were planned: a graph whose backward then exceeds
`budget_mb` is planned again and compiled again on its next call, as a re-planned graph is above
(the first step may exceed the budget), and an infeasible budget's error may name a floor that
a graph compiled later raises again (pass it back until one plans).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import torch.fx as fx

from fxckpt.core.errors import MIB, FxckptError, InfeasibleBudgetError
from fxckpt.core.plan import Plan, make_plan
from fxckpt.core.problem import Buffer, Node, RematProblem
from fxckpt.core.simulate import simulate
from fxckpt.core.solvers import SOLVERS, min_peak_plan, solve
from fxckpt.core.solvers.registry import is_amount

from .inductor_memory import BufferPlanRecorder, StepBuffers, boundary_names, step_buffers
from .joint import build_problem, copy_running_stats, real_values, saved_values, specialize_sizes
from .uncounted import RunWatch, _fake

log = logging.getLogger(__name__)
COMPILERS = ("inductor", "aot_eager")
_OWN = {"budget_mb", "budget", "solver", "compiler", "verify"}
MAX_REPLANS = 3  # plans whose inductor code exceeds the budget, before the floor plan is tried
MAX_REPEATS = 4  # times the aim is doubled lower where it gave a plan already tried (not compiled again)


@dataclass(frozen=True)
class CompiledGraph:
    """One graph the backend partitioned: its plan, its problem and what it holds."""

    name: str
    frame: object  # Dynamo's frame id (graph breaks: one frame per graph); (frame, k): piece k of a split graph
    plan: Plan
    problem: RematProblem
    boundary_bytes: int  # held across its forward/backward boundary
    peak_bytes: int  # its own predicted peak (the plan's, without the reserve)
    reserve_bytes: int = 0  # reserved at its boundary for the graphs after it
    after_bytes: int = 0  # its outputs the caller holds through the backwards of the graphs before it
    code: StepBuffers | None = None  # under inductor, what its code holds


def with_reserve(problem: RematProblem, nbytes: int, after: int = 0) -> RematProblem:
    """`problem` with `nbytes` more live at the end of its forward, where the graphs after it run
    (NOTE [ Graph breaks share the budget in first-run order ]): a last forward node that
    allocates nothing and holds `nbytes` while it runs, so every solver and the simulator count
    them on top of what the graph holds across its boundary; and with `after` bytes, the later
    graphs' outputs (NOTE [ Later graphs' outputs outlive their backward ]), made there and held
    to the end of the step (within the `nbytes`, when they are more)."""
    if not nbytes and not after:
        return problem
    k = len(problem.nodes)
    later = Node("graphs after this one", "reserve", transient_bytes=max(0, nbytes - after),
                 creates=(len(problem.buffers),) if after else (), value=(len(problem.buffers),) if after else (),
                 is_output=bool(after), ban="the later graphs' outputs" if after else None)
    buffers = problem.buffers + ((Buffer("later graphs' outputs", after, k),) if after else ())
    return dataclasses.replace(problem, nodes=problem.nodes + (later,), buffers=buffers)


def held_output_bytes(problem: RematProblem) -> int:
    """Bytes of the outputs a graph's problem holds to the end of the step (made by the graph)."""
    held = {b for n in problem.nodes if n.is_output for b in n.value}
    return sum(problem.buffers[b].nbytes for b in held)


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
        if verify and compiler == "inductor":  # NOTE [ Why verify compiled gradients ]: eager's random numbers
            if not inductor_options.setdefault("fallback_random", True):
                raise ValueError("verify=True compares with eager kernels' random numbers, which inductor draws only "
                                 "with fallback_random=True: drop fallback_random=False or verify=True")
        self.verify, self.inductor_options = bool(verify), dict(inductor_options)
        self._graphs: dict[int | None, CompiledGraph] = {}  # per frame, latest; in first-run order
        # per frame, its graphs that were planned (Dynamo keeps one per grad mode, training flag, shape)
        self._compiled: dict[int | None, list[_Replannable]] = {}
        self._warned: set[str] = set()  # NOTE [ Memory the plans do not see ]: each warning once
        # per frame, what it reads that requires grad and an earlier graph made: (that graph's
        # frame, a key for the value, its bytes) (NOTE [ Later graphs' outputs outlive their backward ])
        self._reads: dict = {}
        self._made: dict[int, tuple] = {}  # id of a graph's output on its first run -> (a weak reference, its frame)
        self._viewed: dict = {}  # per frame, bytes of the gradients of inputs its outputs view (NOTE [ An output ...])
        self._pending = None  # (frame, problem) of the graph being planned
        self._probe = False  # plan each graph at its floor, whatever the budget (`_chain_floor`'s pieces)
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
    def graphs(self) -> list[CompiledGraph]:
        """The latest graph of each frame, in first-run order."""
        return list(self._graphs.values())

    @property
    def plans(self) -> list[Plan]:
        return [g.plan for g in self.graphs]

    def __call__(self, gm: fx.GraphModule, example_inputs):
        self._pending = None
        try:
            return self._call(gm, example_inputs)
        except Exception as e:
            err = _infeasible(e)
            if err is None or self.budget_mb is None or self.compiler == "inductor":
                raise
            # NOTE [ A split graph's floor is its pieces' together ]: with every graph known so far
            floor = self._chain_floor(err.min_feasible_bytes)
            if floor <= err.min_feasible_bytes:
                raise
            raise InfeasibleBudgetError(int(self.budget_mb * MIB), floor, peak_at=(
                "the graphs compiled so far, each planned in turn")) from e

    def _call(self, gm: fx.GraphModule, example_inputs):
        from torch._guards import CompileContext

        compile_id = CompileContext.current_compile_id()
        frame = compile_id.frame_id if compile_id is not None else None
        if not _fake(example_inputs):  # Dynamo's are the frame's tensors: the earlier graphs ran on them
            self._note_reads(frame, example_inputs)
            self._viewed[frame] = _viewed_input_bytes(gm, example_inputs)
        grad_bytes = _parameter_bytes(gm)
        cap = -(-grad_bytes // PIECES)
        whole = None  # the whole graph's error
        if not any(isinstance(k, tuple) and k[0] == frame for k in self._graphs):  # never split before
            try:
                return self._compile_graph(gm, example_inputs, frame)
            except Exception as e:  # Dynamo and AOTAutograd may wrap our error
                err = _infeasible(e)
                if err is None or grad_bytes < SPLIT_SHARE * err.min_feasible_bytes:
                    raise
                whole = e
        log.warning("fxckpt backend: the budget is below the graph's smallest feasible peak; the graph is split "
                    "into pieces of %.2f MiB of parameters, whose gradients are accumulated piece by piece", cap / MIB)
        failed = []  # NOTE [ A split graph's floor is its pieces' together ]
        real = {} if _fake(example_inputs) else dict(zip(
            (n.name for n in gm.graph.find_nodes(op="placeholder")), example_inputs))

        def compile_piece(piece, inputs, key):
            # what the piece reads of the earlier graphs' values, known before it is planned
            # (NOTE [ Later graphs' outputs outlive their backward ]): its inputs are fake
            self._note_reads(key, [real[name] for n in piece.graph.find_nodes(op="placeholder")
                                   if (name := n.meta.get("fxckpt_name")) in real])
            if not failed:
                try:
                    return self._compile_graph(piece, inputs, key)
                except Exception as e:
                    if _infeasible(e) is None or self.budget_mb is None or self.compiler == "inductor":
                        raise
                    failed.append(_infeasible(e))
            self._probe = True
            try:
                return self._compile_graph(piece, inputs, key)
            finally:
                self._probe = False
        try:
            split = split_graph(gm, example_inputs, cap, compile_piece, frame, self._reads)
            if failed:
                raise failed[0]  # `__call__` names the floor of all the pieces together
            return split
        except Exception as e:
            err = _infeasible(e)
            reordered = _cause(e, RandomOrderChanged)
            if reordered is not None and whole is not None:
                log.warning("fxckpt backend: the graph is not split: %s (NOTE [ Pieces keep the random numbers' "
                            "order ])", reordered)
            elif whole is None or err is None or err.min_feasible_bytes < _infeasible(whole).min_feasible_bytes:
                raise
            # the pieces need more than the whole graph (Llama: 4,009,992 B against 3,265,160 B): the
            # whole graph's error names the smaller floor, and the frame is not kept as split
            for key in [k for k in self._graphs if isinstance(k, tuple) and k[0] == frame]:
                del self._graphs[key]
                self._compiled.pop(key, None)
            raise whole from None

    def _compile_graph(self, gm: fx.GraphModule, example_inputs, frame):
        """Compile one graph (or one piece of a split graph) under its share of the budget; `frame`
        keys its plan (NOTE [ Graph breaks share the budget in first-run order ])."""
        from . import verify

        # the reference first, from `gm` as Dynamo made it: inductor's pre-grad passes rewrite it in place
        reference = verify.reference_compile(gm, example_inputs) if self.verify else None
        kept = self._graphs.get(frame)  # a frame compiled again keeps the reserve a later graph asked for
        fn = self._compile_planned(gm, example_inputs, frame, kept.reserve_bytes if kept is not None else 0)
        compiled = _Replannable(self, gm, frame, fn)
        if self._graphs.get(frame) is not kept:  # planned: not an inference graph (no_grad), which saves nothing
            # every planned graph of the frame is re-planned, not only the latest (NOTE [ A frame's graphs ])
            self._compiled.setdefault(frame, []).append(compiled)
        if self.verify:
            return verify.verified(gm, example_inputs, compiled, reference, self.compiler, self.inductor_options,
                                   self.inner_compile)
        return compiled

    def _compile(self, gm, example_inputs, partitioner):
        # AOTAutograd's cache would skip the partitioner, and with it the plan: off for these graphs.
        with torch._functorch.config.patch(enable_autograd_cache=False):
            if self.compiler == "inductor":
                from torch._inductor.compile_fx import compile_fx

                inner = {"inner_compile": self.inner_compile} if self.inner_compile is not None else {}
                # NOTE [ Inductor's code is the prediction ]: the backward is compiled now, not at its
                # first call, and never taken from inductor's cache, so that its code can be read.
                with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                    return compile_fx(gm, example_inputs, **inner, config_patches={
                        **self.inductor_options, "custom_partitioner_fn": partitioner,
                        "_post_fusion_custom_pass": partitioner.recorder, "fx_graph_cache": False})
            from torch._dynamo.backends.common import aot_autograd
            from torch._dynamo.backends.debugging import boxed_nop

            return aot_autograd(fw_compiler=boxed_nop, bw_compiler=boxed_nop, partition_fn=partitioner,
                                keep_inference_input_mutations=True)(gm, example_inputs)

    def _compile_planned(self, gm, example_inputs, frame, reserve: int):
        """`gm` compiled with fxckpt's plan, `reserve` bytes left free at its boundary; under
        inductor, planned again until the code inductor generates holds the budget (NOTE
        [ Inductor's code is the prediction ])."""
        outs = _passing_outputs(gm) if isinstance(frame, tuple) else None
        if self.compiler != "inductor":
            return self._compile(gm, example_inputs, _Partitioner(self, frame, reserve=reserve, passing=outs))
        shave, smallest, tried, floor, attempt, repeats = 0, None, set(), False, 0, 0
        after = self._after(frame)  # NOTE [ Later graphs' outputs outlive their backward ]
        while True:
            floor = floor or attempt == MAX_REPLANS
            part = _Partitioner(self, frame, reserve=reserve, shave=shave, floor=floor, passing=outs,
                                avoid=frozenset() if floor else frozenset(tried))
            try:
                fn = self._compile(gm, example_inputs, part)
            except Exception as e:
                if _cause(e, _SamePlan) is not None:  # NOTE [ Aiming lower until the plan changes ]
                    repeats += 1
                    floor = repeats > MAX_REPEATS
                    shave *= 2
                    continue
                if floor or _infeasible(e) is None:
                    raise
                part = _Partitioner(self, frame, reserve=reserve, floor=True, passing=outs)
                fn, floor = self._compile(gm, example_inputs, part), True
            attempt += 1
            held = part.held()
            if held is None:  # no backward: inductor's default partition, nothing planned
                return fn
            # the larger of the code's figure and the problem's (NOTE [ Inductor's code is the prediction ])
            peak, budget = max(held.peak(reserve, after), part.last.predicted_peak_bytes), part.last.budget_bytes
            smallest = peak if smallest is None else min(smallest, peak)
            if peak <= budget or (floor and self.budget_mb is None):
                return self._record_inductor(frame, reserve, after, held, peak, fn)
            if floor:
                break
            log.info("fxckpt backend: inductor's code holds %d B over the budget of graph %s; planned again",
                     peak - budget, frame)
            tried.add(part.last.recompute)
            shave += peak - budget
        smallest = self._lowest_code(gm, example_inputs, frame, reserve, outs, budget, smallest, tried)
        held_before = self.held_before(frame)
        raise InfeasibleBudgetError(budget + held_before, smallest + held_before,
                                    peak_at=f"the code inductor generated for graph {frame} at its lowest plan")

    def _lowest_code(self, gm, example_inputs, frame, reserve: int, outs, budget: int, smallest: int, tried) -> int:
        """The smallest peak inductor's code holds among the plans tried and the solver's plans at
        that peak, tried while they hold less (NOTE [ The floor plan is not the code's floor ])."""
        for _ in range(MAX_REPLANS):
            part = _Partitioner(self, frame, reserve=reserve, shave=budget - smallest, passing=outs)
            try:
                self._compile(gm, example_inputs, part)
            except Exception as e:
                if _infeasible(e) is None:
                    raise
                break
            held = part.held()
            if held is None or part.last.recompute in tried:
                break
            tried.add(part.last.recompute)
            peak = max(held.peak(reserve, self._after(frame)), part.last.predicted_peak_bytes)
            if peak >= smallest:
                break
            smallest = peak
        return smallest

    def _record_inductor(self, frame, reserve: int, after: int, held: StepBuffers, held_peak: int, fn):
        """Record the graph's plan as inductor's code holds it (`held`; `held_peak`: the larger of
        its peak and the problem's, NOTE [ Inductor's code is the prediction ])."""
        g = self._graphs[frame]
        plan = dataclasses.replace(g.plan, predicted_peak_bytes=held.peak(reserve, after))
        if plan.budget_bytes is not None and held_peak > plan.budget_bytes:
            # a fraction below what inductor's code can hold: planned at its smallest peak
            log.warning("graph %s: planned at its smallest feasible peak under inductor, %d B", frame, held_peak)
            plan = dataclasses.replace(plan, budget_bytes=held_peak)
        self._graphs[frame] = dataclasses.replace(g, plan=plan, boundary_bytes=held.boundary_bytes,
                                                  peak_bytes=held.peak(0), code=held)
        return fn

    def held_before(self, frame) -> int:
        """Bytes that the graphs running before `frame`'s (first-run order) hold across their boundary."""
        return sum(self._graphs[f].boundary_bytes for f in self._frames_before(frame))

    def predicted_peak_bytes(self) -> int:
        """The step's predicted activation peak: each graph's own predicted peak over what the
        graphs before it hold (NOTE [ Graph breaks share the budget in first-run order ]), its
        backward's with the outputs of the graphs after it (NOTE [ Later graphs' outputs outlive
        their backward ])."""
        held = worst = 0
        for g in self.graphs:
            worst = max(worst, held + self._peak_with_after(g))
            held += g.boundary_bytes
        return worst

    def _after(self, frame) -> int:
        """Bytes live through `frame`'s backward that the graphs after it (first-run order) made:
        their outputs the caller holds, and the gradients their backwards returned for values
        the pieces before `frame`'s made (NOTE [ Later graphs' outputs outlive their backward ])
        or for leaves (NOTE [ A leaf read by two graphs ]); and the gradients of the inputs its
        outputs view (NOTE [ An output viewing an input ])."""
        frames = list(self._graphs)
        if frame not in self._graphs:
            return self._viewed.get(frame, 0)
        k = frames.index(frame)
        later = frames[k + 1:]
        grads = {key: nbytes for f in later for maker, key, nbytes in self._reads.get(f, ())
                 if maker in self._graphs and frames.index(maker) < k}
        # a leaf's gradients wait for its first reader's backward (NOTE [ A leaf read by two graphs ])
        readers: dict = {}
        for i, f in enumerate(frames):
            for maker, key, nbytes in self._reads.get(f, ()):
                if maker is None:
                    readers.setdefault(key, [nbytes]).append(i)
        grads.update({key: r[0] for key, r in readers.items() if min(r[1:]) <= k < max(r[1:])})
        return sum(self._graphs[f].after_bytes for f in later) + sum(grads.values()) + self._viewed.get(frame, 0)

    # NOTE [ A leaf read by two graphs ]
    # Autograd sums a leaf's gradients before it accumulates them into `.grad`: a parameter two
    # graphs read (a module called before and after a graph break) gets the later graph's
    # gradient when that graph's backward returns, and holds it until the earlier graph's
    # backward returns its own. A Linear called before and after a graph break measured 3,408,904 B
    # at the allocator at the 3,145,736 B floor named (its weight's and bias's 263,168 B). A graph's
    # backward is now planned with the gradients of the leaves that a graph after it and a
    # graph up to it (itself included) both read.

    def _ran(self, frame, args, outputs) -> None:
        """A graph's first run on real tensors: which of its inputs earlier graphs made (their
        gradients outlive its backward), and its outputs, for the graphs after it; the graphs
        before it are planned again where those gradients leave them over `budget_mb`."""
        import weakref

        reads = self._note_reads(frame, args)
        for t in torch.utils._pytree.tree_leaves(outputs):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                self._made[id(t)] = (weakref.ref(t), frame)
        if reads and self.budget_mb is not None and frame in self._graphs:
            self._fit_earlier(frame)

    def _note_reads(self, frame, args) -> list:
        """What `args` (real tensors) hold that earlier graphs made and that requires grad, and the
        leaves that require grad (as made by None): kept in `_reads[frame]`, and returned where not
        known before."""
        reads = []
        known = {key for _, key, _ in self._reads.get(frame, ())}
        for t in args:
            if isinstance(t, torch.Tensor) and t.is_leaf and t.requires_grad and ("leaf", id(t)) not in known:
                reads.append((None, ("leaf", id(t)), t.numel() * t.element_size()))  # a parameter, say
                continue
            hit = self._made.get(id(t)) if isinstance(t, torch.Tensor) and t.requires_grad else None
            if hit is not None and hit[0]() is t and ("ran", id(t)) not in known and not (
                    isinstance(hit[1], tuple) and isinstance(frame, tuple) and hit[1][0] == frame[0]):  # `split_graph`'s
                reads.append((hit[1], ("ran", id(t)), t.untyped_storage().nbytes()))
        if reads:
            self._reads[frame] = self._reads.get(frame, []) + reads
        return reads

    def _peak_with_after(self, g: CompiledGraph) -> int:
        """`g`'s own peak with the later graphs' outputs live through its backward."""
        after = self._after(g.frame)
        if not after:
            return g.peak_bytes
        if g.code is not None:
            return g.code.peak(0, after)
        return simulate(with_reserve(g.problem, 0, after), g.problem.indices(g.plan.recompute)).peak_bytes

    def _chain_floor(self, start: int) -> int:
        """The smallest `budget_mb` at which every graph planned so far plans in turn, from
        `start` up, following the floors each refusal names (NOTE [ A split graph's floor is its
        pieces' together ]): planned again on their problems, nothing compiled."""
        floor = start
        graphs = [(f, g.problem) for f, g in self._graphs.items()]
        if self._pending is not None and self._pending[0] not in self._graphs:  # refused before it was recorded
            graphs.append(self._pending)
        for _ in range(4 * len(graphs) + 4):
            trial = FxckptBackend(budget_mb=floor / MIB, solver=self.solver, compiler=self.compiler)
            trial._reads, trial._viewed = self._reads, self._viewed
            try:
                for f, problem in graphs:
                    trial.plan(problem, f)
                return floor
            except InfeasibleBudgetError as e:
                if e.min_feasible_bytes <= floor:
                    return floor
                floor = e.min_feasible_bytes
        return floor

    def _fit_earlier(self, frame) -> None:
        """Plan again each graph before `frame`'s whose backward, with the outputs of the graphs
        after it (known only now), exceeds `budget_mb` (NOTE [ Later graphs' outputs outlive their
        backward ]); it compiles again on its next call."""
        limit = int(self.budget_mb * MIB)
        for f in self._frames_before(frame):
            g = self._graphs[f]
            if self.held_before(f) + self._peak_with_after(g) > limit:
                self._replan(g, g.reserve_bytes)

    def _lowest(self, problem: RematProblem, floor: int) -> Plan:
        """The plan at the smallest feasible peak an error named, or the lowest-peak plan known where
        the solver cannot reach that floor (seen on the U-Net under inductor; issue #10 item 7)."""
        try:
            return solve(problem, floor, self.solver)
        except InfeasibleBudgetError:
            return make_plan(problem, min_peak_plan(problem), solver="min peak", budget_bytes=None, solve_seconds=0.0)

    def _floor_plan(self, problem: RematProblem) -> Plan:
        """The plan at the problem's smallest feasible peak."""
        try:
            return solve(problem, 0, self.solver)
        except InfeasibleBudgetError as e:
            return self._lowest(problem, e.min_feasible_bytes)

    def plan(self, problem: RematProblem, frame, reserve: int = 0, shave: int = 0, floor: bool = False) -> Plan:
        """Solve one graph's problem under its share of the budget, `reserve` bytes kept free at its
        boundary for the graphs after it (NOTE [ Graph breaks share the budget in first-run order ]),
        aiming `shave` bytes below it, or at its smallest feasible peak (`floor`): where inductor's
        code held more than the problem predicts (NOTE [ Inductor's code is the prediction ])."""
        if self._probe:
            plan = self._floor_plan(problem)
        elif self.budget_mb is not None:
            plan = self._within_budget(problem, frame, reserve, shave, floor)
        else:
            budget = max(0, int(self.budget * simulate(problem).peak_bytes))
            try:
                plan = self._floor_plan(problem) if floor else solve(problem, max(0, budget - shave), self.solver)
                plan = dataclasses.replace(plan, budget_bytes=budget)
            except InfeasibleBudgetError as e:  # a fraction asks for that saving where it is possible
                if not shave:
                    log.warning("%s: %s; planned at its smallest feasible peak", problem.name, e)
                plan = self._lowest(problem, e.min_feasible_bytes)
                if self.compiler == "inductor":  # judged by inductor's code, which may hold less (`_record_inductor`)
                    plan = dataclasses.replace(plan, budget_bytes=budget)
        self._record(problem, frame, plan, reserve)
        if self.budget_mb is not None and not self._probe:
            self._fit_earlier(frame)
            g = self._graphs[frame]
            if self.held_before(frame) + g.peak_bytes > int(self.budget_mb * MIB):  # an earlier one now holds more
                plan = self._within_budget(problem, frame, reserve, shave, floor)
                self._record(problem, frame, plan, reserve)
        log.info("%s", plan.summary())
        return plan

    def _record(self, problem: RematProblem, frame, plan: Plan, reserve: int) -> None:
        sim = simulate(problem, problem.indices(plan.recompute))
        # the eager loss exists only after the last graph's forward (NOTE [ The eager loss ] in joint.py)
        self._graphs[frame] = CompiledGraph(problem.name, frame, plan, problem, sim.boundary_bytes - problem.loss_bytes,
                                            sim.peak_bytes, reserve, held_output_bytes(problem))

    def _within_budget(self, problem: RematProblem, frame, reserve: int, shave: int = 0, floor: bool = False) -> Plan:
        """The plan of a graph under `budget_mb` less what the graphs before it hold (and less
        `shave`, or at its floor: see `plan`); where that is below its floor, the graph before it is
        re-planned to leave the floor free (recursively)."""
        limit, target = int(self.budget_mb * MIB), with_reserve(problem, reserve, self._after(frame))

        def solved() -> Plan:
            budget = max(0, limit - self.held_before(frame))
            plan = self._floor_plan(target) if floor else solve(target, max(0, budget - shave), self.solver)
            return dataclasses.replace(plan, budget_bytes=budget)

        try:
            return solved()
        except InfeasibleBudgetError as e:
            before = self._frames_before(frame)
            if not before:
                raise
            self._replan(self._graphs[before[-1]], e.min_feasible_bytes)
            return solved()

    def _frames_before(self, frame) -> list:
        frames = list(self._graphs)
        return frames[:frames.index(frame)] if frame in self._graphs else frames

    def _replan(self, g: CompiledGraph, reserve: int) -> None:
        """Plan graph `g` again with `reserve` bytes free at its boundary; it compiles again on its next call."""
        plan = self._within_budget(g.problem, g.frame, reserve)
        log.warning("fxckpt backend: %s re-planned to leave %.2f MiB for the graphs after it (recomputes %d nodes, "
                    "was %d); it is compiled again on its next call", g.name, reserve / MIB, len(plan.recompute),
                    len(g.plan.recompute))
        self._record(g.problem, g.frame, plan, reserve)
        for compiled in self._compiled.get(g.frame, ()):  # none when a graph was partitioned outside __call__
            compiled.replan(reserve)


# NOTE [ A split graph's floor is its pieces' together ]
# The pieces of a split graph are planned in turn, each for what the pieces before it leave, and
# the first that cannot be planned used to end the split with an error naming the floor of the
# pieces planned so far: on the Mixtral of NOTE [ Later graphs' outputs outlive their backward ],
# 228,744 B (the first piece's), then 497,176, 531,480, 629,800, 663,080, 672,056 and 739,888 B
# as each was passed back, before 741,936 B planned. Now (aot_eager) the pieces after a refused
# one are compiled at their own floors, only to be planned, and a refusal names the smallest
# budget at which all the graphs known then plan in turn (`_chain_floor`, on their problems; in
# `__call__`, so a later graph's refusal counts the graph refused too). Graphs Dynamo compiles
# later are unknown then and may raise the floor again: that Mixtral now names 663,080 B, then
# (with its loss graph) 741,936 B, which plans (measured 741,932 B).


# NOTE [ The floor plan is not the code's floor ]
# Under inductor a budget is refused at the smallest peak the code of the plans tried held, and
# the plan tried last is the problem's floor plan, whose simulated peak is the lowest. Inductor's
# code need not follow: on the pooling CNN of tests/test_compile.py the floor plan (39 values
# replayed, 2,099,896 B simulated) held 2,520,696 B, named as the floor, while the plan the solver
# makes for 2,520,696 B (32 replayed) held 2,394,000 B, measured 2,393,996 B: budgets in between
# were refused although a plan fit them. So before refusing, the solver's plan for the smallest
# peak held so far is compiled too, and again while that lowers it (`_lowest_code`).


# NOTE [ Parameter gradients are returned per graph ]
# AOTAutograd's backward graph returns every parameter's gradient at once, and autograd adds
# them into `.grad` only after it returns, so all of a graph's parameter gradients are live at
# the end of its backward, on top of what that backward still holds; eager autograd adds each
# gradient into `.grad` as soon as it is made. ResNet-50 (2x3x64x64, aot_eager): 94,048,524 B
# of parameter gradients in the compiled step's 97,324,064 B floor, where eager's whole peak is
# 32,927,256 B. So where a budget is below a graph's floor and the gradients are what that floor
# is made of (the parameters' bytes are at least SPLIT_SHARE of it), the graph is split into
# pieces of about 1/PIECES of its parameters' bytes (`split_graph`: DDPOptimizer's split, which
# DDP uses to hand gradients to its all-reduce early), each an AOTAutograd graph of its own
# whose gradients are accumulated when its backward returns; the pieces share the budget as
# graph breaks do (NOTE [ Graph breaks share the budget in first-run order ]), keyed by
# (frame, piece), and, as there, an infeasible budget's error names the floor of the pieces
# planned so far. ResNet-50 split so (11 pieces), each piece at its own floor: predicted
# 32,046,112 B, allocator 31,915,040 B, gradients bitwise eager's. Feasible budgets never split, nor graphs whose floor is mostly activations
# (the dropout MLP of tests/test_compile.py: parameters 57% of its floor): a cut costs inductor
# the fusions across it, and a value crossing a cut is counted as held to the end of the step.
PIECES = 16
SPLIT_SHARE = 0.75


def _parameter_bytes(gm: fx.GraphModule) -> int:
    """Bytes of the trainable parameters a Dynamo graph takes (its parameter gradients); 0 where
    it is not split: one parameter or none, or a piece of DDP's own split already."""
    ctx = torch._guards.TracingContext.try_get()
    if ctx is not None and getattr(ctx, "ddp_optimizer_ctx", None) is not None:
        return 0
    params = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
    sizes = [p.numel() * p.element_size() for p in params if isinstance(p, torch.nn.Parameter) and p.requires_grad]
    return sum(sizes) if len(sizes) > 1 else 0


# NOTE [ Pieces keep the random numbers' order ]
# DDPOptimizer's buckets are ranges of the graph, but `split_module` runs the pieces in an order
# of their dependencies, and a piece that depends on no earlier one may run first: BART's decoder
# embedding and its dropout ran before the encoder's layers, so every dropout drew other numbers
# than eager's under the same seed (loss 4.8749 against 4.8935, the shared embedding's gradient
# 0.19 off, at 70% of its un-checkpointed peak, aot_eager). So the pieces, compiled in the order
# they run, must draw in the graph's order, or the graph is not split (`RandomOrderChanged`).
_RANDOM = re.compile(r"dropout|^rand|bernoulli|^normal_?$|multinomial|uniform|exponential|cauchy|geometric|poisson|"
                     r"random_")


def _random_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes of a Dynamo graph that draw random numbers (by their function's name)."""
    def name(n):
        target = n.target if n.op in ("call_function", "call_method") else None
        return getattr(target, "__name__", target if isinstance(target, str) else "")
    return [n for n in gm.graph.nodes if _RANDOM.search(name(n) or "")]


class RandomOrderChanged(FxckptError):
    """A split would draw random numbers in another order than the graph (NOTE [ Pieces keep the
    random numbers' order ]); raise the budget to the whole graph's floor."""


def split_graph(gm: fx.GraphModule, example_inputs, piece_bytes: int, compile_graph, frame,
                reads: dict | None = None):
    """`gm` cut into pieces of at least `piece_bytes` of parameters (DDPOptimizer's buckets, in
    reverse graph order), piece `k` compiled by `compile_graph(piece, inputs, (frame, k))` (NOTE
    [ Parameter gradients are returned per graph ]); `RandomOrderChanged` where the pieces would
    draw random numbers out of the graph's order. `reads[(frame, k)]`: what piece k reads that
    requires grad and an earlier piece made, as (that piece's key, a key for the value, its bytes)."""
    import itertools

    from torch._dynamo.backends.distributed import DDPOptimizer

    pieces = itertools.count()
    for a in torch.utils._pytree.tree_leaves(gm.graph.output_node().args):  # NOTE [ Outputs only later pieces read ]
        if isinstance(a, fx.Node):
            a.meta["fxckpt_escapes"] = True
    for n in gm.graph.nodes:  # split_module renames nodes, and copies their meta
        n.meta["fxckpt_name"] = n.name
    order = [n.name for n in _random_nodes(gm)]
    drawn = 0
    made: dict[str, int] = {}  # a value's name -> the piece that computes it

    def compile_piece(piece: fx.GraphModule, inputs):
        nonlocal drawn
        mine = [n.meta.get("fxckpt_name") for n in _random_nodes(piece)]
        if mine != order[drawn:drawn + len(mine)]:
            raise RandomOrderChanged(f"a piece draws {mine[:3]} where the graph draws {order[drawn:drawn + 3]} next")
        drawn += len(mine)
        k = next(pieces)
        if reads is not None:  # NOTE [ Later graphs' outputs outlive their backward ]
            reads[(frame, k)] = [((frame, made[name]), (frame, name), val.untyped_storage().nbytes())
                                 for n in piece.graph.nodes
                                 if n.op == "placeholder" and (name := n.meta.get("fxckpt_name")) in made
                                 and isinstance(val := n.meta.get("example_value"), torch.Tensor) and val.requires_grad]
        made.update({n.meta["fxckpt_name"]: k for n in piece.graph.nodes
                     if n.op not in ("placeholder", "output") and "fxckpt_name" in n.meta})
        return compile_graph(piece, inputs, (frame, k))
    split = DDPOptimizer(bucket_bytes_cap=piece_bytes, first_bucket_cap=piece_bytes, backend_compile_fn=compile_piece)
    return split.compile_fn(gm, example_inputs)


# NOTE [ Outputs only later pieces read ]
# A piece of a split graph returns what the pieces after it read and what the whole graph
# returns. Only the latter reach the caller: `split_module`'s code drops the former after their
# last reader, and autograd keeps them only while a later piece saves them, whose backward runs
# before this piece's. Counted as outputs held to the end of the step, they were live again in
# their own piece's backward: on a 2-layer Mixtral split into 5 pieces, a 65,536 B expert
# activation in the backward of the piece that made it. Such an output is held across the
# piece's boundary (the later pieces run while it lives) and released where its backward starts
# (the "bwd tangents" node saves it). Found on the Dynamo graph (`split_graph` marks the whole
# graph's outputs, `split_module` copies the mark) and matched to the joint graph's forward
# outputs, whose user outputs come last (after tokens and mutated inputs; intermediate bases
# and functionalized RNG offsets would follow them: where the shapes do not match, every output
# stays held).
def _passing_outputs(gm: fx.GraphModule) -> list[tuple[bool, tuple | None]]:
    """Per output of a piece: whether only later pieces read it, and its shape (None: not a tensor)."""
    out = []
    for a in torch.utils._pytree.tree_leaves(gm.graph.output_node().args):
        val = a.meta.get("example_value") if isinstance(a, fx.Node) else None
        tensor = isinstance(val, torch.Tensor)
        passing = tensor and a.op != "placeholder" and not a.meta.get("fxckpt_escapes")
        out.append((passing, tuple(val.shape) if tensor else None))
    return out


def _passing_positions(joint: fx.GraphModule, num_fwd_outputs: int, passing) -> frozenset[int]:
    """The positions among the joint graph's forward outputs of the outputs only later pieces
    read (NOTE [ Outputs only later pieces read ]); none where they cannot be matched."""
    if not passing or not any(p for p, _ in passing) or len(passing) > num_fwd_outputs:
        return frozenset()
    outputs = joint.graph.output_node().args[0][:num_fwd_outputs]
    base = num_fwd_outputs - len(passing)
    for (_, shape), a in zip(passing, outputs[base:]):
        val = a.meta.get("val") if isinstance(a, fx.Node) else None
        if shape is not None and (not isinstance(val, torch.Tensor) or tuple(val.shape) != shape):
            return frozenset()
    return frozenset(base + i for i, (p, _) in enumerate(passing) if p)


# NOTE [ An output viewing an input ]
# AOTAutograd makes an output that views a graph input outside the graph, so its backward (a
# slice's, say) runs before the graph's and makes a gradient of the whole input, which waits for
# the backward of whatever made the input: through this graph's backward, which never sees it.
# A graph returning `h[:, :64]` of a 512 KiB `h` an earlier graph made measured 2,884,616 B at
# the allocator at the 2,360,328 B floor named. Such gradients are counted in this graph's
# backward as the later graphs' outputs are (`_after`).
def _viewed_input_bytes(gm: fx.GraphModule, example_inputs) -> int:
    """Bytes of the inputs of `gm` that autograd made (not leaves) and that its outputs view."""
    values = [n.meta.get("example_value") for n in gm.graph.find_nodes(op="placeholder")]
    viewed = set()
    for a in torch.utils._pytree.tree_leaves(gm.graph.output_node().args):
        val = a.meta.get("example_value") if isinstance(a, fx.Node) else None
        base = val._base if isinstance(val, torch.Tensor) else None
        viewed.update(i for i, v in enumerate(values) if base is not None and v is base and i < len(example_inputs)
                      and isinstance(t := example_inputs[i], torch.Tensor) and t.requires_grad and not t.is_leaf)
    return sum(example_inputs[i].numel() * example_inputs[i].element_size() for i in viewed)


def _cause(error: BaseException | None, kind: type):
    """The `kind` error behind the errors Dynamo and AOTAutograd wrap it in, or None."""
    while error is not None and not isinstance(error, kind):
        error = getattr(error, "inner_exception", None) or error.__cause__
    return error


def _infeasible(error: BaseException | None) -> InfeasibleBudgetError | None:
    """The InfeasibleBudgetError behind the errors Dynamo and AOTAutograd wrap it in, or None."""
    return _cause(error, InfeasibleBudgetError)


def _custom_partitioner_base():
    try:
        from torch._inductor.custom_graph_pass import CustomPartitionerFn
    except ImportError:  # torch without the hook: aot_eager still works
        return object
    return CustomPartitionerFn


class _Partitioner(_custom_partitioner_base()):
    """Inductor's `CustomPartitionerFn` (and AOTAutograd's `partition_fn`): the joint graph to a
    forward and a backward graph that recompute what fxckpt's plan recomputes."""

    def __init__(self, owner: FxckptBackend, frame, reserve: int = 0, shave: int = 0, floor: bool = False,
                 passing: list | None = None, avoid: frozenset = frozenset()):
        self.owner, self.frame, self.reserve = owner, frame, reserve
        self.avoid = avoid  # plans whose code was already found over budget (`_SamePlan`)
        self.passing = passing  # per output of the Dynamo graph: (only later pieces read it, its shape)
        self.shave, self.floor = shave, floor
        self.last: Plan | None = None
        self.loss_bytes = 0  # the chosen problem's (NOTE [ The eager loss ] in joint.py)
        self.recorder = BufferPlanRecorder()  # inductor's code for the two graphs, read by `held`
        self._names: tuple[frozenset, frozenset, dict] | None = None  # see `held`

    def __deepcopy__(self, memo):  # inductor deep-copies its config: keep pointing at our backend
        return self

    def __reduce__(self):
        # Inductor's FX-graph cache key pickles its config, this object included: what the compiled
        # code depends on is the uuid (pickling the backend's state, plans and graphs, failed with
        # a KeyError in the cache pickler's fast mode and failed every inductor compile).
        return (str, (self.uuid(),))

    def uuid(self) -> str:
        return self.owner.uuid() + f":{self.reserve}:{self.shave}:{self.floor}"

    def __call__(self, joint: fx.GraphModule, joint_inputs, *, num_fwd_outputs: int,
                 static_lifetime_input_indices=None, **kwargs):
        fusion = self.owner.compiler == "inductor"
        passing = frozenset() if fusion else _passing_positions(joint, num_fwd_outputs, self.passing)
        fw, bw = partition(joint, num_fwd_outputs=num_fwd_outputs,
                           static_lifetime_input_indices=static_lifetime_input_indices, choose=self._choose,
                           fusion=fusion, passing=passing)
        if self.last is not None:
            self._names = boundary_names(fw, bw, num_fwd_outputs)
        return fw, bw

    def held(self) -> StepBuffers | None:
        """What inductor's code for the forward and backward holds in the step (None: nothing was planned)."""
        if self._names is None:
            return None
        return step_buffers(self.recorder, *self._names, loss_bytes=self.loss_bytes)

    def _choose(self, problem: RematProblem) -> Plan:
        self.loss_bytes = problem.loss_bytes
        self.owner._pending = (self.frame, problem)
        self.last = self.owner.plan(problem, self.frame, self.reserve, self.shave, self.floor)
        if self.last.recompute in self.avoid:
            raise _SamePlan()
        return self.last


class _SamePlan(Exception):
    """The plan is one whose code was already found over budget: not compiled again."""


# NOTE [ Aiming lower until the plan changes ]
# Where inductor's code holds a few bytes more than the problem predicts, the graph is planned
# again aiming lower by the excess; plans are discrete, so aiming 34 B lower gave the same plan,
# and the backend went straight to the floor plan: the small ResNet of tests at 80% (12.48 MiB)
# ended at 8.82 MiB and +14.5% FLOPs where a plan at +0.6% was 34 B over. Now a plan already
# compiled stops the compile at the partitioner (`_SamePlan`, no inductor codegen) and the aim
# doubles lower, up to MAX_REPEATS times, before the floor plan.


# NOTE [ A frame's graphs ]
# Dynamo compiles a frame again for another grad mode, training flag or input shape and keeps
# every graph it compiled, each called where its guards hold. A re-plan (a later graph asking for
# a reserve) went to the frame's latest graph only: after a no_grad forward (an inference graph,
# nothing planned), to that one, and the training graph kept its old plan: a two-branch net (a
# data-dependent `if`; a no_grad forward before the first step down the other branch) measured
# 5,771,272 B at the allocator against a 4,722,697 B budget. Now every planned graph of the frame
# compiles again with the reserve on its next call (4,198,408 B).


class _Replannable:
    """A compiled graph that compiles again, with a reserve at its boundary, on the first call
    after a later graph re-planned it (NOTE [ Graph breaks share the budget in first-run order ])."""

    def __init__(self, owner: FxckptBackend, gm: fx.GraphModule, frame, fn):
        self.owner, self.gm, self.frame, self.fn = owner, gm, frame, fn
        self.reserve: int | None = None
        self.watch = RunWatch(f"compiled graph {frame}", self._boundary_bytes, owner._warned)
        self.ran = False  # once on real tensors (`FxckptBackend._ran`)

    def _boundary_bytes(self) -> int:
        g = self.owner._graphs.get(self.frame)
        return g.boundary_bytes if g is not None else 0

    def replan(self, reserve: int) -> None:
        self.reserve = reserve

    def __call__(self, *args):
        if self.reserve is not None:
            reserve, self.reserve = self.reserve, None
            self.fn = self.owner._compile_planned(self.gm, list(args), self.frame, reserve)
        self.watch.before(args)
        out = self.fn(*args)
        self.watch.after(out)
        if not self.ran and torch.is_grad_enabled() and not _fake(args):
            self.ran = True
            self.owner._ran(self.frame, args, out)
        return out


def partition(joint: fx.GraphModule, *, num_fwd_outputs: int, static_lifetime_input_indices=None, choose,
              fusion: bool = False, passing: frozenset[int] = frozenset()):
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
    copy_running_stats(joint.graph)  # NOTE [ A replayed batch norm reads copies of the running statistics ]
    joint.recompile()
    P.force_save_collectives(joint)
    P.force_save_effectful_ops(joint)
    P.force_save_bw_mutation_src(joint)
    static = static_lifetime_input_indices or []
    info = P.classify_nodes(joint, static, num_fwd_outputs)
    if not info.required_bw_nodes:
        return P.default_partition(joint, None, num_fwd_outputs=num_fwd_outputs,
                                   static_lifetime_input_indices=static)
    specialize_sizes(joint)
    with real_values(joint, enabled=not fusion):
        jp = build_problem(joint, info, num_fwd_outputs, fusion=fusion, passing=passing)
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
        verify: on the first call of each graph, compare gradients with the same graph run with
            eager kernels and nothing recomputed; on a mismatch, warn and fall back to inductor
            with `layout_optimization` off and torch's default partitioner where that matches,
            else to the eager reference. Under inductor, random numbers are aten's
            (`fallback_random`), so that dropout can be compared.
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


# NOTE [ The backend's name ]
# `backend="fxckpt"` resolves through the `torch_dynamo_backends` entry point, which Dynamo reads
# from package metadata once per process (cached): the first distribution named fxckpt on
# sys.path wins. Where that metadata lacks the entry point (a source tree on PYTHONPATH, or a
# stale fxckpt.egg-info in the working directory shadowing the installed one, as pytest's
# `pythonpath = ["."]` puts the repository first), the name never resolved: InvalidBackend.
# So importing this module registers the name itself where the metadata did not; where it did,
# it leaves the name to the entry point (registering it too would make Dynamo's load of the entry
# point fail as a duplicate name).
def _register_name() -> None:
    if "fxckpt" not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(fxckpt_backend, name="fxckpt")


_register_name()
