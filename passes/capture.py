"""capture: (model, example_input) -> a torch.fx GraphModule that runs the same computation.

`torch.fx.symbolic_trace` for plain modules; torch.export's training IR (non-strict) for real
models it cannot trace. Both give GraphModules whose parameters and buffers are the model's own
objects, so everything after capture is one code path.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import operator
import os
import sys
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.fx._lazy_graph_module import _LazyGraphModule, _make_graph_module
from torch.utils import _pytree as pytree

from fxckpt.core.errors import CaptureError, LossError

from . import opaque

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Captured:
    """A captured graph and how to call it."""

    gm: torch.fx.GraphModule
    frontend: str  # "symbolic_trace" or "export"
    args: tuple
    kwargs: dict


def split_input(example_input: Any) -> tuple[tuple, dict]:
    """A tensor is one positional argument, a tuple or list the positional arguments, a dict
    the keyword arguments.

    Raises:
        TypeError: anything else (None, say): there is no call to trace.
    """
    if isinstance(example_input, dict):
        return (), dict(example_input)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    if isinstance(example_input, torch.Tensor):
        return (example_input,), {}
    raise TypeError(f"example_input is what the model is called with: a tensor, a tuple or list of positional "
                    f"arguments, or a dict of keyword arguments; got {type(example_input).__name__}")


def call_with(model, example_input: Any):
    """Call ``model`` on an example input as `split_input` reads it: ``model(x)``,
    ``model(*args)`` or ``model(**kwargs)``."""
    args, kwargs = split_input(example_input)
    return model(*args, **kwargs)


def training_kwargs(model: torch.nn.Module, kwargs: dict) -> dict:
    """Hugging Face models return a KV cache by default; training needs none, and Hugging Face's
    own gradient checkpointing turns it off the same way."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return kwargs
    if "use_cache" in params and "use_cache" not in kwargs:
        return {**kwargs, "use_cache": False}
    return kwargs


def capture(model: torch.nn.Module, example_input: Any, kwargs: dict | None = None) -> Captured:
    """Trace `model` called on `example_input` (and keyword arguments `kwargs`, for a call that
    mixes both) into a GraphModule sharing the model's state.

    Custom autograd Functions and the model's own checkpoint regions are kept whole (see NOTE
    [ Calls capture keeps whole ] in opaque.py).

    Raises:
        CaptureError: naming what each front-end failed on, and the manual fallback.
    """
    args, named = split_input(example_input)
    kwargs = training_kwargs(model, {**named, **(kwargs or {})})
    with _python_state_put_back(model) as changed:
        captured = _capture(model, args, kwargs)
    if changed:  # NOTE [ Python state forward assigns ]
        warnings.warn(
            f"{type(model).__name__}'s forward assigns {', '.join(changed[:5])}{' and more' if len(changed) > 5 else ''}: "
            "Python state, which a captured graph does not replay: it changed once, while capturing (the tensors "
            "it held then are put back), and training through fxckpt does not update it. Return such a value from "
            "forward instead, or update it outside the model", stacklevel=4)
    return captured


# NOTE [ Python state forward assigns ]
# Both front-ends run forward once, on proxies or fake tensors, and record tensor ops only. A
# forward that stores a value on its module (`self.attn = weights.detach()` for a plot, a call
# counter) did so once, while capturing: the module then held an fx Proxy or a fake tensor for
# good, and the counter stopped, without a word. An attribute capture set to a tensor or a
# proxy is put back (or removed) and named in a warning; a number or string that existed and
# changed is named and left as capture left it (putting back a flag would undo a lazy set-up
# whose effects stay: transformers sets `_output_capturing_hooks_installed` after installing
# hooks); new plain values and other objects are left alone (Hugging Face models rebuild
# their plan dicts while export runs).
_MISSING = object()


