"""rewrite: (GraphModule, Plan) -> a new GraphModule that recomputes what the plan says.

NOTE [ Per-tensor rematerialization through saved-tensor hooks ]
We chose saved-tensor hooks over `torch.utils.checkpoint` regions. A region recomputes all of
its saved tensors at once in backward, so its peak is the kept tensors plus the largest region's
working set, and plans are limited to region boundaries; eager checkpointing also re-runs
BatchNorm (statistics updated twice) and needs RNG stashing for dropout. With hooks, each node
the plan recomputes records a `Recipe` (its function and the handles of its inputs) when it runs
forward; the pack hook swaps any saved tensor living in that node's storage for the recipe; the
unpack hook materializes it once, under no_grad, from kept inputs or other recipes. Random ops
replay from the RNG state their recipe kept (NOTE [ RNG states the runtime holds ] in runtime.py)
and batch norm is recomputed without its running statistics, so gradients and buffers are
bitwise those of the original model. The memory this holds is exactly what `fxckpt.core.simulate`
models: recipes cache their value until the last saved slot that refers to them is released by
autograd, and hold their RNG states until their replay.
"""

from __future__ import annotations

import torch
import torch.fx

from fxckpt.core.errors import in_stage
from fxckpt.core.simulate import needed_recipes

from .annotate import META
from .capture import copy_graph, derive
from .ops import node_fn
from .runtime import RecipeSpec, RematRuntime
from .to_problem import to_problem


def _savers_of(problem, R) -> set[str]:
    """Nodes whose backward saves a buffer of a recomputed node: the only ones, besides the
    recipes themselves, whose saved tensors the pack hook must see."""
    buffers = problem.buffers
    return {n.name for n in problem.nodes if n.requires_grad and any(buffers[b].producer in R for b in n.saves)}


def _insert_hook_switches(graph: torch.fx.Graph, rt_node, nodes, hooked: set[str]) -> None:
    """Turn the pack hook on before each run of `hooked` nodes and off after it.

    NOTE [ Hooks only where the plan recomputes ]
    A saved-tensor hook is a Python call for every tensor autograd saves, in forward, and
    again when backward unpacks it. Only the recipes' own saves and the saves of their
    consumers can refer to a recomputed storage, and annotation knows which nodes those are;
    every other node runs without hooks (and with nothing recomputed, no node has any). A save
    annotation did not foresee is held by autograd: more memory than predicted, never a wrong
    gradient. The runtime turns the hook off when the forward ends, whatever happened.
    """
    on = False
    for node in [*nodes, graph.output_node()]:
        want = node.name in hooked and node.op != "output"
        if node.op in ("placeholder", "get_attr") or want == on:
            continue
        with graph.inserting_before(node):
            graph.call_method("hooks_on" if want else "hooks_off", (rt_node,))
        on = want


def _read_in_place(gm: torch.fx.GraphModule, need: set[str], remat: set[str]) -> set[str]:
    """Recomputed inputs the recipes in `need` read themselves although the problem lists their
    last in-place writer instead (`NodeCost.reads`, NOTE [ Replaying in-place writes ]): views,
    producers or earlier writers of the storage the writer's replay rebuilds, so recording them
    costs no memory or FLOPs the simulator does not already count."""
    nodes = {n.name: n for n in gm.graph.nodes}
    extra: set[str] = set()
    stack = list(need)
    while stack:
        for a in nodes[stack.pop()].all_input_nodes:
            if a.name in remat and a.name not in need and a.name not in extra:
                extra.add(a.name)
                stack.append(a.name)
    return extra


def rewrite(gm: torch.fx.GraphModule, plan) -> torch.fx.GraphModule:
    """A new GraphModule, sharing `gm`'s state, that recomputes `plan.recompute` in backward.

    The result is a plain forward when called directly; the returned module's
    `fxckpt_runtime.active()` context turns the plan on (`CheckpointedModule` does this).

    Raises:
        StageError: stage "rewrite", naming the node whose recipe could not be built.
    """
    problem = to_problem(gm)
    R = problem.indices(plan.recompute)  # a KeyError names a node the graph does not have
    need = needed_recipes(problem, R)
    need_names = {problem.nodes[i].name for i in need}
    remat_names = {problem.nodes[i].name for i, s in enumerate(problem.source) if s in R}
    need_names |= _read_in_place(gm, need_names, remat_names)

    graph, env = copy_graph(gm.graph)
    specs: dict[str, RecipeSpec] = {}
    rt_node = None
    if need_names:
        first = next(n for n in graph.nodes if n.op != "placeholder")
        with graph.inserting_before(first):
            rt_node = graph.get_attr("fxckpt_runtime")
        _insert_hook_switches(graph, rt_node, [env[n] for n in gm.graph.nodes if n.op != "output"],
                              need_names | _savers_of(problem, R))
    old = None
    with in_stage("rewrite", lambda e: old and old.name):
        for old in gm.graph.nodes:
            if old.name in need_names:
                specs[old.name] = _recipe(gm, graph, env[old], old, rt_node, need_names, remat_names)
        old = None
        return derive(gm, graph, fxckpt_runtime=RematRuntime(specs))


def _recipe(gm, graph, new, old, rt_node, need_names: set[str], remat_names: set[str]) -> RecipeSpec:
    """The recipe of node `old` (`new` in the rewritten graph), and the runtime calls around it."""
    cost = old.meta[META]
    inputs = tuple(a.name for a in old.all_input_nodes)
    reads = dict(cost.reads)
    remat = frozenset(a for a in inputs if a in remat_names)
    # NOTE [ Replaying in-place writes ]
    # A recomputed buffer is rebuilt once, and views and in-place writers replay on that
    # storage. A replay reads its input itself (its shape, strides and offset: the writer's
    # output may be another view of the storage) after the writes that input had seen in
    # forward: the writer's recipe runs first. Writes that came later cannot have run yet
    # where it matters: annotate bans recomputing whatever would see them.
    after = tuple(dict.fromkeys(reads[a] for a in inputs if a in remat and a in reads))
    missing = (remat | set(after)) - need_names
    assert not missing, f"recipe inputs {sorted(missing)} of {old.name} are not recorded"
    spec = RecipeSpec(
        old.name, node_fn(old, gm, recompute=True), (old.args, old.kwargs), inputs, remat, after,
        writer=bool(cost.value and (cost.creates or cost.writes)),
        random=cost.is_random, internals=cost.extra_saved_bytes > 0,
        module=gm.get_submodule(old.target) if old.op == "call_module" else None, in_place=bool(cost.writes))
    with graph.inserting_before(new):
        graph.call_method("begin", (rt_node, old.name, list(new.all_input_nodes)))
    with graph.inserting_after(new):
        graph.call_method("record", (rt_node, old.name, new))
    return spec
