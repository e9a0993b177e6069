"""`RematProblem`: the small torch-free IR every solver and the simulator read.

A problem is a forward graph in execution order. Memory lives in *buffers* (tensor storages);
nodes create buffers, read other nodes, and their backward *saves* buffers. Deciding to
recompute a node means none of the buffers it creates are held for backward: autograd holds a
recipe instead, and backward rematerializes the node (once) when the recipe is first unpacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Buffer:
    """One tensor storage created by an activation node."""

    name: str
    nbytes: int
    producer: int  # index of the node that allocates it
    fused: bool = False  # it exists only while held past forward (NOTE [ Fused buffers ] in simulate)
    inlined: bool = False  # written in forward, but replayed inside its backward readers' kernels (same NOTE)
    element: bool = False  # one tensor of a tuple, freed alone (NOTE [ Tuple elements die alone ] in simulate)


@dataclass(frozen=True)
class Grad:
    """A tensor backward allocates (a gradient, an accumulation) that outlives the backward of
    the node that allocated it: from `born`'s backward to the end of `dies`'s (-1: the step's end)."""

    nbytes: int
    born: int
    dies: int


@dataclass(frozen=True)
class Node:
    """One node of the forward graph, with what its forward and backward cost."""

    name: str
    op: str
    inputs: tuple[int, ...] = ()  # activation nodes whose values it reads
    scope: str = ""  # the module path it runs in, e.g. "transformer.h.3.attn"
    creates: tuple[int, ...] = ()  # buffers it allocates (its value, and internals its backward saves)
    value: tuple[int, ...] = ()  # buffers its output refers to (created or aliased)
    writes: tuple[int, ...] = ()  # activation buffers it modifies in place (value among them)
    saves: tuple[int, ...] = ()  # activation buffers its backward holds
    extra_saved_bytes: int = 0  # saved tensors that are nobody's output (masks, statistics)
    recipe_bytes: int = 0  # what a recipe of it holds besides its inputs until replayed (RNG states,
    # NOTE [ RNG states are activation memory ] in fxckpt.core.simulate)
    flops: int = 0  # FLOPs of running it once (matmuls counted, other ops one per output element)
    seconds: float | None = None  # estimated time of running it once (see fxckpt.core.timing); None: unknown
    requires_grad: bool = False  # it has a backward
    transient_bytes: int = 0  # bytes live only while its forward runs
    bwd_rank: int | None = None  # position of its backward in the backward pass; None: reverse
    # execution order; -1: its backward never runs
    bwd_transient_bytes: int = 0  # peak its backward allocates over the level it starts at
    bwd_replay_transient_bytes: int = 0  # the same with its saved tensors held to its backward's end (NOTE [ Replayed saves are freed together ] in simulate)
    bwd_unpack_bytes: int = 0  # live over that level when it first unpacks a saved tensor: recomputation happens
    # there (NOTE [ Recomputed when unpacked ] in fxckpt.core.simulate)
    is_output: bool = False
    ban: str | None = None  # why it must not be recomputed; None: it may be
    prefer: str | None = None  # a user's CheckpointPolicy: "save" or "recompute"


@dataclass(frozen=True)
class RematProblem:
    """A forward graph in execution order plus the buffers its nodes create."""

    nodes: tuple[Node, ...] = ()
    buffers: tuple[Buffer, ...] = ()
    grads: tuple[Grad, ...] = ()
    loss_bytes: int = 0  # what computing the loss from the outputs allocates
    name: str = "graph"

    def __post_init__(self) -> None:
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                if not 0 <= j < i:
                    raise ValueError(f"node {node.name!r} reads node {j}, which does not run before it")
            for b in node.creates:
                if self.buffers[b].producer != i:
                    raise ValueError(f"buffer {self.buffers[b].name!r} is not produced by {node.name!r}")
        timed = {n.seconds is not None for n in self.nodes if n.creates or n.writes}
        if len(timed) > 1:
            raise ValueError(f"problem {self.name!r}: some nodes have estimated seconds and some do not; "
                             "estimate every node or none (the solvers' cost needs one unit)")

    # NOTE [ One recompute cost ]
    # Every solver, the simulator and the plan price a recomputation with `cost`: one integer per
    # node, in nanoseconds when the nodes carry estimated times, else in FLOPs (synthetic
    # problems, or no device rates). A plan costs the sum over the nodes backward actually
    # materializes (`fxckpt.core.simulate.recompute_cost`), not over the nodes it names: a node
    # no backward needs costs nothing, an in-place op replayed with its base costs its share.
    # Integers keep the exact solvers exact (the chain DP's fronts, the min cut's capacities).
    # A node whose buffers are all fused (NOTE [ Fused buffers ] in the simulator: a compiler
    # computes it inside the kernels that read it) costs 0 to replay: the replay is a few more
    # instructions in a backward kernel that runs anyway, as torch's own partitioner prices it.
    # Its FLOPs are still counted (`Simulation.recompute_flops`, the plan's): only the price
    # changes. Plans of equal cost are then told apart by memory (NOTE [ Free recomputations
    # break ties by memory ] in `fxckpt.core.solvers`).

    @cached_property
    def timed(self) -> bool:
        """Whether costs are estimated nanoseconds (True) or FLOPs (False)."""
        return any(n.seconds is not None for n in self.nodes if n.creates or n.writes)

    @cached_property
    def inlined(self) -> tuple[bool, ...]:
        """Per node, whether it creates buffers and a replay of it writes none of them: a compiler
        computes it inside the backward kernels that read it (`Buffer.fused` or `Buffer.inlined`,
        NOTE [ Fused buffers ] in fxckpt.core.simulate)."""
        return tuple(bool(n.creates) and all(self.buffers[b].fused or self.buffers[b].inlined for b in n.creates)
                     for n in self.nodes)

    @cached_property
    def cost(self) -> tuple[int, ...]:
        """What replaying each node once costs (see NOTE [ One recompute cost ]); 0 for nodes
        that allocate and write nothing (views: replaying them is no work) and for `inlined` ones."""
        work = [bool(n.creates or n.writes) and not f for n, f in zip(self.nodes, self.inlined)]
        if self.timed:
            return tuple(round(n.seconds * 1e9) if w else 0 for n, w in zip(self.nodes, work))
        return tuple(n.flops if w else 0 for n, w in zip(self.nodes, work))

    @cached_property
    def index(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    @cached_property
    def users(self) -> tuple[tuple[int, ...], ...]:
        users: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for j in set(node.inputs):
                users[j].append(i)
        return tuple(tuple(u) for u in users)

    @cached_property
    def source(self) -> tuple[int | None, ...]:
        """For each node, the node that created the buffers of its value (itself, or the base
        of a view / in-place op); None when its value holds no activation buffer."""
        out: list[int | None] = []
        for i, node in enumerate(self.nodes):
            producers = {self.buffers[b].producer for b in node.value}
            out.append(i if i in producers or not producers else min(producers))
        return tuple(out)

    @cached_property
    def last_writer(self) -> tuple[int, ...]:
        """For each buffer, the last node that writes it: its producer or an in-place op. Only
        final contents can be saved for backward (autograd rejects anything else), and
        replaying up to the last writer rebuilds them."""
        last = [b.producer for b in self.buffers]
        for i, node in enumerate(self.nodes):
            for b in node.writes:
                last[b] = max(last[b], i)
        return tuple(last)

    @cached_property
    def backward_order(self) -> tuple[int, ...]:
        """Nodes whose backward runs, in the order it runs."""
        ranked = [(n.bwd_rank if n.bwd_rank is not None else len(self.nodes) - i, i)
                  for i, n in enumerate(self.nodes) if n.requires_grad and n.bwd_rank != -1]
        return tuple(i for _, i in sorted(ranked))

    def candidates(self) -> list[int]:
        """Nodes a solver may choose to recompute."""
        return [i for i, n in enumerate(self.nodes) if n.creates and n.ban is None]

    def names(self, indices) -> frozenset[str]:
        return frozenset(self.nodes[i].name for i in indices)

    def indices(self, names) -> frozenset[int]:
        try:
            return frozenset(self.index[n] for n in names)
        except KeyError as e:
            raise KeyError(f"plan names node {e.args[0]!r}, which is not in problem {self.name!r}") from None