@contextlib.contextmanager
def _python_state_put_back(model: torch.nn.Module):
    before = [(name, m, dict(vars(m))) for name, m in model.named_modules()]
    changed: list[str] = []
    try:
        yield changed
    finally:
        for name, m, attrs in before:
            now = vars(m)
            for key in list(now):
                old, new = attrs.get(key, _MISSING), now[key]
                traced = isinstance(new, (torch.Tensor, torch.fx.Proxy)) and new is not old  # made while capturing
                counter = old is not _MISSING and isinstance(new, (bool, int, float, str)) and (
                    type(new) is not type(old) or new != old)
                if traced or counter:
                    changed.append(f"{name}.{key}" if name else key)
                if traced:  # put back; a counter is left as it is
                    if old is _MISSING:
                        del now[key]
                    else:
                        now[key] = old


def _capture(model: torch.nn.Module, args: tuple, kwargs: dict) -> Captured:
    errors = []
    try:
        with opaque.recording() as rec:
            tracer = _Tracer(rec)
            graph = tracer.trace(model)
        gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
        _check_runs_like(gm, args, kwargs)
        return _finish(gm, model, rec, "symbolic_trace", args, kwargs)
    except Exception as e:  # symbolic_trace fails in many ways on real models
        errors.append(f"torch.fx.symbolic_trace: {type(e).__name__}: {_first_line(e)}")
    try:
        with opaque.recording() as rec, _no_stack_traces(), _lazy_modules(), _no_partial_graph_dump():
            ep = torch.export.export(model, args, kwargs, strict=False)
            gm = ep.module()
            gm = _make_graph_module(gm, gm.graph)  # a plain (lazy) GraphModule, not export's stateful class
    except Exception as e:
        errors.append(f"torch.export.export(strict=False): {type(e).__name__}: {_first_line(e)}")
    else:
        if not rec.functions:
            hooked = [name or type(model).__name__ for name, m in model.named_modules() if has_hooks(m, user=True)]
            if hooked:  # NOTE [ A planned block inside the model ]
# A block planned on its own (`model.block = fxckpt.auto_checkpoint(model.block, h)`), in a model
# then planned as a whole: the block's wrapper ran its own planning on the tracer's proxies
# (symbolic_trace) or on export's fake tensors, and capture failed with a CaptureError about a
# module "not installed as a submodule" and an InfeasibleBudgetError of the block's. The whole
# model's plan replaces the block's: both front-ends trace the block's own model (it shares the
# wrapper's submodules and parameters, so their names resolve through the wrapper).

# NOTE [ Modules with hooks ]
                warnings.warn(
                    f"torch.export captured {type(model).__name__} and ran the hooks of {', '.join(hooked[:5])}"
                    f"{' and more' if len(hooked) > 5 else ''} once, while tracing: what they compute on tensors is "
                    "in the graph, but their Python side effects (storing features, logging) will not happen in "
                    "training; make the model traceable by torch.fx.symbolic_trace, which keeps such modules whole",
                    stacklevel=4)
            return _finish(gm, model, rec, "export", args, kwargs)
        names = ", ".join(sorted({f.__qualname__ for f in rec.functions}))
        errors.append(f"torch.export.export(strict=False): the custom autograd Function {names} would lose its "
                      "backward (export records its forward as plain ops)")
    raise CaptureError(
        f"cannot capture {type(model).__name__} as a graph:\n  " + "\n  ".join(errors)
        + "\nFallback: checkpoint parts of the model by hand with fxckpt.checkpoint / "
        "torch.utils.checkpoint, or make the failing construct traceable."
    )


def _in_place_operator(name: str):
    op = getattr(operator, name)

    def call(a, b):
        return op(a, b)

    call.__name__ = call.__qualname__ = name
    return call


# NOTE [ Augmented assignment under symbolic_trace ]
# torch.fx's Proxy has no in-place operators, so Python falls back to the plain ones: `y += x`
# was traced as `y + x`, a new tensor. That differs from eager wherever the write matters: the
# result keeps `y`'s dtype in eager (a bf16 Linear output plus an fp32 embedding under CPU bf16
# autocast: fp32 in the graph, the loss off by 0.0155), and a view `y` writes through to its
# base. Our tracer's proxies record the in-place operator itself. Its target is a function of
# this module rather than `operator.iadd`: fx prints that one as `y += x; out = y`, which would
# rebind `y` for an int (a size) that later nodes still read.
IN_PLACE_OPERATORS = {name: _in_place_operator(name) for name in (
    "iadd", "iand", "ifloordiv", "ilshift", "imod", "imul", "imatmul", "ior", "ipow", "irshift", "isub",
    "itruediv", "ixor")}
