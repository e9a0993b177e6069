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
  returns is held across the boundary: the saved values and the outputs (the caller holds them),
  not the buffers it leaves to die at its return (NOTE [ A graph's locals die when it returns ]);
- backward: that, plus the tangents, less each saved value its code deletes (not the
  parameters, but the copies the forward made of them: NOTE [ A saved input the forward
  copied ]; not an output the caller also holds), plus its own buffers;
- the scratch of the kernels inductor does not generate (extern kernels: oneDNN's convolutions,
  the CPU flash attention; fallbacks: any aten op inductor runs eagerly) is probed on real
  tensors of their shapes and of the strides inductor gave them, and charged while the kernel
  runs (NOTE [ Inductor's fallbacks are probed ] in passes/fake_step.py), beside every output of
  a fallback that returns a tuple (NOTE [ A fallback's outputs exist while it runs ]).
That figure is the plan's prediction under inductor. The budget is held against the larger of it
and the problem's prediction: the problem's rules, where they over-count, keep the budget as
they did before the code was read. Where that exceeds the budget, the graph is planned again, the
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

    def peak(self, reserve: int = 0, after: int = 0) -> int:
        """The step's peak, `reserve` bytes more held at the boundary for the graphs after it, and
        `after` bytes of their outputs through the backward."""
        return max(self.forward_peak, self.boundary_bytes + max(reserve, after + self.backward_peak))


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


def boundary_names(fw: fx.GraphModule, bw: fx.GraphModule, num_fwd_outputs: int) -> tuple[frozenset, frozenset, dict]:
    """Names of the backward graph's inputs: the tangents (allocated before it starts), those
    whose deletion frees memory: saved values neither the caller (a forward output) nor the
    module (`primals_*`) holds, and the tangents AOTAutograd made contiguous (not a scalar
    loss's seed, which `backward()` holds); and the saved inputs of the forward, by their
    position among its outputs (NOTE [ A saved input the forward copied ])."""
    outputs = next(n for n in fw.graph.nodes if n.op == "output").args[0]
    held = {a.name for a in outputs[:num_fwd_outputs] if isinstance(a, fx.Node)}
    inputs = [n for n in bw.graph.nodes if n.op == "placeholder"]
    tangents = {n.name for n in inputs if n.name.startswith("tangents")}
    frees = {n.name for n in inputs if not n.name.startswith(("primals_", "tangents")) and n.name not in held}
    frees |= {n.name for n in inputs if n.name in tangents and getattr(n.meta.get("val"), "ndim", 0)}
    position = {a.name: i for i, a in enumerate(outputs) if isinstance(a, fx.Node) and i >= num_fwd_outputs}
    primals = {n.name: position[n.name] for n in inputs
               if n.name.startswith("primals_") and n.name not in held and n.name in position}
    return frozenset(tangents), frozenset(frees), primals


# NOTE [ A saved input the forward copied ]
# A saved value that is an input of the forward (a parameter, the batch) is held by the module
# or the caller, and the backward deleting it frees nothing, so `boundary_names` leaves the
# `primals_*` out of the frees. But inductor's layout optimization gives convolutions
# channels-last weights: the forward copies such a weight (`buf17 = empty_strided_cpu((128, 128,
# 3, 3), (1152, 1, 384, 128))`), returns the copy where the graph saved the parameter, and the
# backward, which still names it `primals_302`, frees it at its last use. The forward's walk
# holds the copy across the boundary, so the backward's must free it: on a small ResNet
# (bottleneck, depths 3-4-6-3) the copies were held to the end of the backward, 12,127,544 B
# predicted for 9,298,224 B measured. Whether an output is a copy is read from the forward's
# code (an output that is not one of its inputs).
def step_buffers(recorder: BufferPlanRecorder, tangents: frozenset, frees: frozenset, primals: dict | None = None,
                 loss_bytes: int = 0) -> StepBuffers:
    """The step of the forward and backward graphs `recorder` saw (NOTE [ Inductor's code is the prediction ]),
    with `loss_bytes` held through backward (NOTE [ The eager loss ] in joint.py)."""
    if len(recorder.graphs) != 2:
        raise RuntimeError(f"expected inductor to compile a forward and a backward graph, saw {len(recorder.graphs)}")
    forward = read_wrapper(recorder.graphs[0])
    frees = frees | _copied_inputs(recorder.graphs[0], primals or {})
    backward = read_wrapper(recorder.graphs[1], born=tangents, frees=frees)
    return StepBuffers(forward.peak, forward.end_bytes, backward.peak + loss_bytes)


def _copied_inputs(graph, primals: dict) -> frozenset:
    """Of the saved forward inputs `primals` (name -> position among the forward's outputs),
    those the forward's code returns a buffer of its own for (NOTE [ A saved input the forward copied ])."""
    names = graph.get_output_names()
    return frozenset(name for name, i in primals.items() if i < len(names) and names[i] not in graph.graph_inputs)


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
        tuples: dict[str, int] = {}  # a fallback's tuple -> bytes of its outputs the code has not kept
        local: dict[str, int] = {}  # buffers allocated and not deleted -> their bytes
        for line in graph.wrapper_code.lines:
            scratch = 0
            if isinstance(line, W.AllocateLine):
                cur += local.setdefault(line.node.get_name(), owned(line.node))
            elif isinstance(line, W.FreeIfNotReusedLine):
                if line.node.get_name() in tuples:  # what the tuple made and the code did not keep
                    cur -= max(0, tuples.pop(line.node.get_name()))
                elif not line.is_reused and not line.node.get_inputs_that_alias_output():
                    local.pop(line.node.get_name(), None)
                    cur -= owned(line.node)
            elif isinstance(line, W.ReuseLine):  # the same storage under the new name
                local[line.reused_as.get_name()] = local.pop(line.node.get_name(), owned(line.reused_as))
            elif isinstance(line, W.ExternKernelAllocLine):  # a fallback allocates its outputs
                cur += local.setdefault(line.node.get_name(), owned(line.node))
                scratch = _scratch(line.node)
                if isinstance(line.node.layout, ir.MultiOutputLayout):
                    tuples[line.node.get_name()] = made = _tuple_bytes(line.node)
                    cur += made
            elif isinstance(line, W.ExternKernelOutLine):
                scratch = _scratch(line.node)
            elif isinstance(line, W.MultiOutputLine):  # an output of a fallback's tuple, counted with it
                if line.arg_name in tuples:
                    tuples[line.arg_name] -= owned(V.graph.get_buffer(line.result_name))
                else:
                    cur += local.setdefault(line.result_name, owned(V.graph.get_buffer(line.result_name)))
            elif isinstance(line, W.FreeLine) and line.node.get_name() in frees:
                cur -= inputs.get(line.node.get_name(), 0)
            live.append(cur + scratch)
        returned = set(graph.get_output_names())  # NOTE [ A graph's locals die when it returns ]
        died = sum(n for name, n in local.items() if name not in returned)
    return GraphBuffers(tuple(live), cur - died)


# NOTE [ A graph's locals die when it returns ]
# Inductor's wrapper deletes a buffer after its last reader, but not one whose last reader is the
# graph's last kernel: that one is a local of the wrapper's `call` and dies when it returns. The
# end of the walk counts only what the graph returns: a CNN whose last convolution's output was
# read only by the kernel that wrote the loss and the ReLU's mask (`buf9`, 524,288 B) was held
# across the boundary, and the step predicted 12,562,520 B for 12,038,156 B measured.


def _origin(node):
    """The fx node of the aten op that an extern kernel or a fallback runs (None: no aten op)."""
    import torch

    origin = node.get_origin_node()
    if origin is None:  # a fallback returning a tuple: its op among the nodes it was made of
        op = getattr(node, "op_overload", None)
        origin = next((o for o in node.origins if o.op == "call_function" and o.target == op), None)
    if (origin is None or origin.op != "call_function" or not isinstance(origin.target, torch._ops.OpOverload)
            or origin.target.namespace != "aten"):
        return None
    return origin


# NOTE [ A fallback's outputs exist while it runs ]
# A fallback that returns several tensors is a tuple in inductor's code (`buf16 = torch.ops.aten.
# convolution_backward.default(...)`), whose outputs the code takes afterwards (`buf17 = buf16[0]`,
# a `MultiOutputLine`), and deletes with the tuple those it does not keep. The kernel allocates
# them all while it runs, beside its scratch: counted only at those lines, the pooling CNN of
# tests/test_compile.py at 70% was read as 1,884,020 B where the allocator measured 2,155,512 B,
# a `convolution_backward`'s 271,488 B of outputs on top of its 46,208 B of scratch. So the
# tuple's line counts every tensor the op's fake value holds (not an operand it returns), kept
# until the tuple is deleted but for the outputs the code took, which live on as its buffers.
def _tuple_bytes(node) -> int:
    """Bytes of the tensors a fallback returning a tuple allocates, from its op's fake values
    (NOTE [ A fallback's outputs exist while it runs ])."""
    import torch
    from torch.utils import _pytree as pytree

    from fxckpt.passes.ops import storage_key

    origin = _origin(node)
    if origin is None:
        return 0
    operands = pytree.tree_leaves(pytree.tree_map_only(fx.Node, lambda n: n.meta.get("val"), (origin.args, origin.kwargs)))
    operands = {storage_key(t) for t in operands if isinstance(t, torch.Tensor)}
    made = {storage_key(t): t.untyped_storage().nbytes() for t in pytree.tree_leaves(origin.meta.get("val"))
            if isinstance(t, torch.Tensor) and not any(isinstance(x, torch.SymInt) for x in t.shape)}
    return sum(n for key, n in made.items() if key not in operands)  # not an operand it returns


def _scratch(node) -> int:
    """Scratch of an extern kernel or a fallback: its op probed on real tensors of its operands'
    shapes and of the strides inductor gave them (an operand in another layout than the kernel
    wants is copied: scratch), every aten op, as NOTE [ Inductor's fallbacks are probed ] says."""
    import torch
    from torch.utils import _pytree as pytree

    from fxckpt.passes import fake_step

    origin = _origin(node)
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
    return fake_step.op_scratch(origin.target, args, kwargs, fallback=True)
