"""Manual activation checkpointing: `checkpoint`, `CheckpointedSequential`, `SelectiveCheckpoint`.

The tools from checkpointing tutorials, built on non-reentrant `torch.utils.checkpoint` with two
guarantees it does not give on its own: dropout replays the same random numbers in the
recomputation on the CPU and on every CUDA device among the inputs (keyword arguments included),
and normalization layers update their running statistics once per step, not twice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils import _pytree as pytree

from .core.blocks import even_segments
from .wrap import ModelWrapper

__all__ = ["CheckpointedSequential", "SelectiveCheckpoint", "block_stack", "checkpoint", "find_blocks"]

logger = logging.getLogger(__name__)

# NOTE [ BatchNorm in recomputation ]
#
# Non-reentrant checkpointing runs the function a second time during backward to rebuild the
# tensors it did not keep. A BatchNorm (or InstanceNorm with track_running_stats=True) in
# training mode updates running_mean, running_var and num_batches_tracked in place on every
# call, so eager torch.utils.checkpoint updates them twice per step: num_batches_tracked
# counts 2 and the running averages take a second momentum step.
#
# The recomputation runs under `_KeepNormStats`, the recompute half of our `context_fn`. While
# it is active, a global module forward pre-hook snapshots the buffers of every `_NormBase`
# module (BatchNorm*, SyncBatchNorm, LazyBatchNorm*, InstanceNorm*) the first time it is
# called, and leaving the context copies the snapshots back. This is exact and general:
#   * exact: in training mode a normalization layer's output depends on the batch statistics
#     only, so the recomputed tensors are the forward's; its backward does not read the running
#     buffers; and restoring undoes whatever the forward did to them (momentum=None's
#     cumulative average, subclasses' own buffers), with no assumption about its code.
#   * general: the hook finds modules however `fn` reaches them (an nn.Module, a bound method,
#     a closure, a global), with no list to pass.
#   * safe under early stop: torch ends the recomputation by raising as soon as the last
#     needed tensor is rebuilt, possibly inside a norm layer after its update; the restore is
#     in the context's exit, which runs either way.
#   * thread-local: the hook ignores calls from other threads, so a forward running elsewhere
#     keeps its updates.
# The cost is one copy of each norm layer's buffers (a few vectors) per recomputation.
# When `fn` is a module's bound `forward` (as `SelectiveCheckpoint` passes it), that module is
# called without `__call__`, so it is saved on entry instead.
# Limits: only calls through `Module.__call__` are seen, so `F.batch_norm` on tensors the
# caller owns, or `bn.forward(x)` called directly inside `fn`, still update twice; modules that
# change their own state in forward (e.g. `torch.nn.utils.spectral_norm`'s power iteration)
# are not covered either.


class _KeepNormStats:
    """Context: undo, on exit, the changes made to normalization buffers while it was active.

    ``owner`` is a module whose ``forward`` is called directly (not through ``__call__``, so no
    hook sees it): its buffers are saved on entry.
    """

    def __init__(self, owner: nn.Module | None = None):
        self._owner = owner
        self._thread = None
        self._saved: dict[int, tuple[nn.Module, list[tuple[str, torch.Tensor]]]] = {}

    def _snapshot(self, module: nn.Module, args) -> None:
        if isinstance(module, _NormBase) and threading.get_ident() == self._thread and id(module) not in self._saved:
            with torch.no_grad():
                self._saved[id(module)] = (module, [(n, b.clone()) for n, b in module.named_buffers(recurse=False)])

    def __enter__(self):
        # The same object is entered again for each recomputation (e.g. backward twice with
        # retain_graph=True), so all state is reset here.
        self._thread, self._saved = threading.get_ident(), {}
        self._handle = nn.modules.module.register_module_forward_pre_hook(self._snapshot)
        if self._owner is not None:
            self._snapshot(self._owner, ())
        return self

    def __exit__(self, *exc) -> bool:
        self._handle.remove()
        with torch.no_grad():
            for module, buffers in self._saved.values():
                for name, value in buffers:
                    getattr(module, name).copy_(value)
        if self._saved:
            logger.debug("recomputation: restored the running statistics of %d norm layer(s)", len(self._saved))
        self._saved = {}
        return False


def _contexts(owner: nn.Module | None = None):
    return contextlib.nullcontext(), _KeepNormStats(owner)


def checkpoint(fn: Callable, /, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` without keeping its intermediate activations for backward.

    Like ``torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)``: only
    the inputs are kept, and backward runs ``fn`` again to rebuild what it needs. Inputs may be
    nested in tuples, lists and dicts, any of them may not require grad, and the output
    (any structure) is returned as ``fn`` returns it. With grad disabled it is a plain call.

    On top of torch's version:

    * RNG-correct: the recomputation replays the random numbers of the forward (dropout
      matches) on the CPU and on the CUDA devices of all input tensors; torch only looks at
      the positional ones, so here every tensor among ``args`` and ``kwargs`` is passed to it
      positionally.
    * BatchNorm-correct: running statistics are updated once, in the forward, and left alone
      by the recomputation; see NOTE [ BatchNorm in recomputation ] in this module for how and
      for the limits.

    Every keyword argument goes to ``fn``; this function takes none of its own (``fn`` is
    positional-only, so ``fn`` may itself take a keyword named ``fn``).

    Args:
        fn: the function or module to run.
        *args: positional arguments of ``fn``.
        **kwargs: keyword arguments of ``fn``.

    Returns:
        What ``fn(*args, **kwargs)`` returns.

    Example:
        >>> block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.1))
        >>> y = checkpoint(block, torch.randn(4, 8, requires_grad=True))
        >>> y.sum().backward()
        >>> int(block[1].num_batches_tracked)  # torch.utils.checkpoint gives 2
        1
    """
    if not torch.is_grad_enabled():
        return fn(*args, **kwargs)
    tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    owner = getattr(fn, "__self__", None)  # `bn.forward` recomputes without passing any hook
    contexts = functools.partial(_contexts, owner if isinstance(owner, nn.Module) else None)
    # The positional tensors only tell torch which devices' RNG states to stash (and autocast's
    # device type), and get their version checked before recomputing; `fn` gets the originals.
    return torch.utils.checkpoint.checkpoint(
        lambda *_: fn(*args, **kwargs), *tensors, use_reentrant=False, preserve_rng_state=True, context_fn=contexts
    )