globals().update(IN_PLACE_OPERATORS)  # where fx's code and pickling find them by name


class _Proxy(torch.fx.Proxy):
    pass


for _name, _call in IN_PLACE_OPERATORS.items():
    setattr(_Proxy, f"__{_name}__",
            lambda self, other, _call=_call: self.tracer.create_proxy("call_function", _call, (self, other), {}))


class _Tracer(torch.fx.Tracer):
    """symbolic_trace's tracer, marking the nodes of the model's own checkpoint regions, with
    proxies that trace augmented assignment in place (NOTE [ Augmented assignment under
    symbolic_trace ])."""

    def __init__(self, rec: opaque.Recorder):
        super().__init__()
        self.rec = rec

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _Proxy(node, self)

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        self.rec.mark(node)
        return node

    def call_module(self, m: torch.nn.Module, forward, args, kwargs):
        if getattr(type(m), "traced_as_its_model", False):  # NOTE [ A planned block inside the model ]
            forward = m._model.forward
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        # torch.fx keeps every torch.nn module whole. A composite one (nn.TransformerEncoder,
        # nn.MultiheadAttention) would be one opaque node with nothing inside to recompute; trace
        # into it, and where its forward does not trace (fast-path checks), export takes over.
        # A module with hooks stays whole (NOTE [ Modules with hooks ]).
        return has_hooks(m) or (super().is_leaf_module(m, qualname) and next(m.children(), None) is None)


# NOTE [ Modules with hooks ]
# symbolic_trace calls a module it traces into through `forward`, not `__call__`, so the hooks
# registered on it (forward, pre-forward, backward) were dropped from the graph without a word: a
# feature-extraction hook never fired, a hook rewriting the output was lost. A module with hooks
# is kept whole instead: one call_module node that calls the module, hooks and all, at every
# forward. annotate keeps its value (it is never recomputed: a replay would run the hooks twice
# per step, and a recomputed BatchNorm bypasses its module). torch.export runs hooks once, while
# it traces: what they compute on tensors is in its graph, their Python side effects are not,
# so capture warns there. Global hooks (`nn.modules.module.register_module_forward_hook`) are
# left to what each front-end does: they are tools' (FlopCounterMode's module tracker, profilers),
# active while fxckpt itself plans again inside one.
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def has_hooks(m: torch.nn.Module, user: bool = False) -> bool:
    """Whether `m` has hooks; with `user`, hooks other than torch's and transformers' own (its
    output-capturing hooks collect what export traces into the graph anyway)."""
    hooks = (h for name in _HOOKS for h in (getattr(m, name, None) or {}).values())
    return any(not user or not getattr(h, "__module__", "").startswith(("torch.", "transformers.")) for h in hooks)


def _finish(gm, model, rec: opaque.Recorder, frontend: str, args, kwargs) -> Captured:
    opaque.outline_regions(gm, rec.options)
    gm = adopt_state(gm, model)
    for n in gm.graph.nodes:
        if n.op == "call_function" and isinstance(n.target, opaque.CheckpointCall):
            adopt_state(n.target.region, model)
    return Captured(gm, frontend, args, kwargs)


def step_loss(output) -> torch.Tensor:
    """The scalar to call ``backward()`` on for a model's ``output``.

    A scalar tensor is used as is; else a non-None ``.loss`` attribute or ``"loss"`` key (Hugging
    Face ``ModelOutput`` has both); else the sum of ``t.float().sum()`` over every floating tensor
    in the output that requires grad.
    """
    if isinstance(output, torch.Tensor) and output.dim() == 0:
        return output
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is not None:
        return loss
    leaves = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    terms = [t.float().sum() for t in leaves if t.is_floating_point() and t.requires_grad]
    if not terms:
        shown = ", ".join(f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}{'' if t.requires_grad else ' (no grad)'}"
                          for t in leaves[:4]) or "no tensor"
        raise LossError(f"nothing to backpropagate: the model's output ({shown}{' ...' if len(leaves) > 4 else ''}) has no "
                        "`loss` and no floating tensor that requires grad; pass loss_fn= (a function of the output "
                        "returning a scalar to call backward on), or check that the parameters require grad")
    return functools.reduce(operator.add, terms)



