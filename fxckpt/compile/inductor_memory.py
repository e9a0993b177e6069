"""What the compiled step holds, read from the code inductor generated for it.

NOTE [ Inductor's code is the prediction ]
The joint-graph problem (`fxckpt.compile.joint`) models what inductor's code holds by rules
about its fusion, layout and rewrites, and every unseen net found a rule missing: the quick
net's forward kernels emitted 512 KiB outputs the rules did not know of, and its allocator
peaked at the end of the forward, 51,972 B over the budget, where the problem put the peak in
backward. Inductor knows what it emits: its wrapper code is a list of typed lines
(`torch._inductor.codegen.wrapper`) that allocate a buffer, reuse a freed one of the same size
(`buf5 = buf2; del buf2  # reuse`), let a fallback allocate its outputs, and free a buffer or
an input after its last reader. Walked in order, they give the bytes live at every line
(`read_wrapper`); on the quick net, the forward's walk equals the allocator's peak to the byte.
So, once both halves are compiled, the step's peak is read from them (`step_buffers`):
- forward: its own buffers (the inputs and parameters are there before the step); what it
  returns is held across the boundary: the saved values and the outputs (the caller holds them);
- backward: that, plus the tangents, less each saved value its code deletes (not the
  parameters, not an output the caller also holds), plus its own buffers;
- the scratch of the kernels inductor does not generate (oneDNN's convolutions, the CPU flash
  attention) is probed on real tensors of their shapes, as the problem does (`joint.op_scratch`),
  and charged while the kernel runs.
That figure is the plan's prediction under inductor. The budget is held against the larger of it
and the problem's prediction: the walk does not see what a fallback kernel allocates beyond its
outputs where the probe does not reproduce it (the BatchNorm CNN of compile_unseen2 at its floor:
a convolution_backward's 262,144 B, the allocator 2,155,508 B for 1,884,020 B read from the code
and 2,230,836 B predicted by the problem), and the problem's rules, where they over-count, keep
the budget as they did before. Where that exceeds the budget, the graph is planned again, the
solver aiming lower by the excess, and compiled again, at most `MAX_REPLANS` times, then at the
problem's floor; a `budget_mb` that even the floor plan exceeds raises `InfeasibleBudgetError`
naming the smallest such peak (`FxckptBackend._compile_planned`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx


@dataclass(frozen=True)
class GraphBuffers:
    """One graph as its generated code allocates: `live[k]`, bytes allocated and not freed after
    line k of its wrapper (the inputs counted at the start are `born`), and `end_bytes`, bytes
    still allocated when it returns (its outputs, less the inputs it freed)."""

    live: tuple[int, ...]
    end_bytes: int

    @property
    def peak(self) -> int:
        return max(self.live, default=0)


@dataclass(frozen=True)
class StepBuffers:
    """What a forward graph and its backward hold in the step, as inductor's code allocates."""

    forward_peak: int
    boundary_bytes: int  # what the forward allocated and returns: saved values and outputs
    backward_peak: int  # above the boundary (the tangents included)

    def peak(self, reserve: int = 0) -> int:
        """The step's peak, `reserve` bytes more held at the boundary for the graphs after it."""
        return max(self.forward_peak, self.boundary_bytes + max(reserve, self.backward_peak))


class BufferPlanRecorder:
    """Inductor's `_post_fusion_custom_pass`: keeps each graph it compiles, read once generated."""

    def __init__(self):
        self.graphs: list = []  # GraphLowering per graph, in compile order

    def __call__(self, nodes):
        from torch._inductor.virtualized import V

        self.graphs.append(V.graph)
        return nodes

    def __deepcopy__(self, memo):  # inductor deep-copies its config: keep recording here
        return self

    def __reduce__(self):  # inductor's cache key pickles its config
        return (str, ("fxckpt.compile.inductor_memory.BufferPlanRecorder",))


def boundary_names(fw: fx.GraphModule, bw: fx.GraphModule, num_fwd_outputs: int) -> tuple[frozenset, frozenset]:
    """Names of the backward graph's inputs: the tangents (allocated before it starts), and those
    whose deletion frees memory: saved values neither the caller (a forward output) nor the
    module (`primals_*`) holds, and the tangents AOTAutograd made contiguous (not a scalar
    loss's seed, which `backward()` holds)."""
    outputs = next(n for n in fw.graph.nodes if n.op == "output").args[0]
    held = {a.name for a in outputs[:num_fwd_outputs] if isinstance(a, fx.Node)}
    inputs = [n for n in bw.graph.nodes if n.op == "placeholder"]
    tangents = {n.name for n in inputs if n.name.startswith("tangents")}
    frees = {n.name for n in inputs if not n.name.startswith(("primals_", "tangents")) and n.name not in held}
    frees |= {n.name for n in inputs if n.name in tangents and getattr(n.meta.get("val"), "ndim", 0)}
    return frozenset(tangents), frozenset(frees)


