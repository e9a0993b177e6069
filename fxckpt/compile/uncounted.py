"""What a compiled step holds outside its plans, found on a graph's first step and reported.

NOTE [ Memory the plans do not see ]
The backend plans each graph Dynamo hands it, once per step in first-run order (NOTE [ Graph
breaks share the budget in first-run order ]). Two things in a step hold memory it never sees,
and both are visible only when the graph runs, on the real tensors:
(1) Eager autograd history: a graph input that requires grad and carries a `grad_fn` that is not
a compiled graph's (`CompiledFunctionBackward`) was computed by eager code, whose saved tensors
are held while the graph runs (eager code before the first graph: until the very end of the
backward). Compile time cannot tell it apart: Dynamo's fake inputs are non-leaves whether an
earlier compiled graph or eager code made them. The eager nodes' saved tensors are summed (the
leaves' storages, parameters, left out).
(2) A graph run again before the backward of its earlier run: each run holds what it saves, and
the plan counted one. Seen on a GRU + MoE net: Dynamo does not trace `nn.GRU`
(`torch._dynamo.config.allow_rnn` is False) and skipped the model's forward, so the MoE layer's
forward became the one compiled graph, run three times per step: predicted 12,717,056 B, allocator
22,094,856 B at every budget, silently. With `allow_rnn = True` the whole model is one graph
(predicted 26,620,416 B, allocator 26,460,968 B at 90%).
Each is reported once per backend with an `UncountedMemoryWarning` naming the bytes and the cure
(move the code into the compiled region; for RNN modules, `allow_rnn`). Counting them into the
plans is not done: (2) would need the number of runs per step before the first one ends. The
checks run until the graph's first backward starts, so later steps pay nothing.
"""

from __future__ import annotations

import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils import _pytree as pytree

from fxckpt.core.errors import MIB, UncountedMemoryWarning

COMPILED = "CompiledFunctionBackward"


def _saved(node) -> list[torch.Tensor]:
    """The tensors an autograd node holds for its backward, read without unpacking them: an
    unpack runs the saved-tensor hooks (a non-reentrant `torch.utils.checkpoint` region would run
    its forward again, BatchNorm statistics included; `save_on_cpu` would copy back). What a hook
    packed counts where it is a tensor (not a checkpoint's placeholder); none once freed."""
    out = []
    for name in [n for n in dir(node) if n.startswith("_raw_saved_")]:
        try:
            value = getattr(node, name, None)
            packed = [s.data for s in pytree.tree_leaves(value) if isinstance(s, torch._C._autograd.SavedTensor)]
        except RuntimeError:  # freed by a backward
            continue
        out.extend(t for t in packed if isinstance(t, torch.Tensor))
    return out


def eager_saved_bytes(inputs) -> tuple[int, list[str]]:
    """Bytes the eager autograd history of `inputs` saved (NOTE [ Memory the plans do not see ],
    (1)): the distinct storages saved by the autograd nodes reachable from their `grad_fn`s
    without passing a compiled graph's, less the leaves'; and those nodes' names.

    Example:
        >>> w = torch.randn(64, 64, requires_grad=True)
        >>> eager_saved_bytes([torch.tanh(torch.randn(8, 64) @ w)])[0]  # tanh's output and mm's input
        4096
    """
    stack = [t.grad_fn for t in inputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen, saved, leaves, names = set(), {}, set(), []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() == COMPILED:
            continue  # counted by its own plan
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf, which exists before the step
        if isinstance(variable, torch.Tensor):
            leaves.add(variable.untyped_storage().data_ptr())
            continue
        tensors = _saved(node)
        for t in tensors:
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        if tensors:
            names.append(node.name())
        stack.extend(n for n, _ in node.next_functions)
    return sum(b for p, b in saved.items() if p not in leaves), names


class RunWatch:
    """Watches one compiled graph's runs until its first backward starts (NOTE [ Memory the plans
    do not see ]); warnings go through `warned`, shared by the backend's graphs (once each)."""

    def __init__(self, name: str, boundary_bytes, warned: set[str]):
        self.name, self.boundary_bytes, self.warned = name, boundary_bytes, warned
        self.pending = 0  # runs whose backward has not started
        self.done = False

    def before(self, args) -> None:
        if self.done or not torch.is_grad_enabled() or _fake(args):
            return
        if "eager" not in self.warned:
            nbytes, names = eager_saved_bytes(args)
            if nbytes:
                self.warned.add("eager")
                kinds = ", ".join(dict.fromkeys(names[:6]))
                warnings.warn(UncountedMemoryWarning(
                    f"fxckpt backend: eager code before {self.name} saved {nbytes:,} B ({nbytes / MIB:.2f} MiB) "
                    f"for backward ({kinds}), held while the compiled graphs run and not counted in the budget. "
                    "Move that code inside the compiled module; for RNN modules, which Dynamo does not trace, "
                    "set torch._dynamo.config.allow_rnn = True"), stacklevel=3)
        if self.pending and "again" not in self.warned:
            self.warned.add("again")
            held = self.boundary_bytes()
            warnings.warn(UncountedMemoryWarning(
                f"fxckpt backend: {self.name} ran again before the backward of its earlier run; each run holds "
                f"{held:,} B for backward and its plan counts one, so this step holds {self.pending * held:,} B "
                "more than planned. Compile the module that calls it, so that one graph holds every call (Dynamo "
                "compiles an inner module alone where it cannot trace its caller: for RNN modules, set "
                "torch._dynamo.config.allow_rnn = True)"), stacklevel=3)

    def after(self, outputs) -> None:
        if self.done or not torch.is_grad_enabled() or _fake(outputs):
            return
        nodes = [t.grad_fn for t in pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        if not nodes:
            return
        node = next((n for n in nodes if n.name() == COMPILED), nodes[0])  # not a view regenerated outside
        self.pending += 1
        node.register_prehook(_Started(self))


def _fake(tree) -> bool:
    """Whether a run is on fake tensors: a compiler's, not the step's (Dynamo's graph split runs
    each piece on fake tensors while it compiles the next; counted, it was a run "again")."""
    return any(isinstance(t, FakeTensor) for t in pytree.tree_leaves(tree))


class _Started:
    """The prehook marking a run's backward as started; dropped with the run's autograd graph
    (a run whose output is discarded no longer counts as pending)."""

    def __init__(self, watch: RunWatch):
        self.watch, self.fired = watch, False

    def __call__(self, grad_outputs):
        self.fired, self.watch.done = True, True
        self.watch.pending -= 1

    def __del__(self):
        if not self.fired:
            self.watch.pending -= 1