@contextlib.contextmanager
def _no_stack_traces():
    """torch.export without the Python stack trace it records per node.

    NOTE [ Export without stack traces ]
    torch.export's tracer extracts, symbolizes and formats the Python stack at every node it
    creates (`node.meta["stack_trace"]`): on GPT-2 small that was about a fifth of capture's
    time. Nothing in fxckpt reads it, and the graph is the same without it (node names, targets,
    `nn_module_stack`).
    """
    before = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = before


@contextlib.contextmanager
def _no_partial_graph_dump():
    """torch.export without the partial graph it prints to stderr before raising.

    NOTE [ Export's partial graph on stderr ]
    On a data-dependent guard (a branch on a value, `int(t.item())`) torch.export prints the
    graph it traced so far to stderr, once per wrapper it raises through (twice here), before
    the CaptureError that names the model's line: 14 lines of generated code per failed capture
    of a 1-Linear model. What export writes to stderr meanwhile is held and written afterwards,
    less that graph.
    """
    held, real = io.StringIO(), sys.stderr
    sys.stderr = held
    try:
        yield
    except Exception as e:
        dump = getattr(e, "partial_fx_graph", None)
        if dump is not None:
            held = io.StringIO(held.getvalue().replace(f"{dump}\n", ""))
        raise
    finally:
        sys.stderr = real
        if held.getvalue():
            real.write(held.getvalue())


def _lazy_modules():
    """GraphModules built inside generate their Python code at their first call (or `.code`).

    NOTE [ Export's GraphModules generate code lazily ]
    torch.export builds a GraphModule after most of its passes (make_fx, placeholder naming,
    runtime asserts, unlifting) and generates and compiles Python code for each, though none of
    them is called: on tiny GPT-2, 11 code generations per capture. Under torch's own
    `_LazyGraphModule` (what Dynamo and inductor build theirs with) those built through
    `_make_graph_module` generate theirs on first use instead (6 remain: export builds those
    GraphModules directly). The graph capture returns is the same node for node; annotate and
    rewrite copy it into GraphModules of their own, so its code is generated only if it is called.
    """
    from torch.fx._lazy_graph_module import _use_lazy_graph_module

    return _use_lazy_graph_module(True)


def _first_line(e: Exception) -> str:
    """The first line of `e`'s message that is prose, not the graph code torch.export prints
    before some of its errors (a data-dependent guard: Wav2Vec2ForCTC's printed a whole forward),
    and the model's line that raised it, where export names one."""
    lines = [x for x in str(e).splitlines() if x.strip()]
    prose = [x for x in lines if not x[0].isspace() and not x.startswith(("def ", "class ", "#"))]
    first = (prose or lines or [""])[0].strip()[:300]
    marker = "The following call raised this error:"
    if marker in lines:
        at = [x.strip() for x in lines[lines.index(marker) + 1:lines.index(marker) + 3]]
        first += f" (at {at[0].removeprefix('File ')}: {at[1]})" if len(at) == 2 else ""
    elif (frame := _model_frame(e)) is not None:
        first += f' (at "{frame.filename}", line {frame.lineno}, in {frame.name}: {frame.line})'
    return first


_NOT_THE_MODEL = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, contextlib, opaque))