def _run_layers(layers, x):
    for layer in layers:
        x = layer(x)
    return x


class CheckpointedSequential(nn.Sequential):
    """An ``nn.Sequential`` that checkpoints all but the last of ``checkpoint_segments`` segments.

    The layers are split into contiguous segments as evenly as possible (sizes differ by at
    most one, the earlier segments taking the extra layers). In training mode with grad enabled
    every segment but the last runs under `checkpoint`, so a step keeps only the segments'
    inputs plus the last segment's activations; in ``eval()`` or under ``torch.no_grad()`` it is
    a plain ``nn.Sequential``. With ``checkpoint_segments=1`` nothing is checkpointed.

    Parameters, buffers and ``state_dict`` keys are those of ``nn.Sequential(*layers)``
    (``"0.weight"``, ...). Slicing returns a plain ``nn.Sequential`` of the selected layers.

    Args:
        *layers: modules, or one ``OrderedDict`` of named modules, as for ``nn.Sequential``.
        checkpoint_segments: the number of segments, an int from 1 to ``len(layers)``.

    Raises:
        ValueError: ``checkpoint_segments`` is not such an int.

    Example:
        >>> layers = [torch.nn.Linear(16, 16) if i % 2 == 0 else torch.nn.ReLU() for i in range(8)]
        >>> model = CheckpointedSequential(*layers, checkpoint_segments=2)
        >>> model.segments()
        [(0, 4), (4, 8)]
        >>> model(torch.randn(4, 16)).sum().backward()
    """

    def __init__(self, *layers, checkpoint_segments: int):
        super().__init__(*layers)
        self.checkpoint_segments = checkpoint_segments
        self.segments()  # validates

    def segments(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` layer index ranges of the segments, in order: half-open, sizes
        differing by at most one (`fxckpt.core.blocks.even_segments`)."""
        k, n = self.checkpoint_segments, len(self)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(
                f"checkpoint_segments must be an int from 1 to the number of layers ({n}), got {k!r}"
                if n else "CheckpointedSequential needs at least one layer"
            )
        return even_segments(n, k)

    def forward(self, input):
        if not (self.training and torch.is_grad_enabled()) or self.checkpoint_segments == 1:
            return super().forward(input)
        layers = list(self)
        *head, (start, stop) = self.segments()
        for a, b in head:
            input = checkpoint(_run_layers, layers[a:b], input)
        return _run_layers(layers[start:stop], input)

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # nn.Sequential would build type(self) without checkpoint_segments
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def extra_repr(self) -> str:
        return f"checkpoint_segments={self.checkpoint_segments}"


_STACKS = (nn.Sequential, nn.ModuleList)


def _stacks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Sequential`` / ``nn.ModuleList`` in ``model`` (itself included, named ``""``) with
    its dotted name, in registration order: the one walk that both block finders read."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _STACKS)]


def block_stack(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The ``(dotted name, container)`` that integer ``checkpoint_layers`` index (see
    `SelectiveCheckpoint`): ``model`` itself (name ``""``) or its largest ``nn.Sequential`` /
    ``nn.ModuleList``; among equally long ones the shallowest, then the first registered; None if
    it has none.

    Example:
        >>> block_stack(torch.nn.Sequential(torch.nn.Linear(2, 2)))[0]
        ''
    """
    if isinstance(model, _STACKS):
        return "", model
    stacks = _stacks(model)
    return min(stacks, key=lambda s: (-len(s[1]), s[0].count("."))) if stacks else None  # min: first of equals


def find_blocks(model: nn.Module, min_blocks: int = 6) -> list[str]:
    """The dotted names of the model's repeated blocks, in registration order (the blocks the
    benchmark's layer-level baselines checkpoint).

    Candidates are the modules with parameters held directly in an ``nn.ModuleList`` or
    ``nn.Sequential``, grouped by class. The block class is, among the classes with at least
    ``min_blocks`` such members, the outermost one (no member inside a member of another such
    class), the one with most members if several are; with no such class, the class with most
    members. GPT-2: ``transformer.h.*``; Llama: ``model.layers.*``; ResNet-50: the 16 bottleneck
    layers (not the 4 stages, nor the 48 conv layers inside the bottlenecks); UNet2D: the
    ``ResnetBlock2D`` modules. Unlike `block_stack`'s one container, the blocks may sit in
    several (ResNet-50's 4 stages hold its 16 bottlenecks).

    Example:
        >>> find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)))
        ['0', '2']
    """
    members: dict[type, list[str]] = {}
    for name, stack in _stacks(model):
        for child_name, child in stack.named_children():
            if isinstance(child, _STACKS) or next(child.parameters(), None) is None:
                continue
            members.setdefault(type(child), []).append(f"{name}.{child_name}" if name else child_name)
    if not members:
        return []
    many = {cls: names for cls, names in members.items() if len(names) >= min_blocks}

    def inside_other(cls):
        others = [n for other, names in many.items() if other is not cls for n in names]
        return any(name.startswith(o + ".") for name in many[cls] for o in others)

    outer = [cls for cls in many if not inside_other(cls)]
    pool = outer or list(members)
    return members[max(pool, key=lambda cls: len(members[cls]))]  # max keeps the first of equals


def _resolve(model: nn.Module, layer) -> str:
    """The dotted name of one ``checkpoint_layers`` entry, or a ValueError naming the valid ones."""
    if isinstance(layer, int) and not isinstance(layer, bool):
        found = block_stack(model)
        if found is None:
            raise ValueError(f"checkpoint_layers: {type(model).__name__} has no nn.Sequential or nn.ModuleList "
                             f"of layers to index into; name the layers instead (e.g. 'blocks.0')")
        path, stack = found
        names = list(stack._modules)
        if not -len(names) <= layer < len(names):
            where = f"'{path}'" if path else "the model"
            raise ValueError(f"checkpoint_layers: index {layer} is out of range for {where} "
                             f"({type(stack).__name__} of {len(names)} layers): valid indices are "
                             f"0..{len(names) - 1} (or -{len(names)}..-1)" if names else
                             f"checkpoint_layers: index {layer} is out of range: {where} has no layers")
        return (path + "." if path else "") + names[layer]
    if not isinstance(layer, str):
        raise TypeError(f"checkpoint_layers entries are ints or dotted submodule names, got {layer!r}")
    module, done = model, []
    for part in layer.split("."):
        child = module._modules.get(part)
        if child is None:
            where = f"'{'.'.join(done)}'" if done else f"the model ({type(model).__name__})"
            raise ValueError(f"checkpoint_layers: no submodule {layer!r}: {where} has no child {part!r}; "
                             f"its children are {[k for k, v in module._modules.items() if v is not None]}")
        module = child
        done.append(part)
    return layer


@contextlib.contextmanager
def _forward_checkpointed(module: nn.Module):
    """Make calls of ``module`` run its current forward under `checkpoint`, while active."""
    had, previous = "forward" in vars(module), vars(module).get("forward")
    module.forward = functools.partial(checkpoint, module.forward)
    try:
        yield
    finally:
        if had:
            module.forward = previous
        else:
            del module.forward


class SelectiveCheckpoint(ModelWrapper):
    """Run ``model`` with the chosen layers under `checkpoint` (training mode, grad enabled).

    ``checkpoint_layers`` entries are ints or dotted submodule names (``"encoder.layers.3"``).
    An int indexes the model's *block stack*: ``model`` itself if it is an ``nn.Sequential``
    or ``nn.ModuleList``; otherwise its ``nn.Sequential`` or ``nn.ModuleList`` submodule with
    the most children, found breadth-first (on a tie the shallowest, then the first registered,
    wins). For a transformer with ``self.blocks = nn.ModuleList(...)`` an index is a block; for
    Hugging Face GPT-2 it is an entry of ``transformer.h``. Negative ints count from the end.
    `checkpoint_layers` (the attribute) holds the resolved names.

    The wrapper is a view of ``model``: it shares its submodules, parameters and buffers (the
    same objects and registries), so ``state_dict()``, ``load_state_dict()`` and
    ``named_parameters()`` use the model's own keys, and ``.to()``, ``train()``, ``eval()``
    act on the model too. State-dict customizations of the model's own class (its
    ``_save_to_state_dict``, ``_load_from_state_dict``, ``_version``) are used; state-dict
    hooks registered on the model object itself are not (those of its submodules are).

    The model is not modified: only during the wrapper's own forward does each chosen layer's
    ``forward`` run under `checkpoint` (through an instance attribute, removed afterwards), so
    the layer's hooks run once, outside the recomputation. Outside training with grad enabled
    the wrapper calls ``model`` as is.

    Args:
        model: the module to wrap.
        checkpoint_layers: ints and/or dotted names (one int or name is accepted too).

    Raises:
        ValueError: an index out of range or an unknown name; the message lists the valid ones.
        ValueError: a chosen layer contains another (nested checkpointing is not supported).
        TypeError: an entry that is neither an int nor a str.

    Example:
        >>> model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(4)])
        >>> wrapped = SelectiveCheckpoint(model, checkpoint_layers=[1, "2"])
        >>> wrapped.checkpoint_layers
        ('1', '2')
        >>> list(wrapped.state_dict()) == list(model.state_dict())
        True
        >>> wrapped(torch.randn(2, 8)).sum().backward()
    """

    def __init__(self, model: nn.Module, checkpoint_layers: Iterable[int | str] | int | str):
        super().__init__(model)
        if isinstance(checkpoint_layers, (int, str)):
            checkpoint_layers = [checkpoint_layers]
        names, ids = [], set()
        for entry in checkpoint_layers:
            name = _resolve(model, entry)
            module = model.get_submodule(name)
            if id(module) not in ids:  # the same layer named twice, or shared under two names
                ids.add(id(module))
                names.append(name)
        for name in names:  # the recomputation runs the original forwards: no patched layer inside
            inner = [other for other in names if other != name and any(
                m is model.get_submodule(other) for m in model.get_submodule(name).modules())]
            if inner:
                raise ValueError(f"checkpoint_layers: {inner} are inside {name!r}, which is checkpointed "
                                 f"as a whole; choose one or the other")
        self.checkpoint_layers: tuple[str, ...] = tuple(names)
        logger.debug("SelectiveCheckpoint(%s): checkpointing %s", type(model).__name__, names)

    @property
    def module(self) -> nn.Module:
        """The wrapped model."""
        return self._model

    def forward(self, *args, **kwargs):
        model = self._model
        if not (model.training and torch.is_grad_enabled()):
            return model(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for name in self.checkpoint_layers:
                stack.enter_context(_forward_checkpointed(model.get_submodule(name)))
            return model(*args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._model._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args, **kwargs):
        self._model._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"checkpoint_layers={list(self.checkpoint_layers)}"
