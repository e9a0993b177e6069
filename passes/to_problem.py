"""to_problem: an annotated GraphModule -> the torch-free `RematProblem` the solvers read."""

from __future__ import annotations

import torch
import torch.fx
from torch.utils import _pytree as pytree

from fxckpt.core.costs import NodeCost
from fxckpt.core.errors import StageError, in_stage
from fxckpt.core.problem import Buffer, Grad, Node, RematProblem
from fxckpt.core.timing import DeviceRates, node_seconds

from .annotate import META


def to_problem(gm: torch.fx.GraphModule, name: str = "graph", *, rates: DeviceRates | None = None,
               seconds: dict[str, float] | None = None) -> RematProblem:
    """The torch-free `RematProblem` of an annotated graph, in execution order.

    Node times, which make the solvers minimize seconds instead of FLOPs: `seconds` (measured
    per node, `fxckpt.calibrate.profile_nodes`) where given, else estimated at `rates`
    (`fxckpt.calibrate.device_rates`); with neither, nodes carry no times.
    """
    if META not in gm.meta:
        raise ValueError("to_problem takes the GraphModule that annotate() returns; this one is not annotated")
    nodes = [n for n in gm.graph.nodes if META in n.meta]
    index = {n: i for i, n in enumerate(nodes)}
    by_name = {n.name: n for n in nodes}
    buffers: list[Buffer] = []
    buf_index: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for bname, nbytes in n.meta[META].creates:
            buf_index[bname] = len(buffers)
            buffers.append(Buffer(bname, nbytes, i))
    outputs = {a for a in pytree.tree_leaves(next(iter(reversed(gm.graph.nodes))).args) if isinstance(a, torch.fx.Node)}
    out_nodes = []
    n = None
    with in_stage("to_problem", lambda e: n and n.name):
        for n in nodes:
            out_nodes.append(_node(n, index, by_name, buf_index, outputs, rates, seconds))
    grads = tuple(Grad(nbytes, index[n], index[by_name[d]] if d is not None else -1)
                  for n in nodes for d, nbytes in n.meta[META].grads)
    return RematProblem(tuple(out_nodes), tuple(buffers), grads=grads, name=name)


def _node(n: torch.fx.Node, index, by_name, buf_index, outputs, rates, seconds) -> Node:
    """The problem's node for the annotated fx node `n`."""
    c: NodeCost = n.meta[META]
    policy = n.meta.get("recompute")
    prefer = None
    if policy is not None:
        prefer = "save" if "SAVE" in getattr(policy, "name", str(policy)) else "recompute"
    ban = c.ban if c.ban is not None else ("graph output" if n in outputs else None)
    reads = dict(c.reads)
    inputs = (by_name[reads.get(a.name, a.name)] for a in n.all_input_nodes if a in index)
    return Node(
        name=n.name, scope=_scope(n), op=_op_name(n), inputs=tuple(dict.fromkeys(index[a] for a in inputs)),
        creates=tuple(buf_index[b] for b, _ in c.creates), value=tuple(buf_index[b] for b in c.value),
        writes=tuple(buf_index[b] for b in c.writes),
        saves=tuple(buf_index[b] for b in c.saves), recipe_bytes=c.recipe_bytes, flops=c.flops,
        extra_saved_bytes=c.unhooked_saved_bytes, seconds=_seconds(n.name, c, rates, seconds),
        requires_grad=c.requires_grad, transient_bytes=c.transient_bytes,
        bwd_rank=c.bwd_rank, bwd_transient_bytes=c.bwd_transient_bytes,
        bwd_unpack_bytes=c.bwd_unpack_bytes, bwd_replay_transient_bytes=c.bwd_replay_transient_bytes, is_output=n in outputs, ban=ban, prefer=prefer,
    )


def _seconds(name: str, c: NodeCost, rates: DeviceRates | None, measured: dict[str, float] | None) -> float | None:
    if measured is not None:
        if name not in measured:
            raise StageError(f"node {name!r} has no measured time; profile the same annotated graph",
                             stage="to_problem", node=name)
        return measured[name]
    if rates is None:
        return None
    return node_seconds(rates, c)


def _scope(n: torch.fx.Node) -> str:
    """The module path a node runs in (e.g. "transformer.h.3.attn"), from torch.fx's
    nn_module_stack; a call_module node is in its own module."""
    if n.op == "call_module":
        return str(n.target)
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    path = path[0] if isinstance(path, tuple) else path
    return str(path).replace("L['self'].", "").replace("L__self___", "")


def _op_name(n: torch.fx.Node) -> str:
    if n.op == "call_module":
        return f"module {n.target}"
    if n.op == "call_method":
        return f"method {n.target}"
    return getattr(n.target, "__name__", str(n.target)) if not isinstance(n.target, torch._ops.OpOverload) else str(n.target)
