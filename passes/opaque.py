"""Calls capture keeps whole: custom autograd Functions and the model's own checkpoint regions.

NOTE [ Calls capture keeps whole ]
Both front-ends run the model's Python on proxies and record the ops they reach. Two constructs
do not survive that:
- a custom `torch.autograd.Function`: its forward is recorded as plain ops and its backward is
  lost (a straight-through estimator then gives zero gradients upstream, silently);
- `torch.utils.checkpoint`: the region's ops are recorded as ordinary ones, so the captured graph
  holds what the model, checkpointing itself, never held.
While capture runs, `Function.apply` and torch.utils.checkpoint's two mechanisms (the
non-reentrant generator and the reentrant `CheckpointFunction`; the public `checkpoint` is
usually imported by name, so it cannot be patched) are replaced:
- under symbolic_trace, a Function applied to proxies becomes one call_function node that applies
  the real Function (forward and backward); torch.export offers no such hook, so a Function seen
  while exporting makes capture refuse with a `CaptureError` naming it;
- a checkpoint region runs its function inline, its nodes marked with the region; afterwards the
  marked nodes are outlined into one node calling `torch.utils.checkpoint.checkpoint` on them with
  the model's own options. The plan then starts from what the model really does: at budget 1.0
  nothing is recomputed beyond the model's own regions, and fxckpt may recompute a region's
  output too (rerunning the whole checkpointed call).
"""

from __future__ import annotations

import contextlib
import operator
from itertools import chain

import torch
import torch.fx
import torch.fx.traceback as fx_traceback
import torch.utils.checkpoint as torch_checkpoint
from torch.utils import _pytree as pytree

REGION = "fxckpt_checkpoint_region"  # node.meta key (export: node.meta["custom"][REGION])
_APPLY = torch.autograd.Function.__dict__["apply"]  # the classmethod every Function inherits


class FunctionCall:
    """A graph node's target: applies a custom autograd Function, backward included."""

    def __init__(self, cls: type):
        self.cls = cls
        self.__name__ = f"{cls.__name__}_apply"

    def __call__(self, *args, **kwargs):
        return _APPLY.__func__(self.cls, *args, **kwargs)

    def __repr__(self) -> str:
        return f"{self.cls.__qualname__}.apply"


class CheckpointCall:
    """A graph node's target: one of the model's own checkpoint regions, outlined into `region`
    and run under `torch.utils.checkpoint.checkpoint` with the model's options."""

    __name__ = "checkpoint_region"

    def __init__(self, region: torch.fx.GraphModule, options: dict):
        self.region, self.options = region, options

    def __call__(self, *args):
        return torch_checkpoint.checkpoint(self.region, *args, **self.options)

    def __repr__(self) -> str:
        return f"checkpoint_region({self.options})"


class Recorder:
    """What capture saw: checkpoint regions (their options, by id), the open ones, and the custom
    Functions applied outside symbolic tracing."""

    def __init__(self):
        self.options: dict[int, dict] = {}
        self.open: list[int] = []
        self.functions: list[type] = []

    @contextlib.contextmanager
    def region(self, options: dict):
        if self.open:  # nested: the outer region covers it
            yield
            return
        rid = len(self.options)
        self.options[rid] = options
        self.open.append(rid)
        try:
            with fx_traceback.annotate({REGION: rid}):
                yield
        finally:
            self.open.pop()

    def mark(self, node: torch.fx.Node) -> None:
        if self.open:
            node.meta[REGION] = self.open[-1]


@contextlib.contextmanager
def recording():
    """Patch Function.apply and torch.utils.checkpoint for one capture (see the NOTE)."""
    rec = Recorder()

    def apply(cls, *args, **kwargs):
        proxies = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.fx.Proxy)]
        if proxies:
            return proxies[0].tracer.create_proxy("call_function", FunctionCall(cls), args, kwargs)
        if not cls.__module__.startswith("torch."):
            rec.functions.append(cls)
        return _APPLY.__func__(cls, *args, **kwargs)

    def without_reentrant(fn, preserve_rng_state=True, context_fn=torch_checkpoint.noop_context_fn,
                          determinism_check=torch_checkpoint._DEFAULT_DETERMINISM_MODE, debug=False,
                          early_stop=True, *args, **kwargs):
        with rec.region(dict(use_reentrant=False, preserve_rng_state=preserve_rng_state, context_fn=context_fn,
                             determinism_check=determinism_check, debug=debug, early_stop=early_stop)):
            yield  # checkpoint() runs the function here

    class Reentrant:
        @staticmethod
        def apply(function, preserve_rng_state, *args):
            with rec.region(dict(use_reentrant=True, preserve_rng_state=preserve_rng_state)):
                return function(*args)

    patches = [(torch.autograd.Function, "apply", classmethod(apply)),
               (torch_checkpoint, "_checkpoint_without_reentrant_generator", without_reentrant),
               (torch_checkpoint, "CheckpointFunction", Reentrant)]
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        with fx_traceback.preserve_node_meta():
            yield rec
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def region_of(node: torch.fx.Node) -> int | None:
    if REGION in node.meta:
        return node.meta[REGION]
    custom = node.meta.get("custom")
    return custom.get(REGION) if isinstance(custom, dict) else None


def outline_regions(gm: torch.fx.GraphModule, options: dict[int, dict]) -> None:
    """Replace each marked region's nodes in `gm` by one node calling `CheckpointCall` on them.

    get_attr nodes stay outside; the region reads the parameters and buffers they name itself,
    and receives other constants as inputs.
    """
    regions: dict[int, list[torch.fx.Node]] = {}
    for n in gm.graph.nodes:
        rid = region_of(n)
        if rid is not None and n.op in ("call_function", "call_method", "call_module"):
            regions.setdefault(rid, []).append(n)
    for rid, nodes in regions.items():
        _outline(gm, nodes, options[rid])
    if regions:
        gm.graph.lint()
        gm.recompile()


def _outline(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node], options: dict) -> None:
    inside = set(nodes)
    outside = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in inside))
    # The model's parameters and buffers are read inside, as the model's function did: passed in,
    # reentrant checkpoint would give them gradients of their own instead of accumulating.
    state = {name for name, _ in chain(gm.named_parameters(), gm.named_buffers())}
    inputs = [a for a in outside if not (a.op == "get_attr" and a.target in state)]
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    sub = torch.fx.Graph()
    env = {a: sub.get_attr(a.target) if a.op == "get_attr" and a.target in state else sub.placeholder(a.name)
           for a in outside}
    for n in nodes:
        env[n] = sub.node_copy(n, env.__getitem__)
        env[n].meta = {}  # the region needs no fake values; a copy must not deep-copy them
    sub.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[o] for o in outputs))
    region = torch.fx.GraphModule(gm, sub, class_name="CheckpointRegion")
    with gm.graph.inserting_after(nodes[-1]):
        call = gm.graph.call_function(CheckpointCall(region, options), tuple(inputs))
        if len(outputs) == 1:
            values = [call]
        else:
            values = []
            for i in range(len(outputs)):
                with gm.graph.inserting_after(values[-1] if values else call):
                    values.append(gm.graph.call_function(operator.getitem, (call, i)))
    for out, value in zip(outputs, values):
        out.replace_all_uses_with(value, delete_user_cb=lambda u: u not in inside)
    for n in reversed(nodes):
        gm.graph.erase_node(n)
