"""The peak-memory model of fxckpt's runtime: every plan's prediction comes from here.

NOTE [ What the runtime does, and so what is simulated ]
Forward runs every node once. A buffer lives while the forward code still reads it, and past
that while backward holds it: autograd saves it (its producer is kept), or an unmaterialized
recipe needs it as an input. A node chosen for recompute is never held: each saved tensor it
produced is packed as a *recipe* (saved-tensor hooks), and a recipe needed to rebuild another
recipe is held by that one. Backward visits nodes in reverse order. Unpacking a recipe
materializes it once: inputs first (recursively), then the node, whose value stays cached until
the last holder of the recipe lets go; after materializing, a recipe drops its inputs. Every
buffer is freed when its last holder goes, exactly as CPython's reference counts free them.
Gradients and backward temporaries do not depend on the plan: the problem carries them as
traced on fake tensors (`Grad` lifetimes, per-node backward transients, the backward order).

NOTE [ Fused buffers ]
A compiler that fuses kernels (inductor) never writes most pointwise intermediates to memory:
a value computed inside a fused kernel and read only by fusible kernels exists in memory only
where it crosses from the forward graph into the backward graph (saved for backward, or held
by a recipe as a kept input of a recomputed node). Such a buffer is marked `Buffer.fused`: in
forward it is allocated only when something holds it past forward, and recomputing its producer
in backward allocates nothing (the replay fuses into the backward kernels that read it), but
those kernels read its inputs: a recomputed node whose buffers are all fused keeps its inputs
until its recipe is released, not only until it is materialized (the tiny CNN's ReLU output, the
input of a recomputed mask inlined into a kernel 43 ops later, was held 1 MiB past the
prediction). The two sides are compiled as two graphs and fused apart: a value may be written
in forward (an extern kernel reads it there, or its forward readers make inductor realize it)
and still be computed inside the backward kernels that read it when replayed. Such a buffer is
marked `Buffer.inlined`: allocated in forward as any other, but replayed as a fused one (no
buffer, its inputs held by its recipe, and free: NOTE [ One recompute cost ]). This
is the one difference between the eager runtime's memory model and the fused compiled step's,
so both are this simulator, chosen per buffer by the problem's builder (`fxckpt.compile.joint`
marks buffers for inductor, never for the eager runtime or `aot_eager`): every solver, the
infeasibility error and the plan's prediction then judge one model of the step that runs.

NOTE [ Tuple elements die alone ]
The eager runtime's recipe of a node holds the node's whole output until its last holder lets
go. A compiled backward is plain code: a replayed multi-output op (a training-mode batch norm:
output, mean, rstd and new running statistics) is one tuple whose elements the code reads
through getitems and frees each after its own last reader. The compile path marks such
buffers `Buffer.element`; a materialized recipe of the getitem that reads one keeps it (its
*keeper*, which saved slots unpack), not the op's, and an element no pending keeper will take is
freed right after the op runs. Held together, the tiny CNN's recomputed batch-norm output stayed
live through the next convolution's backward until the norm's backward, which reads only its
64-byte statistics: predicted 623,664 B, measured 572,400 B (an AVX2 CPU, whose convolution
scratch gave that plan).

NOTE [ RNG states are activation memory ]
A recipe of a random node (dropout, attention with dropout) keeps the generator state the node
drew from, to replay the same numbers: on CPU a copy of `torch.get_rng_state()`, 5,056 bytes,
that the allocator sees and the budget must cover (on CUDA the states are host memory, outside
the device's budget, and `Node.recipe_bytes` is 0). A seed cannot stand in for it (the model's
own stream must continue as if nothing were recomputed), so it is charged: from the node's
forward (the runtime copies it just before the node runs) until its recipe lets its inputs go,
after its replay or when released unreplayed. A replay first copies the generator's current
state to restore it afterwards, then drops the recipe's copy before the node runs: for that
moment two copies are live with none of the node's outputs yet, so a replay's step counts
`max(transient, recipe_bytes - bytes it allocated)` on top of its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress
from typing import Iterable

from .problem import RematProblem


@dataclass(frozen=True)
class Simulation:
    peak_bytes: int
    peak_at: str  # "forward <node>", "backward <node>" or "recompute <node>"
    forward_peak_bytes: int
    boundary_bytes: int  # held across the forward/backward boundary
    recompute_flops: int
    recomputed: tuple[str, ...]  # nodes materialized in backward, in order
    recompute_cost: int = 0  # what the solvers minimize (`RematProblem.cost`: ns or FLOPs)
    recompute_seconds: float | None = None  # estimated, where the nodes carry times
    timeline: tuple[tuple[int, str], ...] = field(default=(), repr=False)
    live_at_peak: frozenset[int] = field(default=frozenset(), repr=False)  # buffers


def needed_recipes(problem: RematProblem, recompute: frozenset[int]) -> frozenset[int]:
    """Nodes whose recipe the runtime must build: those whose buffers backward saves, and
    the remat inputs of those, transitively."""
    src, st = problem.source, step_facts(problem)
    inputs, slots = st.inputs, st.slots
    stack = [x for r in recompute for x in slots.get(r, ())]
    need: set[int] = set()
    while stack:  # every simulation asks: loops, not generators
        p = stack.pop()
        if p in need:
            continue
        need.add(p)
        for a in inputs[p]:
            if src[a] in recompute:
                stack.append(a)
    return frozenset(need)


def materialized(problem: RematProblem, recompute: frozenset[int]) -> frozenset[int]:
    """Nodes backward replays for plan `recompute`: the last writers of the saved buffers of
    recomputed producers (for the backwards that run) and the remat inputs of those,
    transitively. The simulator replays exactly these, once each."""
    src, last = problem.source, step_facts(problem).keeper
    nodes, buffers = problem.nodes, problem.buffers
    stack = [last[b] for c in problem.backward_order for b in nodes[c].saves if buffers[b].producer in recompute]
    seen: set[int] = set()
    while stack:
        x = stack.pop()
        if x not in seen:
            seen.add(x)
            stack.extend(a for a in nodes[x].inputs if src[a] in recompute)
    return frozenset(seen)


def recompute_cost(problem: RematProblem, recompute: Iterable[int]) -> int:
    """The recompute cost of a plan, the one every solver minimizes (NOTE [ One recompute cost ]
    in `fxckpt.core.problem`); equal to `simulate(problem, recompute).recompute_cost` without
    simulating.

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> p = random_problem(10, seed=0)
        >>> recompute_cost(p, {2, 3}) == simulate(p, {2, 3}).recompute_cost
        True
    """
    cost = problem.cost
    return sum(cost[x] for x in materialized(problem, frozenset(recompute)))


def check_plan(problem: RematProblem, recompute: Iterable[int]) -> frozenset[int]:
    recompute = frozenset(recompute)
    for i in recompute:
        node = problem.nodes[i]
        if not node.creates:
            raise ValueError(f"node {node.name!r} allocates nothing: only its producer can be recomputed")
        if node.ban is not None:
            raise ValueError(f"node {node.name!r} cannot be recomputed: {node.ban}")
    return recompute


def simulate(problem: RematProblem, recompute: Iterable[int] = (), *, timeline: bool = False,
             live_at_peak: bool = False, cap: int | None = None) -> Simulation:
    """Predict the activation peak and recompute FLOPs of recomputing `recompute` (node indices).

    With `cap`, the run stops as soon as the live bytes reach `cap` and reports a peak of at
    least `cap` (a solver asking "is this lower?" needs no more).

    Example:
        >>> from fxckpt.core.problem import RematProblem, Node, Buffer
        >>> p = RematProblem((Node("a", "mm", creates=(0,), value=(0,), requires_grad=True, saves=(0,)),),
        ...                  (Buffer("a", 2**20, 0),))
        >>> simulate(p).peak_bytes
        1048576
    """
    R = check_plan(problem, recompute)
    run = _Run(problem, R, timeline, cap)
    peak_step = run.go()
    live = frozenset()
    if live_at_peak:
        again = _Run(problem, R, False)
        again.go(stop=peak_step)
        live = frozenset(b for b, c in enumerate(again.alive) if c)
    return _result(problem, run, live)


def _result(problem: RematProblem, run: "_Run", live: frozenset[int] = frozenset()) -> Simulation:
    return Simulation(
        peak_bytes=run.peak, peak_at=run.label(run.peak_event), forward_peak_bytes=run.forward_peak,
        boundary_bytes=run.boundary, recompute_flops=run.flops, recomputed=tuple(run.recomputed),
        recompute_cost=run.cost, recompute_seconds=run.seconds if problem.timed else None,
        timeline=tuple((b, run.label(e)) for b, e in run.events), live_at_peak=live,
    )


@dataclass(frozen=True)
class StepFacts:
    """What a simulated run needs that does not depend on the plan, computed once per problem
    (`step_facts`). Solvers that reason about the simulator's model read these too.

    Attributes:
        nbytes: bytes of each buffer.
        producer: the node that allocates each buffer.
        saves: per node, the buffers its backward saves (empty without a backward).
        saved_by: per buffer, how many nodes' backwards save it (held while its producer is kept).
        output_holds: per buffer, how many graph outputs hold it (alive to the step's end).
        holders: per buffer, `saved_by` + `output_holds`: its holders that last into backward
            when its producer is kept.
        forward_last: per buffer, the last forward step that reads it (any alias), or creates it.
        ends: per node, the buffers whose `forward_last` it is.
        cache: per node, the buffers a materialized recipe of it keeps (its value and creations,
            less tuple elements another node keeps: NOTE [ Tuple elements die alone ]).
        keeper: per buffer, the node whose recipe a saved slot of it unpacks (its last writer,
            or for a tuple element the getitem that reads it).
        inputs: per node, its input nodes without repeats, in order.
        fused: per buffer, whether it is in memory only across the forward/backward boundary.
        replay_free: per buffer, whether a replay of its producer writes it nowhere (`fused` or
            `Buffer.inlined`).
        inlined: `RematProblem.inlined` (a replay computed in its readers' kernels, reading its
            inputs there).
        born, dying: per node, the gradient bytes its backward allocates / frees (`Grad`s).
        slots: per producer of a saved buffer, the last writer of that buffer once per saved
            slot (the recipe each slot packs when the producer is recomputed).
        made: per producer, the buffers it allocates.
        forward_steps: per node, (creates, recipe bytes, bytes its forward saves besides its
            outputs, transient bytes); backward_steps: per node in backward order, (node, saves,
            their producers, unpack bytes, transient bytes, replay transient bytes, gradient
            bytes born less dying, extra saved bytes): what `_Run`'s loops read of each node
            (NOTE [ The simulator's loops ]).
    """

    nbytes: list[int]
    producer: list[int]
    saves: list[tuple[int, ...]]
    saved_by: list[int]
    output_holds: list[int]
    holders: list[int]
    forward_last: list[int]
    ends: list[tuple[int, ...]]
    cache: list[tuple[int, ...]]
    keeper: list[int]
    inputs: list[tuple[int, ...]]
    fused: list[bool]
    replay_free: list[bool]
    inlined: tuple[bool, ...]
    born: list[int]
    dying: list[int]
    slots: dict[int, list[int]]
    made: dict[int, list[int]]
    forward_steps: tuple[tuple, ...] = ()
    backward_steps: tuple[tuple, ...] = ()


def _step_facts(p: RematProblem) -> StepFacts:
    saves = [tuple(n.saves) if n.requires_grad else () for n in p.nodes]
    saved_by = [0] * len(p.buffers)  # savers holding each buffer (when its producer is kept)
    for sv in saves:
        for b in set(sv):
            saved_by[b] += 1
    output_holds = [0] * len(p.buffers)
    for n in p.nodes:
        if n.is_output:
            for b in n.value:
                output_holds[b] += 1
    last = [-1] * len(p.buffers)  # forward: read until the last reader of any alias
    for v, node in enumerate(p.nodes):
        end = max(p.users[v], default=v)
        for b in node.value:
            last[b] = max(last[b], end)
        for b in node.creates:  # internals outside the value die with the step unless held
            last[b] = max(last[b], v)
    born = [0] * len(p.nodes)
    dying = [0] * len(p.nodes)
    for g in p.grads:
        if g.dies != g.born:
            born[g.born] += g.nbytes
            if g.dies >= 0:  # -1: lives to the end of the step
                dying[g.dies] += g.nbytes
    keeper = list(p.last_writer)
    for v, node in enumerate(p.nodes):  # NOTE [ Tuple elements die alone ]
        if not node.creates and len(node.value) == 1:
            b = node.value[0]
            if p.buffers[b].element and keeper[b] == p.buffers[b].producer:
                keeper[b] = v
    slots: dict[int, list[int]] = {}
    for sv in saves:
        for b in sv:
            slots.setdefault(p.buffers[b].producer, []).append(keeper[b])
    ends: list[list[int]] = [[] for _ in p.nodes]
    for b, end in enumerate(last):
        if end >= 0:
            ends[end].append(b)
    made: dict[int, list[int]] = {}
    for b, buf in enumerate(p.buffers):
        made.setdefault(buf.producer, []).append(b)
    return StepFacts(
        nbytes=[b.nbytes for b in p.buffers], producer=[b.producer for b in p.buffers], saves=saves,
        saved_by=saved_by, output_holds=output_holds, holders=[s + o for s, o in zip(saved_by, output_holds)],
        forward_last=last, ends=[tuple(e) for e in ends],
        cache=[tuple(b for b in set(n.value) | set(n.creates) if keeper[b] == v or not p.buffers[b].element)
               for v, n in enumerate(p.nodes)], keeper=keeper,
        inputs=[tuple(dict.fromkeys(n.inputs)) for n in p.nodes], fused=[b.fused for b in p.buffers],
        replay_free=[b.fused or b.inlined for b in p.buffers],
        inlined=p.inlined, born=born, dying=dying,
        slots=slots, made=made,
        forward_steps=tuple((n.creates, n.recipe_bytes, n.extra_saved_bytes if n.requires_grad else 0,
                             n.transient_bytes) for n in p.nodes),
        backward_steps=tuple((c, saves[c], frozenset(p.buffers[b].producer for b in saves[c]),
                              p.nodes[c].bwd_unpack_bytes, p.nodes[c].bwd_transient_bytes,
                              p.nodes[c].bwd_replay_transient_bytes, born[c] - dying[c],
                              p.nodes[c].extra_saved_bytes) for c in p.backward_order))


# NOTE [ Step facts live on the problem ]
# Solvers simulate one problem thousands of times; its plan-independent facts are computed once
# and kept on the problem object itself, as its own cached properties are (`users`, `source`):
# they live and die with the problem, and no global cache can hand a new problem the facts of
# a dead one whose id() it reuses.
_FACTS = "_fxckpt_step_facts"


def step_facts(problem: RematProblem) -> StepFacts:
    """The plan-independent facts of ``problem``'s simulated step (computed on first use).

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> p = random_problem(10, seed=0)
        >>> step_facts(p) is step_facts(p), len(step_facts(p).nbytes) == len(p.buffers)
        (True, True)
    """
    facts = problem.__dict__.get(_FACTS)
    if facts is None:  # written to the instance's __dict__, as functools.cached_property does
        facts = problem.__dict__[_FACTS] = _step_facts(problem)
    return facts


@dataclass(frozen=True)
class Mark:
    """One step of a simulated run: a node's forward, its backward, or a recompute."""

    kind: str  # "forward", "backward" or "recompute"
    node: int
    live_bytes: int  # live at this step, its transient bytes included
    live_buffers: frozenset[int]  # the buffers counted in it


def step_marks(problem: RematProblem, recompute: Iterable[int] = ()) -> tuple[Mark, ...]:
    """Every step of the simulated run of a plan, with the bytes and the buffers live at it (what
    `simulate` maximizes over; the ILP builds its liveness bounds from the empty plan's marks).

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> p = random_problem(10, seed=0)
        >>> max(m.live_bytes for m in step_marks(p)) == simulate(p).peak_bytes
        True
    """
    run = _Run(problem, check_plan(problem, recompute), False, marks=[])
    run.go()
    return tuple(run.marks)


class _Run:
    """One pass over the step. `alive[b]` marks buffers counted in `live`."""

    def __init__(self, problem: RematProblem, R: frozenset[int], record: bool, cap: int | None = None,
                 marks: list[Mark] | None = None, watch: list[bool] | None = None):
        self.p, self.R, self.record, self.cap = problem, R, record, cap
        # per node, whether its steps are recorded; None: every step (`phase_peaks`)
        self.watch = watch if watch is not None else [record] * len(problem.nodes)
        self.marks = marks  # a list to append every step's `Mark` to, or None
        self.st = step_facts(problem)
        self.src, self.last = problem.source, self.st.keeper
        self.need = needed_recipes(problem, R)
        self.alive = [False] * len(problem.buffers)
        self.rc = list(self.st.holders)  # holders after forward: autograd, recipes, caches
        self.held: dict[int, set[int]] = {}  # per needed recipe, the buffers it holds (`_held_inputs`)
        self.live = self.peak = self.forward_peak = self.boundary = self.flops = self.cost = 0
        self.seconds = 0.0
        self.peak_event, self.step, self.stop = ("", -1), 0, -1
        self.events: list[tuple[int, tuple[str, int]]] = []
        self.recomputed: list[str] = []

    def label(self, event) -> str:
        kind, i = event
        return f"{kind} {self.p.nodes[i].name}" if kind else ""

    def _mark(self, kind: str, i: int, extra: int = 0) -> None:
        now = self.live + extra
        if self.marks is not None:
            self.marks.append(Mark(kind, i, now, frozenset(compress(range(len(self.alive)), self.alive))))
        if self.record:
            self.events.append((now, (kind, i)))
        if now > self.peak:
            self.peak, self.peak_event, self.peak_step = now, (kind, i), self.step
            if self.cap is not None and now >= self.cap:
                raise _Stop
        if self.step == self.stop:
            raise _Stop
        self.step += 1

    def _drop(self, b: int) -> None:
        self.rc[b] -= 1
        if self.rc[b] == 0 and self.alive[b]:
            self.alive[b] = False
            self.live -= self.st.nbytes[b]

    def go(self, stop: int = -1) -> int:
        self.stop, self.peak_step = stop, 0
        try:
            self._forward()
            self._backward()
        except _Stop:
            pass
        return self.peak_step

    def _held_inputs(self, q: int):
        """Buffers an unmaterialized recipe of q holds: values of its non-remat inputs."""
        nodes, src, R = self.p.nodes, self.src, self.R
        return {b for a in self.st.inputs[q] if src[a] not in R for b in nodes[a].value}

    def _forward(self) -> None:
        p, R, st, n = self.p, self.R, self.st, len(self.p.nodes)
        rc, saved_by, made, src, inputs = self.rc, st.saved_by, st.made, self.src, st.inputs
        for x in R:
            for b in made.get(x, ()):
                rc[b] -= saved_by[b]
        self.recipe_rc = recipe_rc = [0] * n
        for q in self.need:  # what each holds is asked again when it lets go (`_drop_inputs`)
            held = self.held[q] = self._held_inputs(q)
            for b in held:
                rc[b] += 1
            for a in inputs[q]:
                if src[a] in R:
                    recipe_rc[a] += 1
        for x in R:
            for y in st.slots.get(x, ()):  # one packed recipe per saved slot
                recipe_rc[y] += 1
        alive, nbytes, ends = self.alive, st.nbytes, st.ends
        fused, need = st.fused, self.need
        quiet = self.marks is None  # a step below the peak then only counts, unless watched
        watch, stop = self.watch, self.stop
        live = self.live  # NOTE [ The simulator's loops ]
        for t, (creates, recipe_bytes, extra, transient) in enumerate(st.forward_steps):
            for b in creates:
                if not alive[b] and (rc[b] or not fused[b]):  # NOTE [ Fused buffers ]
                    alive[b] = True
                    live += nbytes[b]
            if t in need:  # NOTE [ RNG states are activation memory ]
                live += recipe_bytes
            live += extra
            if quiet and not watch[t] and live + transient <= self.peak and self.step != stop:
                self.step += 1
            else:
                self.live = live
                self._mark("forward", t, transient)
            for b in ends[t]:  # no holder past forward (rc is fixed above): freed after its last reader
                if not rc[b] and alive[b]:
                    alive[b] = False
                    live -= nbytes[b]
        self.live = live
        self.forward_peak = self.peak
        self.live += p.loss_bytes
        self.boundary = self.live
        self.cached = [False] * n
        self.materialized_inputs_dropped = [False] * n

    def _release_recipe(self, x: int) -> None:
        self.recipe_rc[x] -= 1
        if self.recipe_rc[x]:
            return
        if self.cached[x]:
            for b in self.st.cache[x]:
                self._drop(b)
            if self.st.inlined[x]:  # NOTE [ Fused buffers ]: its readers read its inputs
                self._drop_inputs(x)
        else:  # never materialized: let its inputs go, and an element it would have kept
            for b in self.st.cache[x]:
                if self.p.buffers[b].element and self.alive[b] and not self.rc[b]:
                    self.alive[b] = False
                    self.live -= self.st.nbytes[b]
            self._drop_inputs(x)

    def _drop_inputs(self, x: int) -> None:
        if self.materialized_inputs_dropped[x]:
            return
        self.materialized_inputs_dropped[x] = True
        if x in self.need:
            self.live -= self.p.nodes[x].recipe_bytes
        for b in self.held[x]:
            self._drop(b)
        for a in self.st.inputs[x]:
            if self.src[a] in self.R:
                self._release_recipe(a)

    def _materialize(self, x: int) -> None:
        if self.cached[x]:
            return
        node, st, R, src, cached = self.p.nodes[x], self.st, self.R, self.src, self.cached
        for a in node.inputs:
            if src[a] in R and not cached[a]:
                self._materialize(a)
        rc, alive, nbytes, keeper, replay_free = self.rc, self.alive, st.nbytes, st.keeper, st.replay_free
        for b in st.cache[x]:
            rc[b] += 1
        before = live = self.live
        for b in node.creates:
            if not replay_free[b] and not alive[b]:  # NOTE [ Fused buffers ]
                alive[b] = True
                live += nbytes[b]
        self.live = live
        cached[x] = True
        recipe_rc = self.recipe_rc
        idle = [b for b in node.creates if keeper[b] != x and not rc[b]
                and not recipe_rc[keeper[b]]]  # NOTE [ Tuple elements die alone ]
        if node.creates or node.writes:
            self.flops += node.flops
            self.cost += self.p.cost[x]
            self.seconds += node.seconds or 0.0
            self.recomputed.append(node.name)
        # NOTE [ RNG states are activation memory ]: the state to restore, before any output
        self._mark("recompute", x, max(node.transient_bytes, node.recipe_bytes - (live - before)))
        for b in idle:
            if alive[b]:
                alive[b] = False
                self.live -= nbytes[b]
        if not st.inlined[x]:
            self._drop_inputs(x)

    # NOTE [ Recomputed when unpacked ]
    # The runtime rebuilds a recomputed value when autograd unpacks it, inside the backward of
    # the node that saved it, after that node's backward ops that need no saved tensor have run.
    # Their results are live while the recomputation runs: the gradient of an attention whose
    # math path upcasts bf16 to fp32 and casts its output back (autocast) is cast to fp32
    # (ToCopyBackward) before the first saved tensor is unpacked, 16,384 B a tiny GPT-2's floor
    # plan missed (its dry run peaked there). Annotation measures them per node
    # (`bwd_unpack_bytes`: live over the node's start at its first unpack, where the recipe
    # holding what it saved is replayed), and the recomputations a node's backward needs are
    # charged on top of them. A node that saves values of several recomputed nodes may replay
    # one at a later unpack, with more live: the dry run checks every plan.
    # NOTE [ Replayed saves are freed together ]
    # A node's backward may be several autograd nodes (SDPA's math path with dropout: five), and
    # autograd frees each one's saved tensors as it finishes: its softmax backward runs with the
    # dropped attention already gone (`bwd_transient_bytes`). What a replay rebuilds is held by
    # its recipe until the node's backward lets go of all of it (NOTE [ One recompute cost ]), so
    # a backward that replays is charged `bwd_replay_transient_bytes`: its peak with what was
    # alive at its start held to its end. A two-block attention net at the floor: 816,072 B
    # predicted with the first, 884,744 B with the second, as its dry run and the allocator.
    def _backward(self) -> None:
        R, st, cached = self.R, self.st, self.cached
        producer, last, rc, alive, nbytes = st.producer, self.last, self.rc, self.alive, st.nbytes
        quiet, watch, record, stop = self.marks is None, self.watch, self.record, self.stop
        for c, saves, producers, unpack, transient, replay_transient, grown, extra in st.backward_steps:
            replays = bool(R) and not producers.isdisjoint(R)
            if replays:
                self.live += unpack  # NOTE [ Recomputed when unpacked ]
                for b in saves:
                    if producer[b] in R and not cached[last[b]]:
                        self._materialize(last[b])
                self.live -= unpack
                transient = max(transient, replay_transient)  # NOTE [ Replayed saves are freed together ]
            if (quiet and not (watch[c] or replays and record)  # a replay's step names its owner
                    and self.live + transient <= self.peak and self.step != stop):
                self.step += 1  # as in _forward
            else:
                self._mark("backward", c, transient)
            self.live += grown
            if replays:
                for b in saves:
                    if producer[b] in R:
                        self._release_recipe(last[b])
                    else:
                        self._drop(b)
                self.live -= extra
                continue
            live = self.live
            for b in saves:  # `_drop`, inlined: no recipe here
                rc[b] -= 1
                if rc[b] == 0 and alive[b]:
                    alive[b] = False
                    live -= nbytes[b]
            self.live = live - extra

    # NOTE [ The simulator's loops ]
    # Solvers simulate thousands of plans (GPT-2 small at 50%: ~580 runs in `auto`), so the
    # forward and backward loops read each node's numbers from tuples built once per problem
    # (`StepFacts.forward_steps`, `backward_steps`) and keep the live bytes in a local between
    # marks, rather than reading dataclass attributes and calling a method per buffer: the same
    # steps in the same order, ~1.2 -> ~0.8 ms per run of min-cut's plan there.


class _Stop(Exception):
    pass


def phase_peaks(problem: RematProblem, recompute: Iterable[int], phase: list[int],
                unit: int | None = None) -> tuple[Simulation, dict]:
    """The simulation of a plan and its peak per phase: ``("f", phase[t])`` over the forward steps
    of nodes t, ``("b", phase[c])`` over the backward steps of nodes c and the recomputations
    their backward replays (`block_dp`'s phase model, NOTE [ The phase model ] there). With
    `unit`, only that phase's peaks are exact (the other steps run quietly: faster).

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> p = random_problem(10, seed=0)
        >>> sim, peaks = phase_peaks(p, (), [0] * 5 + [1] * 5)
        >>> max(peaks.values()) == sim.peak_bytes
        True
    """
    watch = None if unit is None else [u == unit for u in phase]
    run = _Run(problem, check_plan(problem, recompute), True, watch=watch)
    run.go()
    peaks: dict = {}
    owner = None  # a recomputation is replayed by the backward step that follows it
    for live, (kind, i) in reversed(run.events):
        if kind == "forward":
            key = ("f", phase[i])
        elif kind == "backward":
            key = owner = ("b", phase[i])
        else:
            key = owner if owner is not None else ("b", phase[i])
        if live > peaks.get(key, -1):
            peaks[key] = live
    run.events = []  # not asked for
    return _result(problem, run), peaks