def _model_frame(e: Exception):
    """The innermost frame of `e`'s traceback in the model's code (not torch's, fxckpt's or the
    standard library's): where a construct neither front-end follows sits, when export's message
    does not say (`int(t.item())`: 'Could not extract specialized integer from data-dependent
    expression', no line)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(_NOT_THE_MODEL)]
    return frames[-1] if frames and frames[-1].line else None


def _check_runs_like(gm: torch.fx.GraphModule, args, kwargs) -> None:
    """symbolic_trace ignores the example input; make sure the graph accepts that call."""
    sig = inspect.signature(gm.forward)
    sig.bind(*args, **kwargs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if any(n.target.startswith("*") for n in placeholders):
        raise TypeError("variadic *args/**kwargs forward")


def adopt_state(gm: torch.fx.GraphModule, model: torch.nn.Module) -> torch.fx.GraphModule:
    """Make `gm` resolve every submodule, parameter and buffer through the model's own objects.

    The model's `_modules`, `_parameters` and `_buffers` dictionaries are shared, not copied: an
    optimizer built on `model.parameters()` keeps working, `state_dict()` has the same keys, and
    `.to(device)` on either moves both. Attributes the graph needs that the model lacks (constants
    lifted by torch.export) are kept as plain attributes.
    """
    values = {n.target: _getattr_path(gm, n.target) for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    # NOTE [ Constants lifted into submodules ]
    # torch.export lifts a tensor a submodule's forward creates (Falcon's attention) to an
    # attribute of that submodule in its own module tree (`transformer.h.0.self_attention.
    # lifted_tensor_0`), which the model's submodule lacks. Such a constant becomes a plain
    # attribute of the graph module under a flat name; the model is left untouched.
    renamed = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr" and "." in n.target and not _resolves(model, n.target):
            if n.target not in renamed:
                flat = n.target.replace(".", "_")
                while _resolves(model, flat) or flat in values or flat in renamed.values():
                    flat = "_" + flat
                renamed[n.target] = flat
                values[flat] = values.pop(n.target)
            n.target = renamed[n.target]
    if renamed:
        gm.recompile()
    gm._modules = model._modules
    gm._parameters = model._parameters
    gm._buffers = model._buffers
    gm._non_persistent_buffers_set = model._non_persistent_buffers_set
    for target, value in values.items():
        if not _resolves(gm, target):
            if "." in target:  # a submodule the graph calls (call_module) that the model lacks
                raise CaptureError(f"graph module {target!r} lives in a submodule the model does not have")
            object.__setattr__(gm, target, value)
    gm.training = model.training
    return gm


def copy_graph(graph: torch.fx.Graph) -> tuple[torch.fx.Graph, dict[torch.fx.Node, torch.fx.Node]]:
    """A copy of `graph` (same node names, meta and calling convention) and the old -> new node map.
    Passes change the copy, never their input: each returns a new artifact."""
    new = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    new.output(new.graph_copy(graph, env))
    new._codegen = graph._codegen
    return new, env


def derive(gm: torch.fx.GraphModule, graph: torch.fx.Graph, *, lazy: bool = False, **attrs) -> torch.fx.GraphModule:
    """A GraphModule running `graph` on `gm`'s state (shared, see `adopt_state`), with `attrs`
    (objects the graph reaches by get_attr) set on it. The graph is linted first. `lazy`: its
    Python code is generated at its first call (or `.code`), not here (NOTE [ The annotated
    graph's code ])."""
    graph.lint()
    for name, value in attrs.items():  # so the GraphModule constructor finds them
        object.__setattr__(gm, name, value)
    try:
        new_gm = _LazyGraphModule(gm, graph) if lazy else torch.fx.GraphModule(gm, graph)
    finally:
        for name in attrs:
            object.__delattr__(gm, name)
    adopt_state(new_gm, gm)
    new_gm.meta.update(gm.meta)
    for name, value in attrs.items():
        object.__setattr__(new_gm, name, value)
    return new_gm


def _getattr_path(obj, target: str):
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _resolves(model, target: str) -> bool:
    try:
        _getattr_path(model, target)
        return True
    except AttributeError:
        return False


def flat_inputs(gm: torch.fx.GraphModule, args: tuple, kwargs: dict) -> list:
    """The values of the graph's placeholders for a call `gm(*args, **kwargs)`."""
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is None:
        _LazyGraphModule.force_recompile(gm)  # a lazy module's forward takes (*args, **kwargs) until then
        sig = inspect.signature(gm.forward)
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return list(bound.arguments.values())
    import torch.fx._pytree as fx_pytree
    if info.in_spec.num_children == 2 and kwargs is not None:
        return fx_pytree.tree_flatten_spec((list(args), kwargs), info.in_spec)
    return pytree.tree_leaves(args)
