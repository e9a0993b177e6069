"""AOTAutograd's joint graph as a `RematProblem`, and a plan back into forward and backward graphs.

NOTE [ The compiled step's memory, in the eager runtime's model ]
The compiled step runs two graphs. The forward graph frees every value at its last use except
what it returns: the user's outputs (held by the caller until backward ends) and the values it
saves for backward. The backward graph takes the saved values and frees each at its last use
(boxed calling convention), recomputing a forward value just before its first backward use
(`reordering_to_mimic_autograd_engine`); the recomputed value lives until its last use.

The simulator (`fxckpt.core.simulate`) models the eager saved-tensor-hook runtime, and that model
already says exactly this once the problem is built as follows, so no second memory model is
needed: every backward op of the joint graph becomes a problem node that allocates nothing in
forward, runs its "backward" at its position in the backward graph, and *saves* the forward
values it reads. A saved value is then held until its last backward reader, a recomputed one is
materialized at its first backward reader and cached until its last, and the recipe of a
recomputed node holds its kept inputs until it is materialized, as a saved input is held until
its last backward use. What the backward ops allocate are `Grad`s: born at the op, dead after
their last reader (through views), or held to the end of the backward graph when they are its
outputs (the parameter gradients, accumulated into `.grad` after the graph returns). The
tangents are born when backward starts.

Under inductor the problem is built to what inductor's code does, still within this one model:
values it inlines are fused buffers (`fused_values`; NOTE [ Fused buffers ] in the simulator),
and an inlined backward value's inputs are read by its last reader (`_inlined_reads`); forward
nodes that the joint graph places among the backward ops run where inductor fuses them
(`_early`); backward ops and recomputations run in the kernels inductor may fuse them into
(NOTE [ Recomputation inside inductor's kernels ]); its channels-last layout copies inputs and
changes what convolutions allocate (NOTE [ Inductor's channels-last layout ]); its post-grad
rewrites move matmuls and write cats' inputs into the cat (NOTE [ Inductor's post-grad rewrites ]).
These rules only guide the solver close to what inductor does: under inductor, the prediction
and the budget rest on the code inductor generated (NOTE [ Inductor's code is the prediction ]
in `fxckpt/compile/inductor_memory.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree
from torch.utils.checkpoint import CheckpointPolicy
from torch.utils.flop_counter import flop_registry

from fxckpt.core.problem import Buffer, Grad, Node, RematProblem
from fxckpt.passes import fake_step
from fxckpt.passes.ops import draws_random

# Seeded random ops: a replay would draw fresh numbers. Inductor's dropout draws its seeds with
# inductor_seeds (tagged) and its numbers with inductor_random from a seed: recomputing that from
# the saved seed is exact in principle, but torch issue 198333 reports backward masks that differ
# from forward's since 2.13, so it is never recomputed either (its mask is saved instead).
# Looked up when a graph is partitioned: inductor registers the op when it is first imported,
# which may be after this module (a set built at import time was then empty, and dropout's
# random numbers were recomputed).


def _inductor_random(target) -> bool:
    return hasattr(torch.ops.prims, "inductor_random") and target is torch.ops.prims.inductor_random.default


# Ops of inductor's graphs charged their scratch: inductor runs these as the eager kernels (extern
# kernels and fallbacks: the CPU flash attention and its backward are `make_fallback`s), and lowers
# the other ops of `fake_step.SCRATCH_OPS` into its own code. Without inductor (aot_eager) every op
# runs its eager kernel, so every op is asked, as in eager: an unseen net's flash-attention
# backward took 122,880 B that the aot_eager plan at 50% did not charge (2,073,352 B measured
# against a 1,951,938 B budget).
PROBED = frozenset({torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default,
                    torch.ops.aten.native_dropout_backward.default,
                    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
                    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default})


def op_scratch(node: fx.Node, channels_last: bool = False, fusion: bool = True) -> int:
    """Bytes the node's op allocates beyond its outputs while it runs, probed on real tensors of
    its shapes (NOTE [ Op scratch the fake values do not show ] in passes/fake_step.py), in the
    channels-last layout inductor gives them (NOTE [ Inductor's channels-last layout ]); with
    `fusion` (inductor), only for the ops it runs as eager kernels (`PROBED`)."""
    if not isinstance(node.target, torch._ops.OpOverload) or (fusion and node.target not in PROBED):
        return 0
    args, kwargs = pytree.tree_map_only(fx.Node, lambda n: n.meta.get("val"), (node.args, node.kwargs))
    if channels_last:
        args, kwargs = pytree.tree_map_only(torch.Tensor, _channels_last, (args, kwargs))
    return fake_step.op_scratch(node.target, args, kwargs)


# NOTE [ Inductor's channels-last layout ]
# Inductor lays out a graph with convolutions channels-last on CPU (`GraphLowering.
# decide_layout_opt`: always where oneDNN runs them), after the partitioner has run, on fake
# values that are still contiguous. Two things the allocator sees follow from it. (1) oneDNN
# reorders a contiguous convolution's operands into blocked copies, and a channels-last one's not:
# probed on the contiguous shapes, the tiny CNN's 32x8x32x32 convolution took 2 MiB of scratch,
# on channels-last ones 16 KiB (the step's prediction was 15% over its measured peak). (2) An
# input or parameter that a convolution reads and that is not channels-last already is copied
# into that layout at the start of the forward graph, and the copy, not the input, is what the
# backward graph takes: a buffer of the input's size, held from the start of the step until its
# last backward reader (the CNN's 0.375 MiB image batch). Both are modelled when inductor would
# decide so for the joint graph: probes on channels-last operands, and a node per copied input.


def channels_last_layout(joint: fx.GraphModule) -> bool:
    """Whether inductor lays this graph out channels-last (NOTE [ Inductor's channels-last layout ])."""
    from torch._inductor.graph import GraphLowering

    return GraphLowering.decide_layout_opt(joint, is_inference=False)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.to(memory_format=torch.channels_last) if t.dim() == 4 else t


def _copied_inputs(primals: list[fx.Node]) -> list[fx.Node]:
    """Inputs inductor copies into channels-last for the convolutions that read them."""
    conv = torch.ops.aten.convolution.default
    return [p for p in primals if any(u.target is conv and p in u.args[:2] for u in p.users)
            and isinstance(p.meta.get("val"), torch.Tensor) and p.meta["val"].dim() == 4
            and not p.meta["val"].is_contiguous(memory_format=torch.channels_last)]


@dataclass
class JointProblem:
    """A `RematProblem` built from a joint graph, with the fx nodes behind its problem nodes."""

    problem: RematProblem
    forward: list[fx.Node]  # forward fx nodes, one per problem node (problem.nodes[:len(forward)])
    backward: list[fx.Node]  # backward fx nodes, in the joint graph's order
    primals: list[fx.Node]
    source: dict[fx.Node, fx.Node | None]  # the forward node whose storage a value uses (None: an input's)


def _tensors(val) -> list:
    return [t for t in pytree.tree_leaves(val) if isinstance(t, torch.Tensor)]


# NOTE [ A plan is for the sizes it was made for ]
# Under dynamic shapes (`dynamic=True`, or Dynamo's automatic dynamic after a second size) the
# joint graph's sizes are symbols; the problem is built from their hints, the sizes of the call
# that compiled it. Dynamo would run that plan for every size, and its bytes grow with the size:
# a graph planned at 16 rows under a 1 MiB budget ran 1,024 rows at 5,902,360 B, no error. So
# the partitioner guards every size of the graph's inputs to its hint (`specialize_sizes`): a
# call of another size compiles, and is planned, again (Dynamo's recompile limit then bounds
# how many sizes compile; past it Dynamo runs the frame eagerly and says so). A dimension marked
# with `torch._dynamo.mark_dynamic` is a promise of one graph for every size, which a plan cannot
# keep: Dynamo raises its ConstraintViolationError ("your code specialized it"); `maybe_mark_dynamic`
# compiles.


def specialize_sizes(joint: fx.GraphModule) -> None:
    """Guard each symbolic size, stride and offset of the joint graph's inputs to the value it has
    in this compile (NOTE [ A plan is for the sizes it was made for ])."""
    from torch.fx.experimental.symbolic_shapes import guard_int

    for n in joint.graph.find_nodes(op="placeholder"):
        val = n.meta.get("val")
        if isinstance(val, torch.SymInt):
            guard_int(val)
        elif isinstance(val, torch.Tensor):
            for x in (*val.shape, *val.stride(), val.storage_offset()):
                if isinstance(x, torch.SymInt):
                    guard_int(x)


@contextlib.contextmanager
def real_values(joint: fx.GraphModule, enabled: bool = True):
    """The joint graph's values as the eager kernels make them, while the problem is built: where a
    kernel's real outputs differ from the fake ones (NOTE [ Fake dtypes of mixed-type kernels ] in
    passes/fake_step.py: a CPU norm on a bf16 activation with fp32 weights returns fp32 statistics,
    the fake kernel bf16 ones), `meta["val"]` takes the real shapes, strides and dtypes, in graph
    order, so that readers (the norm's backward and its scratch probe) see them too; restored on
    exit. Under aot_eager the eager kernels run; inductor's code has its own dtypes (`enabled`)."""
    swapped = []
    try:
        fixed_nodes = set()
        for n in joint.graph.nodes if enabled else ():
            if n.target is operator.getitem and n.args[0] in fixed_nodes:  # an element of a fixed tuple
                swapped.append((n, n.meta["val"]))
                n.meta["val"] = n.args[0].meta["val"][n.args[1]]
                continue
            if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
                continue
            kind = fake_step._real_kind(n.target)
            args, kwargs = pytree.tree_map_only(fx.Node, lambda a: a.meta.get("val"), (n.args, n.kwargs))
            tensors = fake_step.tensors_of((args, kwargs))
            if kind == 0 or not tensors or any(isinstance(x, torch.SymInt) for t in tensors for x in t.shape) or (
                    kind == 2 and (not fake_step._mixed_floating(tensors) or fake_step._index_off_cpu(tensors))):
                continue
            try:
                real = fake_step.real_outputs(n.target, args, kwargs, strict=False)
            except Exception:  # a kernel the probe cannot run (an argument no real tensor stands for): as before
                continue
            flat, spec = pytree.tree_flatten(n.meta.get("val"))
            if real is None or len(real) != len(flat):
                continue
            fixed = fake_step.like_real(flat, real)
            if any(a is not b for a, b in zip(fixed, flat)):
                swapped.append((n, n.meta["val"]))
                n.meta["val"] = pytree.tree_unflatten(fixed, spec)
                fixed_nodes.add(n)
        yield
    finally:
        for n, val in swapped:
            n.meta["val"] = val


def _nbytes(t: torch.Tensor) -> int:
    """Bytes of a fake tensor's storage (sizes are hints when symbolic; the partitioner guards them:
    NOTE [ A plan is for the sizes it was made for ])."""
    from torch.fx.experimental.symbolic_shapes import optimization_hint as hint_int

    try:
        return hint_int(t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError, TypeError):
        return hint_int(t.numel()) * t.element_size()


def is_view(node: fx.Node) -> bool:
    """Whether a node's output shares storage with its first tensor argument."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return True
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return False
    if node.target in (torch.ops.aten._unsafe_view.default, torch.ops.aten.alias.default):
        return True
    return any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def _flops(node: fx.Node) -> int:
    """FLOPs by torch's flop registry (matmuls, convolutions); other ops one per output element."""
    packet = getattr(node.target, "overloadpacket", None)
    val = node.meta.get("val")
    if packet in flop_registry:
        args, kwargs = pytree.tree_map_only(fx.Node, lambda n: n.meta.get("val"), (node.args, node.kwargs))
        try:
            return int(flop_registry[packet](*args, **kwargs, out_val=val))
        except Exception:  # a formula that cannot take these (symbolic) arguments
            pass
    from torch.fx.experimental.symbolic_shapes import optimization_hint as hint_int

    return 0 if is_view(node) else sum(hint_int(t.numel()) for t in _tensors(val))


def _ban(node: fx.Node, outputs: set[fx.Node]) -> str | None:
    target = node.target
    if _inductor_random(target) or draws_random(target, node.args, node.kwargs):
        return "random op: saved so that backward sees the numbers forward drew"
    if node in outputs:
        return "graph output"
    if getattr(target, "namespace", None) == "_c10d_functional":
        return "collective: saved, never replayed"
    if target is torch.ops.higher_order.with_effects:
        return "effectful op: saved, never replayed"
    schema = getattr(target, "_schema", None)
    if schema is not None and any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
        return "mutates an input"
    return None


# NOTE [ A replay reads an input as the graph left it ]
# AOTAutograd keeps a mutation of a graph input (a buffer updated in forward: an EMA, a counter,
# BatchNorm's running statistics) in the joint graph as a `copy_` into the input at the end of
# the forward. A node replayed in backward reads that input after it: the new value. A net
# adding a buffer to an activation, then updating the buffer in place (eager: correct, the add
# saves no operand), with every node recomputed, got gradients 19.6 off, silently. So a node
# reading an input that the graph writes (through a view too) is never replayed; its value is
# saved. Exceptions: a training-mode batch norm (of what it returns, only the new running
# statistics read the old ones, and a replay's are never used), and a node whose value only goes
# into such a write (`num_batches_tracked + 1`: backward never reads it, so it is never replayed;
# banned, it changed the pooling CNN's inductor floor plan to one 4 B over its budget).


def mutated_inputs(graph: fx.Graph) -> tuple[set[fx.Node], set[fx.Node]]:
    """The placeholders the graph writes in place (through views too), and the nodes whose values
    only go into such writes (a new running statistic: never read by backward, so never replayed)."""
    written, only_writes = set(), set()
    for n in graph.nodes:
        schema = getattr(n.target, "_schema", None) if n.op == "call_function" else None
        if schema is None:
            continue
        for arg, a in zip(schema.arguments, n.args):
            if a.__class__ is fx.Node and arg.alias_info is not None and arg.alias_info.is_write:
                base = _base(a)
                if base.op == "placeholder":
                    written.add(base)
    for n in reversed(graph.nodes):
        if n.users and all(u in only_writes or (u.target is torch.ops.aten.copy_.default and u.args[1] is n
                                                and _base(u.args[0]) in written) for u in n.users):
            only_writes.add(n)
    return written, only_writes


# NOTE [ A replayed batch norm reads copies of the running statistics ]
# A training-mode batch norm may be replayed (NOTE [ A replay reads an input as the graph left
# it ]), and its replay takes the running statistics as arguments: backward needed the inputs
# themselves, saved by autograd, and the graph's next forward writes them. Two forwards before
# one backward (`loss = m(x1).sum() + m(x2).sum()`) then failed in backward with autograd's "one
# of the variables needed for gradient computation has been modified by an inplace operation"
# (a BatchNorm CNN at budget=0.5, aot_eager; plain torch.compile, which never replays a batch
# norm, ran). So the batch norm reads copies of them made just before it (`copy_running_stats`):
# its results are the same bits, a replay reads the copies (two vectors of the channels' size,
# charged as any saved value), and the inputs are never saved.


def copy_running_stats(graph: fx.Graph) -> None:
    """Make each training-mode batch norm read copies of the running statistics the graph writes
    (NOTE [ A replayed batch norm reads copies of the running statistics ])."""
    written, _ = mutated_inputs(graph)
    for n in list(graph.find_nodes(op="call_function", target=torch.ops.aten._native_batch_norm_legit_functional.default)):
        if not (len(n.args) > 5 and n.args[5] is True):
            continue
        for i in (3, 4):
            a = n.args[i]
            if isinstance(a, fx.Node) and _base(a) in written and isinstance(a.meta.get("val"), torch.Tensor):
                with graph.inserting_before(n):
                    copy = graph.call_function(torch.ops.aten.clone.default, (a,))
                val = a.meta["val"]
                with val.fake_mode if hasattr(val, "fake_mode") else contextlib.nullcontext():
                    copy.meta["val"] = val.clone()
                n.update_arg(i, copy)


def _reads_mutated(node: fx.Node, mutated: tuple[set[fx.Node], set[fx.Node]]) -> str | None:
    """Why `node` may not be replayed: it reads an input the graph writes (NOTE [ A replay reads
    an input as the graph left it ])."""
    written, only_writes = mutated
    read = {a for a in node.all_input_nodes if _base(a) in written}
    if not read or node in only_writes:
        return None
    if (node.target is torch.ops.aten._native_batch_norm_legit_functional.default and len(node.args) > 5
            and node.args[5] is True and read <= set(node.args[3:5])):
        return None  # training: only the new statistics read the running ones
    return "reads an input the graph writes in place: a replay would read the new value"


def _prefer(node: fx.Node) -> str | None:
    """A user's (or torch's force-save) CheckpointPolicy, on the node or on the getitems of its tuple."""
    policies = [node.meta.get("recompute")] + [u.meta.get("recompute") for u in node.users if u.target is operator.getitem]
    if any(p in (CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_SAVE) for p in policies):
        return "save"
    if any(p in (CheckpointPolicy.MUST_RECOMPUTE, CheckpointPolicy.PREFER_RECOMPUTE) for p in policies):
        return "recompute"
    return None


# Ops inductor lowers to pointwise code that carry no pointwise tag (`lowering.slice_scatter`, ...,
# and the constructors `full` and `iota`, inlined into their readers like any constant: a causal
# mask's `full` was saved, 16,384 B, where torch's partitioner makes it again in backward).
_UNTAGGED_POINTWISE = frozenset({torch.ops.aten.slice_scatter.default, torch.ops.aten.select_scatter.default,
                                 torch.ops.aten.full.default, torch.ops.prims.iota.default})


def _fusible(node: fx.Node) -> bool:
    """Whether inductor computes `node` inside a generated kernel (pointwise and reductions; random
    numbers are drawn in the kernel that uses them), rather than as an extern kernel or fallback."""
    tags = getattr(node.target, "tags", ())
    return node.op == "call_function" and (torch.Tag.pointwise in tags or torch.Tag.reduction in tags
                                           or node.target in _UNTAGGED_POINTWISE or _inductor_random(node.target))


def _readers(node: fx.Node) -> list[fx.Node]:
    """The nodes that read `node`'s storage: its users, and through views the users of those."""
    out = []
    for u in node.users:
        if u.op == "call_function" and is_view(u):
            out.extend(_readers(u))
        else:
            out.append(u)
    return out


# Ops whose reused results inductor realizes on CPU (`StorageBox.should_realize_on_reuse`).
_HEAVY = frozenset({"exp", "log", "log10", "log1p", "log2", "sigmoid", "tanh"})


def fused_values(graph_nodes: list[fx.Node]) -> tuple[set[fx.Node], dict[fx.Node, frozenset]]:
    """The values inductor never writes to memory inside its graph (see NOTE [ Fused buffers ]
    in the simulator): pointwise values it inlines into every kernel that reads them. As its
    lowering decides (`GraphLowering.run_node`, `StorageBox.should_realize_on_reuse`): a
    pointwise value is written to memory where an extern kernel, a fallback or a graph output
    reads it, where its inlined expression reads more buffers than
    `realize_cpu_acc_reads_threshold`, and, when several nodes read it, where that expression
    reads more than `realize_reads_threshold` buffers or computes an exp, log, sigmoid or tanh.
    Reductions write their results. Reads are counted as distinct buffers (inductor counts
    distinct index expressions: a broadcast read twice counts twice there, once here).
    Returns the fused values, and the buffers each pointwise value's expression reads.
    """
    from torch._inductor import config as inductor_config

    fused: set[fx.Node] = set()
    reads: dict[fx.Node, frozenset] = {}
    heavy: dict[fx.Node, bool] = {}
    for n in graph_nodes:
        if n.op != "call_function" or is_view(n):
            continue
        if torch.Tag.pointwise not in getattr(n.target, "tags", ()) and not _inductor_random(n.target) and (
                n.target not in _UNTAGGED_POINTWISE):
            continue  # extern kernels, fallbacks and reductions write their outputs
        inputs = [_base(a) for a in n.all_input_nodes]
        r = reads[n] = frozenset().union(*(reads[a] if a in fused else {a} for a in inputs))
        h = heavy[n] = getattr(n.target, "__name__", "").split(".")[0] in _HEAVY or any(heavy.get(a, False) for a in inputs)
        readers = _readers(n)
        if not readers or not all(_fusible(u) for u in readers):
            continue
        if len(r) > inductor_config.realize_cpu_acc_reads_threshold or len(readers) > 1 and (
                h or len(r) > inductor_config.realize_reads_threshold):
            continue
        fused.add(n)
    return fused, reads


# NOTE [ Each graph fuses on its own ]
# Inductor compiles the forward and the backward graph apart, so whether a value is written is
# decided in each graph by its readers there. `fused_values` judges the forward side on the joint
# graph; a value that side writes (an extern kernel reads it in forward, or its readers there make
# inductor realize it) may still be computed, when replayed, inside every backward kernel that
# reads it: torch's partitioner replays such values for free (`is_materialized_backwards` is
# false) and never gives them a buffer. Charged a buffer and their FLOPs, the plans at budget=1.0
# saved them instead: on a 2-layer GPT-2, GELU-tanh's `1 + tanh` and `1 - tanh^2` (4 x 262,144 B,
# where torch saves the matmul output they come from), the log-softmax's `sub` (512,000 B, where
# torch saves its max and log-sum, 1,024 B) and the embedding gradient's zero `full` (512,000 B),
# 4,714,716 B saved against torch's 2,612,628 B (after: 2,610,380 B). Such a value's buffer is `Buffer.inlined`
# (NOTE [ Fused buffers ] in the simulator): written in forward as before, replayed for free and
# into no buffer. Its backward readers are the backward ops and the unclaimed nodes reading it
# (a replayed forward reader reads it in backward too, and an extern one, a matmul, would need it
# written: not modelled, as torch does not; the code inductor generates is the prediction, NOTE
# [ Inductor's code is the prediction ]). A reader computes it inline where it is fusible, or
# where it is the operand an `index_put` copies into its output (`lowering.index_put` clones it:
# the zero `full` an embedding's gradient accumulates into is written as that gradient's buffer).
_COPIES_FIRST = frozenset({torch.ops.aten.index_put.default, torch.ops.aten._unsafe_index_put.default,
                           torch.ops.aten._unsafe_masked_index_put_accumulate.default})


def _computes_inline(reader: fx.Node, value: fx.Node) -> bool:
    """Whether `reader` computes `value` inside its own kernel (NOTE [ Each graph fuses on its own ])."""
    if _fusible(reader):
        return True
    return reader.target in _COPIES_FIRST and isinstance(reader.args[0], fx.Node) and _base(reader.args[0]) is value


def inlined_replays(graph_nodes: list[fx.Node], info, fused: set[fx.Node]) -> set[fx.Node]:
    """The values a replay computes inside every backward kernel that reads them (NOTE [ Each
    graph fuses on its own ]): pointwise values whose readers outside the forward all compute
    them inline; the forward's `fused` values among them."""
    inlined = set(fused)
    for n in graph_nodes:
        if n in fused or n.op != "call_function" or is_view(n) or not _fusible(n) or (
                torch.Tag.reduction in getattr(n.target, "tags", ()) or _ban(n, set()) is not None):
            continue
        backward = [u for u in _readers(n) if not info.is_required_fw(u)]
        if all(_computes_inline(u, n) for u in backward):
            inlined.add(n)
    return inlined


def _base(node: fx.Node) -> fx.Node:
    """The node owning the storage a view reads."""
    while is_view(node) and node.target is not operator.getitem and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _is_tensor_node(node: fx.Node) -> bool:
    return bool(_tensors(node.meta.get("val")))


def build_problem(joint: fx.GraphModule, info, num_fwd_outputs: int, name: str = "compiled graph",
                  fusion: bool = False, passing: frozenset[int] = frozenset()) -> JointProblem:
    """The `RematProblem` of a joint graph classified by `torch._functorch.partitioners.classify_nodes`.

    Forward nodes are the forward-only and the unclaimed ones (computed from primals alone, so
    the partitioner may place them on either side); see NOTE [ The compiled step's memory, in
    the eager runtime's model ]. `fusion`: the halves are compiled by inductor, whose fused
    pointwise values exist in memory only across the forward/backward boundary (`fused_values`),
    and whose channels-last layout copies inputs and changes convolutions' scratch. `passing`: the
    positions of forward outputs that only later pieces of a split graph read (NOTE [ Outputs
    only later pieces read ]).
    """
    graph_nodes = list(joint.graph.nodes)
    outputs = graph_nodes[-1].args[0]
    fwd_outputs = {a for a in pytree.tree_leaves(outputs[:num_fwd_outputs]) if isinstance(a, fx.Node)}
    passed = {a for i, a in enumerate(outputs[:num_fwd_outputs]) if i in passing and isinstance(a, fx.Node)}
    passed -= {a for i, a in enumerate(outputs[:num_fwd_outputs]) if i not in passing}
    held = fwd_outputs - passed
    primals = [n for n in graph_nodes if n.op == "placeholder" and not str(n.target).startswith("tangents")]
    tangents = [n for n in graph_nodes if n.op == "placeholder" and str(n.target).startswith("tangents")]
    layout = fusion and channels_last_layout(joint)
    copies = _copied_inputs(primals) if layout else []  # problem nodes of their own, first
    forward = [n for n in graph_nodes if n.op == "call_function" and n not in info.required_bw_nodes
               and _is_tensor_node(n)]
    fused, reads = fused_values(graph_nodes) if fusion else (set(), {})
    constant = set() if fusion else constants(graph_nodes)  # NOTE [ Values that depend on no input are ... ]
    forward = copies + _views_early(_early(forward, info, fused, reads) if fusion else forward, info)
    backward = [n for n in graph_nodes if n.op == "call_function" and n in info.required_bw_nodes]
    index = {n: i for i, n in enumerate(forward)}
    source = _storage_sources(graph_nodes, [p for p in primals + tangents if p not in copies], index)
    inlined = inlined_replays(graph_nodes, info, fused) if fusion else set()
    nodes, buffers = _forward_nodes(forward, index, source, fwd_outputs, fused, inlined, constant, layout, fusion,
                                    held)
    bwd_nodes, grads = _backward_nodes(backward, tangents, outputs[num_fwd_outputs:], index, nodes, fusion, fused, layout)
    if passed:  # held to the start of backward, by the later pieces (NOTE [ Outputs only later pieces read ])
        bwd_nodes[-1] = dataclasses.replace(bwd_nodes[-1], saves=tuple(dict.fromkeys(
            b for a in passed if a in index for b in nodes[index[a]].value)))
    problem = RematProblem(tuple(nodes + bwd_nodes), tuple(buffers), grads=tuple(grads), name=name,
                           loss_bytes=eager_loss_bytes(fwd_outputs))
    return JointProblem(problem, forward, backward, primals, source)


def eager_loss_bytes(fwd_outputs) -> int:
    """A scalar loss computed eagerly from the graph's outputs and its seed gradient, held from the
    end of forward through backward: two elements of the widest floating output dtype.

    NOTE [ The eager loss ]
    `loss = out.sum(); loss.backward()` runs outside every compiled graph, so no graph sees it,
    yet the allocator does: the graph's step measured 8 B over its floor budget (a tiny GPT-2 at
    3,733,504 B: 3,733,512 B), over the budget users check. A scalar's bytes are charged; a loss
    that allocates more outside the graph (a cross-entropy of its logits) is outside the budget,
    as the module docstring says. A graph that returns a scalar (its own loss: a Hugging Face model
    given labels) is charged the same: a loss made from it eagerly (`out.sum()`, `out / steps` for
    gradient accumulation) is a new scalar with a seed of its own, and the attention net of
    tests/test_compile.py measured 4 B over its budget when such a graph was charged nothing; a
    step that calls `out.backward()` itself is predicted 8 B high."""
    floats = [t for n in fwd_outputs for t in _tensors(n.meta.get("val")) if t.dtype.is_floating_point]
    return 2 * max((t.dtype.itemsize for t in floats), default=0)


def _early(forward: list[fx.Node], info, fused: set[fx.Node], reads: dict[fx.Node, frozenset]) -> list[fx.Node]:
    """The forward nodes in the order inductor computes them: an unclaimed pointwise node
    (computed from forward values alone, but placed among the backward ops of the joint graph:
    the mask `le(relu, 0)` of a ReLU's gradient, the centred input of a BatchNorm's) runs in the
    first pointwise kernel that reads a buffer it reads, once its inputs exist (inductor fuses
    nodes that share reads); with no such kernel (its buffers read only by extern kernels and
    reductions), where the joint graph puts it. In the joint graph's order, the tiny CNN's ReLU
    outputs were held to the end of the forward for their masks (1.75 MiB over the measured
    forward peak of 7.1 MiB); all moved early, the masks of a ReLU inlined into a mean were
    counted 0.5 MiB before inductor computes them."""
    rank: dict[fx.Node, float] = {}
    kernels: dict[fx.Node, float] = {}  # a buffer -> the first pointwise kernel reading it
    for k, n in enumerate(forward):
        ins = max((rank[a] for a in n.all_input_nodes if a in rank), default=-1.0)
        rank[n] = float(k)
        if n not in reads:
            continue
        if n in info.unclaimed_nodes:
            shared = [kernels[b] for b in reads[n] | set(n.all_input_nodes) if b in kernels]
            if shared:
                rank[n] = max(min(shared), ins) + 1e-6 * (k + 1)
        if n not in fused:  # a kernel of its own: later nodes reading what it reads fuse into it
            for b in reads[n] | {n}:
                kernels.setdefault(b, rank[n])
    return sorted(forward, key=rank.__getitem__)


def _views_early(forward: list[fx.Node], info) -> list[fx.Node]:
    """`forward` with each unclaimed view (the `detach` the joint graph makes of a value backward
    saves, placed at the forward's end) right after what it views. It computes nothing: where
    the value is kept it is held to backward anyway, and where it is recomputed the view moves to
    backward with it, so at the end it only kept the value alive through the rest of the
    forward in the model (the tiny CNN's recomputed ReLU outputs, 65,536 B over the measured
    forward peak)."""
    present = set(forward)
    after: dict[fx.Node, list[fx.Node]] = {}  # base -> its moved views, in order
    for n in forward:
        if n in info.unclaimed_nodes and is_view(n) and n.all_input_nodes and n.all_input_nodes[0] in present:
            after.setdefault(n.all_input_nodes[0], []).append(n)
    moved = {v for vs in after.values() for v in vs}
    out: list[fx.Node] = []

    def emit(n: fx.Node) -> None:
        out.append(n)
        for v in after.get(n, ()):  # views of views follow their base
            emit(v)

    for n in forward:
        if n not in moved:
            emit(n)
    return out


def _storage_sources(graph_nodes: list[fx.Node], inputs: list[fx.Node],
                     index: dict[fx.Node, int]) -> dict[fx.Node, fx.Node | None]:
    """Which storage each value uses: a forward node's own, its base's (views, getitems), or none
    (`inputs`, the values of primals and tangents: parameters and inputs exist before the step)."""
    source: dict[fx.Node, fx.Node | None] = {p: None for p in inputs}
    for n in graph_nodes:
        if n.op == "placeholder" and n in index:
            source[n] = n  # an input inductor copies (NOTE [ Inductor's channels-last layout ])
        if n.op != "call_function":
            continue
        if is_view(n):
            base = n.args[0] if isinstance(n.args[0], fx.Node) else None
            source[n] = source.get(base) if base is not None else None
            if n.target is operator.getitem and base is not None and base in index and source[base] is base:
                source[n] = n  # one element of an op's tuple: its own buffer, created by that op
                # (the elements of a view's tuple, e.g. split's, stay views of its base)
        else:
            source[n] = n
    return source


# NOTE [ Fused copies are replayed, never saved ]
# A clone that inductor fuses into its readers (`fused_values`: the contiguous copy of a
# transposed embedding that a GroupNorm reads) is never written in inductor's forward; torch's
# partitioner replays such a copy in backward (clone is in its recomputable ops, and it charges
# twice the bytes for saving a value that is not materialized). Saved, the backward graph takes
# a buffer transposed with respect to its source, and torch 2.13's inductor miscompiled the
# kernel that fuses GroupNorm's backward with the embedding's (`embedding_dense_backward`): the
# scatter-add into the embedding's gradient indexed `x1 + 2*x1_inner + 32*idx` for
# `x1 + x1_inner + ...`, writing outside the gradient (a heap corruption abort at the first
# backward of an embedding -> transpose -> GroupNorm -> Conv1d net with a residual; wrong
# gradients where it did not crash). So such a copy is a forced recomputation (`prefer`), which
# the solvers honour and the simulator charges: its input is kept instead, and the copy is
# made again inside the backward kernel that reads it, as under torch's partitioner.


def _fused_copy(node: fx.Node, fused: set[fx.Node], fwd_outputs: set[fx.Node]) -> bool:
    """Whether `node` is a copy inductor fuses into its readers (NOTE [ Fused copies are replayed, never saved ])."""
    return node in fused and node.target is torch.ops.aten.clone.default and node not in fwd_outputs


# NOTE [ Values that depend on no input are replayed, never saved ]
# A value computed from no input of the graph (`full`, `zeros`, `arange`, `ones`, a mask built
# from them, or from a constant the graph holds) is the same whenever it is computed: saving it
# holds its bytes from the forward to its backward reader for nothing. The joint graph has such
# values on both sides: the forward's (a causal mask from `arange`, the `full` a constant scale
# multiplies by) and the ones torch's backward formulas create (the zero buffer that
# `embedding_dense_backward` scatters into, under inductor's decompositions), which depend on
# no tangent either, so `classify_nodes` leaves them unclaimed and they are planned as forward
# values. Saved, Llama's attention mask (32 KiB) was held across the boundary, and GPT-2's
# position ids; torch's own partitioner recomputes them. So such a value is a forced
# recomputation (`prefer`), replayed just before its first backward reader, unless a user's
# policy says to save it, it is random (a seed or random numbers: `_ban`), or it is an output.
# Not yet under inductor (`fusion`): there a replayed `full` is the buffer its reader writes
# into (the zero gradient `index_put` accumulates into), which the problem would count twice;
# forced, the tied-head net of tests/test_compile.py predicted 516,872 B for 483,468 B measured
# at 90% (6.9% over, 3.2% before). There a `full` or `iota` that only fusible kernels read is a
# fused value instead (`_UNTAGGED_POINTWISE`), free to replay, and replayed where the simulator
# says it holds less (NOTE [ Free recomputations break ties by memory ] in fxckpt.core.solvers).


def constants(graph_nodes: list[fx.Node]) -> set[fx.Node]:
    """The values computed from no input (placeholders) and no random op: only from the graph's
    own constants (`get_attr`) and ops that take no tensor, such as `full` and `arange`."""
    const: set[fx.Node] = set()
    for n in graph_nodes:
        if n.op == "get_attr" or (n.op == "call_function" and _ban(n, set()) is None
                                  and all(a in const for a in n.all_input_nodes)):
            const.add(n)
    return const


def _forward_nodes(forward: list[fx.Node], index: dict[fx.Node, int], source, fwd_outputs: set[fx.Node],
                   fused: set[fx.Node], inlined: set[fx.Node], constant: set[fx.Node], layout: bool, fusion: bool,
                   held: set[fx.Node]) -> tuple[list[Node], list[Buffer]]:
    """A problem node per forward fx node, and the buffers they create (one per element of a tuple).
    Values of `constant` are forced recomputations (NOTE [ Values that depend on no input are
    replayed, never saved ]); outputs in `held` are held to the end of the step."""
    nodes: list[Node] = []
    buffers: list[Buffer] = []
    buf_of: dict[fx.Node, int] = {}  # fx node owning a storage -> buffer index
    mutated = mutated_inputs(forward[0].graph) if forward else (set(), set())
    for i, n in enumerate(forward):
        creates: list[int] = []
        if source[n] is n and n.target is not operator.getitem:
            elements = [n] if not isinstance(n.meta["val"], (tuple, list)) else [
                u for u in n.users if u.target is operator.getitem and source.get(u) is u]
            for owner in elements:
                buf_of[owner] = len(buffers)
                creates.append(len(buffers))
                buffers.append(Buffer(owner.name, _nbytes(owner.meta["val"]), i,
                                      fused=owner in fused, inlined=owner in inlined, element=owner is not n))
        src = source[n]
        value = (buf_of[src],) if src is not None and src in buf_of else ()
        ban = ("inductor's channels-last copy of an input" if n.op == "placeholder" else
               _ban(n, fwd_outputs) or _reads_mutated(n, mutated))
        replay = ban is None and (n in constant or _fused_copy(n, fused, fwd_outputs))
        nodes.append(Node(
            name=n.name, op=str(getattr(n.target, "overloadpacket", n.target)), inputs=tuple(dict.fromkeys(
                index[a] for a in n.all_input_nodes if a in index)),
            creates=tuple(creates), value=value, flops=_flops(n) if creates else 0,
            transient_bytes=op_scratch(n, layout, fusion), is_output=n in held,
            prefer=_prefer(n) or ("recompute" if replay else None), ban=ban,
        ))
    return nodes, buffers


def _backward_nodes(backward: list[fx.Node], tangents: list[fx.Node], bwd_out_args, index: dict[fx.Node, int],
                    fwd_nodes: list[Node], fusion: bool, fused: set[fx.Node], layout: bool
                    ) -> tuple[list[Node], list[Grad]]:
    """The backward graph: each op a problem node (after the forward's `fwd_nodes`, then a last
    "bwd tangents" node) whose backward saves the forward values it reads, and the gradients
    and temporaries it allocates, alive until their last reader."""
    first = len(fwd_nodes)
    addmm, into_cat = _post_grad_rewrites(backward) if fusion else ({}, {})
    inputs = {n: _rewritten_inputs(n, addmm) for n in backward}
    root, fwd_alias, last_reader = _backward_storage(backward, tangents, index, inputs)

    def storage_root(a: fx.Node) -> fx.Node:
        return root.get(a, a)

    bwd_outputs = {storage_root(a) for a in pytree.tree_leaves(bwd_out_args) if isinstance(a, fx.Node)}
    last_reader, inlined = _inlined_reads(backward, fused, storage_root, last_reader)
    reads = [[fwd_alias.get(a, a) for a in inputs[n] + inlined.get(k, [])] for k, n in enumerate(backward)]
    extern = {n for n in backward if _extern(n, addmm)}
    starts = _kernel_run_starts(backward, extern)
    replays = _replay_kernels(reads, starts, index) if fusion else []
    if fusion:  # NOTE [ Recomputation inside inductor's kernels ]
        for k, j in enumerate(starts):
            reads[j] = reads[j] + reads[k]
    dying = _dying_grad_bytes(backward, last_reader, bwd_outputs) if fusion else {}
    moved = _fused_early(backward, fused, storage_root, extern, replays) if fusion else {}
    pos = {n: k for k, n in enumerate(backward)}
    for a, cat in into_cat.items():  # NOTE [ Inductor's post-grad rewrites ]: born with its first input
        moved[pos[cat]] = min(moved.get(pos[cat], pos[cat]), moved.get(pos[a], pos[a]))
    nodes: list[Node] = []
    grads: list[Grad] = []
    start = first + len(backward)  # the "bwd tangents" node, first in backward
    for k, n in enumerate(backward):
        saves = tuple(dict.fromkeys(b for a in reads[k] if a in index for b in fwd_nodes[index[a]].value))
        val = n.meta.get("val")
        own = 0 if is_view(n) or n in fused or n in addmm or n in into_cat else sum(_nbytes(t) for t in _tensors(val))
        born, charged = first + k, own
        if own and k in moved:  # fused into an earlier kernel (NOTE [ Recomputation inside inductor's kernels ])
            born, charged = start if moved[k] == 0 else first + moved[k] - 1, 0
        elif own and _fusible(n) and own in dying.get(k, ()):
            charged = 0  # written over a gradient of its size that dies in its kernel (same NOTE)
        # Inductor schedules a reduction that only feeds the graph's outputs (a bias gradient)
        # as soon as its input exists, often before the joint graph's order would: counted from
        # the start of backward, so that no schedule outgrows the prediction.
        early = fusion and own and n in bwd_outputs and torch.Tag.reduction in getattr(n.target, "tags", ())
        if early:
            charged = 0
        extra = op_scratch(n, layout, fusion)
        nodes.append(Node(name=f"bwd {n.name}", op=str(getattr(n.target, "overloadpacket", n.target)),
                          saves=saves, requires_grad=True, bwd_rank=k + 1,
                          bwd_transient_bytes=charged + extra))
        elements = [n] if not isinstance(val, (tuple, list)) else [u for u in n.users if u.target is operator.getitem]
        if not own:
            elements = []
        for e in elements:
            nbytes = sum(_nbytes(t) for t in _tensors(e.meta.get("val")))
            dies = -1 if e in bwd_outputs else first + last_reader.get(e, k)
            grads.append(Grad(nbytes, start if early else born, dies))
    nodes.append(Node(name="bwd tangents", op="tangents", requires_grad=True, bwd_rank=0))
    for t in tangents:
        if _is_tensor_node(t) and t in last_reader:
            # a scalar's tangent is the seed `loss.backward()` makes, which `torch.autograd.backward`
            # references until the whole backward returns (4 B beyond the plan at the floor before)
            held = t.meta["val"].dim() == 0
            grads.append(Grad(_nbytes(t.meta["val"]), start, -1 if held else first + last_reader[t]))
    return nodes, grads


# NOTE [ Recomputation inside inductor's kernels ]
# The backward graph runs its ops in the joint graph's order, a recomputed value just before its
# first reader (`reordering_to_mimic_autograd_engine`), but inductor runs each in the kernel its
# scheduler fuses it into, and so earlier. Three things follow, each seen on the tiny CNN under
# inductor (compile_bench's, 32x3x32x32), whose floor plan measured 7.65 MiB at the allocator
# for 7.40 MiB predicted and a 7.41 MiB budget:
# (1) A recomputed value is computed in a kernel before its reader: the stem's recomputed ReLU
# (read by a convolution's backward) ran in the kernel of the gradient before it, while that
# gradient's inputs were live, and the recomputed convolution it reads ran before that kernel.
# Inductor moves generated kernels (fusion, `reorder_for_peak_memory`) between the extern kernels
# (matmuls, convolutions, fallbacks), which run in graph order; so a recomputation is charged
# from the first op after the extern kernel preceding its reader: the forward values an op reads
# are read by that first op too (`_kernel_run_starts`), and a recomputed one is materialized there.
# (2) A backward op whose inputs exist before an extern kernel that precedes it may run in a
# kernel before that extern kernel (horizontal fusion with a kernel that shares a read): the
# shortcut branch's BatchNorm backward (0.5 MiB) ran in backward's first kernel, beside the main
# branch's, two convolutions early. Its buffer is counted from the first generated kernel
# after its inputs exist that reads a buffer it reads (`_fused_early`; 0-dim values, such as
# the 0 every ReLU's gradient reads, do not count). Counted from where its inputs exist, the
# dropout MLP's GELU gradient was charged across a weight-gradient matmul that inductor runs
# before it, with no kernel there to fuse into: 1 MiB over the measurement.
# (3) Inductor writes a pointwise kernel's output over an input of its size that dies in that
# kernel (`inplace_buffers`): a generated backward op whose position sees a same-sized gradient
# or temporary die allocates nothing beyond it there (`_dying_grad_bytes`).
# (4) The kernel recomputing forward values before an extern kernel also computes the backward
# ops that read what it recomputes, when their backward inputs exist: an unseen net's SiLU-gate
# gradient (a 393,216 B cat), read from the recomputed gate, ran in the kernel recomputing the
# dropout output the next weight-gradient matmul reads, before that matmul (`_replay_kernels`;
# counted whether or not the plan recomputes there, so never under what inductor does), with
# the pointwise gradients it reads (dropout's) inlined into that kernel: such a backward op may
# run there once the extern kernels its inputs come from have run.
# (1), (2) and (4) may charge a value earlier than inductor computes it: safe, and measured close.
# Predicted / allocator MiB after, budget in brackets: that CNN at 90% 9.300 / 9.273 [9.382], at
# its floor 8.175 / 8.148 [8.396]; GPT-2 (2 layers, 256 wide, 2x128 tokens) at 50%
# 202.97 / 202.72 (the loss graph's own predicted peak was 147.24 MiB before, now 98.54 MiB:
# a logits-sized buffer fewer); the dropout MLP at 90% 11.514 / 11.504, at its floor
# 10.014 / 10.004.


def _extern(n: fx.Node, addmm: dict[fx.Node, fx.Node]) -> bool:
    """Whether inductor runs backward op `n` outside its generated kernels (an extern kernel, a
    fallback, a cat), after its post-grad rewrites (`_post_grad_rewrites`)."""
    if n in addmm:
        return False  # runs as the addmm of its add
    if n in addmm.values():
        return True
    return n.op == "call_function" and not is_view(n) and not _fusible(n)


def _kernel_run_starts(backward: list[fx.Node], extern: set[fx.Node]) -> list[int]:
    """Per backward op, the position of the first op after the last extern kernel before it
    (NOTE [ Recomputation inside inductor's kernels ])."""
    starts, start = [], 0
    for k, n in enumerate(backward):
        starts.append(start)
        if n in extern:
            start = k + 1
    return starts


# NOTE [ Inductor's post-grad rewrites ]
# Inductor rewrites the backward graph after the partitioner (post-grad passes, then lowering),
# and two rewrites change what is live, seen on an unseen net (GroupNorm, depthwise convolution,
# attention, dropout, a head tied to the embedding) whose allocator peak was 6.8% (90%) and 20%
# (50%) over its budget:
# (1) `add(mm(a, b), c)` becomes `addmm(c, a, b)` at the add, where the mm has no other reader
# (`post_grad.addmm`; on a GPU only where a reader of the add is not pointwise,
# `should_prefer_unfused_addmm`): the mm's operands are read at the add, and its output never
# exists. A tied head's weight gradient (logits' gradient x the final norm's output) is summed
# into the embedding's gradient at the end of backward: both operands, 148,992 + 98,304 B, were
# held through the whole backward, not freed after the head's backward.
# (2) `cat` is a `ConcatKernel` whose pointwise inputs are computed straight into its slices
# (`ConcatKernel.realize_into`): an input read by the cat alone is no buffer of its own, and the
# cat's buffer exists from the kernel of its first such input (a SiLU-gate's gradient,
# 393,216 B, was allocated in the kernel that computes its first half, with that kernel's inputs).
# And `slice_scatter` / `select_scatter` (the gradient of a slice) are lowered to pointwise code
# though untagged (`_UNTAGGED_POINTWISE`): inlined like any pointwise value, never a buffer of their own.
# Predicted / allocator B after (budget), with (4) of NOTE [ Recomputation inside inductor's
# kernels ]: that net at 90% 4,862,472 / 4,662,028 (4,918,125), at 50% 2,703,880 / 2,601,740
# (2,732,292); before, 4,550,936 / 4,858,636 (4,561,358) and 2,533,912 / 3,040,520 (2,534,088).
# Not modelled, and so not conservative: a recomputation that reads only inputs and parameters
# (an embedding's lookup) may be fused into a kernel well before its reader's run; the smaller
# such net of tests/test_compile.py at its floor measured 376,332 B for 360,580 B predicted.


def _post_grad_rewrites(backward: list[fx.Node]) -> tuple[dict[fx.Node, fx.Node], dict[fx.Node, fx.Node]]:
    """The backward graph's mm -> the add computing it as an addmm, and the pointwise values ->
    the cat they are written into (NOTE [ Inductor's post-grad rewrites ])."""
    from torch._prims_common import is_expandable_to

    aten = torch.ops.aten
    addmm: dict[fx.Node, fx.Node] = {}
    into_cat: dict[fx.Node, fx.Node] = {}
    for n in backward:
        if n.target is aten.add.Tensor and not n.kwargs and len(n.args) == 2:
            mms = [a for a in n.args if isinstance(a, fx.Node) and a.target is aten.mm.default and len(a.users) == 1]
            if mms:
                mm, inp = mms[0], n.args[1] if n.args[0] is mms[0] else n.args[0]
                val, out = (inp.meta.get("val") if isinstance(inp, fx.Node) else None), mm.meta.get("val")
                if (isinstance(val, torch.Tensor) and isinstance(out, torch.Tensor) and val.dtype == out.dtype
                        and is_expandable_to(val.shape, out.shape)
                        and not (val.device.type != "cpu" and all(_fusible(u) for u in n.users))):
                    addmm[mm] = n
        elif n.target is aten.cat.default:
            for a in n.args[0]:
                if (isinstance(a, fx.Node) and a.op == "call_function" and not is_view(a) and len(a.users) == 1
                        and torch.Tag.pointwise in getattr(a.target, "tags", ())):
                    into_cat[a] = n
    return addmm, into_cat


def _rewritten_inputs(n: fx.Node, addmm: dict[fx.Node, fx.Node]) -> list[fx.Node]:
    """The values backward op `n` reads once an mm is computed by its add (`_post_grad_rewrites`)."""
    if n in addmm:
        return []
    ins = list(n.all_input_nodes)
    for mm in [a for a in ins if addmm.get(a) is n]:
        ins = [a for a in ins if a is not mm] + list(mm.all_input_nodes)
    return ins


def _replay_kernels(reads: list[list[fx.Node]], starts: list[int], index: dict[fx.Node, int]
                    ) -> list[tuple[int, frozenset]]:
    """The kernels that may recompute forward values in backward (NOTE [ Recomputation inside
    inductor's kernels ], (4)): per backward op reading forward values, one at its kernel run's
    start, reading those values and what recomputing them in generated code reads (through
    views, pointwise ops and cats, up to the first value another kernel computes)."""
    def reach(v: fx.Node) -> set[fx.Node]:
        seen, stack = set(), [v]
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            if u.op == "call_function" and (is_view(u) or u.target is torch.ops.aten.cat.default or (
                    torch.Tag.pointwise in getattr(u.target, "tags", ()) and _ban(u, set()) is None)):
                stack.extend(a for a in u.all_input_nodes if a in index)
        return seen

    kernels = []
    for k, r in enumerate(reads):
        values = [a for a in r if a in index]
        if values:
            kernels.append((starts[k], frozenset().union(*(reach(v) for v in values))))
    return kernels


def _fused_early(backward: list[fx.Node], fused: set[fx.Node], storage_root, extern: set[fx.Node],
                 replays: list[tuple[int, frozenset]]) -> dict[int, int]:
    """The generated backward ops inductor may run in an earlier kernel, before an extern kernel
    that precedes them (NOTE [ Recomputation inside inductor's kernels ], (2) and (4)), mapped to
    the position of that kernel: the first generated kernel after their inputs exist that reads a
    buffer they read (0-dim values, such as the 0 of every ReLU's gradient, do not count), or the
    first kernel that may recompute a forward value they read (`replays`)."""
    pos = {n: k for k, n in enumerate(backward)}
    avail: dict[fx.Node, int] = {}  # a value -> the position after which it exists
    reads: dict[fx.Node, frozenset] = {}  # a fused value -> the buffers its expression reads
    kernels: list[tuple[int, frozenset]] = []  # generated kernels: position, buffers read
    externs: list[int] = []
    moved: dict[int, int] = {}
    inline: dict[fx.Node, int] = {}  # a value -> the position after which a kernel may compute it inline
    for k, n in enumerate(backward):
        ins = [storage_root(a) for a in n.all_input_nodes]
        at = max((avail.get(a, pos[a]) for a in ins if a in pos), default=-1)
        inline[n] = k if n in extern else max((inline[a] for a in ins if a in pos), default=-1)
        if n in fused or is_view(n):
            avail[n] = at  # computed wherever it is read: its inputs' time
            reads[n] = frozenset().union(*(reads.get(a, {a}) for a in ins))
            continue
        if n in extern:
            externs.append(k)
            continue
        if not _fusible(n):
            continue  # an mm its add computes (NOTE [ Inductor's post-grad rewrites ])
        bufs = frozenset(b for a in ins for b in reads.get(a, {a}) if _tensors(b.meta.get("val"))
                         and any(t.dim() for t in _tensors(b.meta.get("val"))))
        p = min(next((p for p, r in kernels if p >= at and r & bufs), k),
                min((p for p, r in replays if p >= inline[n] and r & bufs), default=k))
        if any(p < e < k for e in externs):
            moved[k] = avail[n] = p
        kernels.append((moved.get(k, k), bufs))
    return moved


def _dying_grad_bytes(backward: list[fx.Node], last_reader: dict[fx.Node, int], bwd_outputs: set[fx.Node]):
    """Per backward position, the sizes of the backward buffers (gradients, temporaries) whose
    last reader runs there: storage inductor may write that op's output over."""
    dying: dict[int, set[int]] = {}
    for n in backward:
        element = n.target is operator.getitem and not is_view(n.args[0])  # one buffer of an op's tuple
        if n in last_reader and n not in bwd_outputs and (element or not is_view(n)):
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor):
                dying.setdefault(last_reader[n], set()).add(_nbytes(val))
    return dying


def _inlined_reads(backward: list[fx.Node], fused: set[fx.Node], storage_root, last_reader: dict[fx.Node, int]):
    """Inductor computes a fused backward value inside each kernel that reads it, so its inputs
    are read where its last reader runs, not where the joint graph puts it: the tiny CNN's two
    gradients of a residual block's input (1 MiB each), summed by an `add` that two kernels far
    apart inline, were held until the second (1 MiB under the measured peak, with the forward
    values those kernels read). Returns `last_reader` extended so, and per position the inputs
    of the fused values whose last reader runs there."""
    last = dict(last_reader)
    inlined: dict[int, list[fx.Node]] = {}
    for k in range(len(backward) - 1, -1, -1):  # readers first, so chains of fused values extend
        n = backward[k]
        if n not in fused:
            continue
        end = last.get(n, k)
        for a in n.all_input_nodes:
            r = storage_root(a)
            last[r] = max(last.get(r, end), end)
        if end != k:
            inlined.setdefault(end, []).extend(n.all_input_nodes)
    return last, inlined


def _backward_storage(backward: list[fx.Node], tangents: list[fx.Node], index: dict[fx.Node, int],
                      inputs: dict[fx.Node, list[fx.Node]]):
    """Where the backward graph's values live: `root`, a backward view -> the backward node (or
    tangent) owning its storage; `fwd_alias`, a backward view of a forward value -> that forward
    node; `last_reader`, a storage's owner -> the position of its last backward reader."""
    bwd_pos = {n: k for k, n in enumerate(backward)}
    root: dict[fx.Node, fx.Node] = {}
    fwd_alias: dict[fx.Node, fx.Node] = {}
    last_reader: dict[fx.Node, int] = {}
    for k, n in enumerate(backward):
        base = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        if n.target is operator.getitem and base in bwd_pos and not is_view(base):
            pass  # one element of a backward op's tuple: a storage of its own
        elif is_view(n) and base is not None:
            if base in bwd_pos or base in tangents:
                root[n] = root.get(base, base)
            elif base in index or base in fwd_alias:
                fwd_alias[n] = fwd_alias.get(base, base)
        for a in inputs[n]:
            last_reader[root.get(a, a)] = k
    return root, fwd_alias, last_reader


# NOTE [ Views cross the boundary as their base ]
# A view the backward reads is replayed there from its base, never saved itself (torch's own
# partitioner does the same: a view costs nothing to replay and holds no storage of its own, so
# the bytes held are the same). Saved as itself, a strided view (a GroupNorm's grouped view of a
# transposed embedding, strides (3072, 1, 192, 4)) was handed to inductor's backward, whose fused
# embedding/GroupNorm backward kernel then crashed the process (heap corruption) or, in a larger
# net, gave the tied embedding a gradient 54% off (fp64, nothing recomputed; aot_eager and the
# default partitioner exact).


def saved_values(jp: JointProblem, recompute: frozenset[str]) -> list[fx.Node]:
    """The forward values the backward graph takes when the nodes named `recompute` are replayed:
    kept values read by a backward op or by a replayed node backward needs. A forward value is
    replayed when its storage's producer is recomputed, or when it holds no storage (a view of a
    parameter) and nothing forbids it; tuples are saved through their getitems."""
    index = {n: i for i, n in enumerate(jp.forward)}
    nodes = jp.problem.nodes

    def replayed(n: fx.Node) -> bool:
        if n not in index:
            return False  # primals
        if is_view(n) and n.target is not operator.getitem and nodes[index[n]].ban is None:
            return True  # NOTE [ Views cross the boundary as their base ]
        src = jp.source.get(n)
        if src is None:
            return nodes[index[n]].ban is None
        producer = jp.forward[jp.problem.buffers[nodes[index[src]].value[0]].producer] if nodes[index[src]].value else src
        return producer.name in recompute

    saved: dict[fx.Node, None] = {}
    seen: set[fx.Node] = set()
    stack = list(jp.backward)
    while stack:
        n = stack.pop()
        for a in n.all_input_nodes:
            if a in jp.backward or str(a.target).startswith("tangents"):
                continue
            if replayed(a):
                if a not in seen:
                    seen.add(a)
                    stack.append(a)
            else:
                saved[a] = None
    # graph order: a symbolic size the backward reads (dynamic shapes: `sym_size_int`) is no
    # problem node, and is saved as torch's partitioner saves it
    order = {n: i for i, n in enumerate(next(iter(saved)).graph.nodes)} if saved else {}
    return sorted(saved, key=order.__getitem__)