def step_buffers(recorder: BufferPlanRecorder, tangents: frozenset, frees: frozenset) -> StepBuffers:
    """The step of the forward and backward graphs `recorder` saw (NOTE [ Inductor's code is the prediction ])."""
    if len(recorder.graphs) != 2:
        raise RuntimeError(f"expected inductor to compile a forward and a backward graph, saw {len(recorder.graphs)}")
    forward = read_wrapper(recorder.graphs[0])
    backward = read_wrapper(recorder.graphs[1], born=tangents, frees=frees)
    return StepBuffers(forward.peak, forward.end_bytes, backward.peak)


def read_wrapper(graph, born: frozenset = frozenset(), frees: frozenset = frozenset()) -> GraphBuffers:
    """The allocations and frees of `graph`'s generated wrapper code, line by line: inputs named
    in `born` are counted from the start, and deleting an input named in `frees` frees it."""
    from torch._inductor import ir
    from torch._inductor.codegen import wrapper as W
    from torch._inductor.utils import get_dtype_size
    from torch._inductor.virtualized import V

    def nbytes(node, numel) -> int:
        return V.graph.sizevars.optimization_hint(numel, fallback=0) * get_dtype_size(node.get_dtype())

    def owned(node) -> int:  # the storage a buffer allocates (none for a tuple, a view, nothing)
        if isinstance(node.layout, (ir.MultiOutputLayout, ir.NoneLayout, ir.NonOwningLayout)):
            return 0
        return nbytes(node, V.graph.get_allocation_storage_size(node))

    live: list[int] = []
    with V.set_graph_handler(graph):
        inputs = {name: nbytes(node, node.get_numel()) for name, node in graph.graph_inputs.items()
                  if isinstance(node, ir.IRNode) and (name in born or name in frees)}
        cur = sum(inputs[name] for name in born if name in inputs)
        for line in graph.wrapper_code.lines:
            scratch = 0
            if isinstance(line, W.AllocateLine):
                cur += owned(line.node)
            elif isinstance(line, W.FreeIfNotReusedLine):
                if not line.is_reused and not line.node.get_inputs_that_alias_output():
                    cur -= owned(line.node)
            elif isinstance(line, W.ExternKernelAllocLine):  # a fallback allocates its outputs
                cur += owned(line.node)
                scratch = _scratch(line.node, graph)
            elif isinstance(line, W.ExternKernelOutLine):
                scratch = _scratch(line.node, graph)
            elif isinstance(line, W.MultiOutputLine):  # an output of a fallback's tuple
                cur += owned(V.graph.get_buffer(line.result_name))
            elif isinstance(line, W.FreeLine) and line.node.get_name() in frees:
                cur -= inputs.get(line.node.get_name(), 0)
            live.append(cur + scratch)
    return GraphBuffers(tuple(live), cur)


def _scratch(node, graph) -> int:
    """Scratch of an extern kernel or a fallback: its op probed on real tensors of its operands'
    shapes and of the strides inductor gave them (an operand in another layout than the kernel
    wants is copied: scratch), as the problem probes (`joint.op_scratch`)."""
    import torch
    from torch.utils import _pytree as pytree

    from fxckpt.passes import fake_step

    from .joint import PROBED

    origin = next((o for o in getattr(node, "origins", ()) if o.op == "call_function" and o.target in PROBED), None)
    if origin is None:
        return 0
    laid = iter([i for i in getattr(node, "inputs", ()) if hasattr(i, "get_stride")])

    def as_laid(t):
        ir = next(laid, None)
        try:
            size, stride = [int(s) for s in ir.get_size()], [int(s) for s in ir.get_stride()]
        except (AttributeError, TypeError):  # symbolic, or no operand: the fake value's layout
            return t
        if size != list(t.shape):
            return t
        return torch.empty_strided(size, stride, dtype=t.dtype, device=t.device)

    args, kwargs = pytree.tree_map_only(fx.Node, lambda n: n.meta.get("val"), (origin.args, origin.kwargs))
    args, kwargs = pytree.tree_map_only(torch.Tensor, as_laid, (args, kwargs))
    return fake_step.op_scratch(origin.target, args, kwargs)
