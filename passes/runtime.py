"""runtime: what a rewritten graph runs in forward and backward to recompute its plan.

Recipes record how to rebuild a node; saved-tensor hooks swap saved tensors for recipes and
materialize them once in backward (see NOTE [ Per-tensor rematerialization through saved-tensor
hooks ] in rewrite.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx
from torch.fx.node import map_aggregate
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree

from .ops import storage_key, tensors_of

log = logging.getLogger(__name__)
_EMPTY = object()


def _known_storages(leaves: list, state) -> set[int]:
    """Storages a node did not create: its inputs' (call leaves) and its module's parameters
    and buffers."""
    return {storage_key(t) for t in (*leaves, *state) if isinstance(t, torch.Tensor)}


def _tensors(value) -> list[torch.Tensor]:
    """A node's output tensors, in pytree leaf order (a lone tensor without pytree)."""
    if isinstance(value, torch.Tensor):
        return [value]
    return tensors_of(value)


@dataclass(frozen=True)
class RecipeSpec:
    name: str  # the fx node it rebuilds
    fn: Callable
    template: tuple  # (args, kwargs) with the node's inputs as fx Nodes
    inputs: tuple[str, ...]  # names of those inputs, in the order begin() receives their values
    remat: frozenset[str]  # inputs that are recipes too
    after: tuple[str, ...]  # in-place writers of those inputs that ran before this node: replayed first
    writer: bool  # allocates or writes its storage: it rebuilds the final contents
    random: bool  # replays the RNG state it started from
    internals: bool  # its backward saves tensors of its own: rerun with autograd to rebuild them
    module: torch.nn.Module | None = None  # a called module, whose parameters and buffers it uses
    in_place: bool = False  # writes an input in place (e.g. a router's `weights.div_(sum)`)

    # NOTE [ Flat templates ]
    # begin() runs for every recipe in every forward and materialize() for every replay: walking
    # (args, kwargs) with pytree there cost more than small ops themselves (profiled: ~2/3 of a
    # replayed node's time). So the template is flattened once, here, into its leaves and the
    # leaf positions of inputs and recipe inputs; a step fills a list and, for the usual call
    # shape (no nested containers), builds (args, kwargs) by slicing.
    def __post_init__(self) -> None:
        leaves: list = []
        map_aggregate(self.template, leaves.append)  # fx's traversal: it enters slices, pytree does not
        pos = {name: j for j, name in enumerate(self.inputs)}
        slots = tuple((i, pos[x.name]) for i, x in enumerate(leaves) if isinstance(x, torch.fx.Node))
        args, kwargs = self.template
        flat_call = not any(isinstance(a, (list, tuple, dict, slice)) for a in (*args, *kwargs.values()))
        object.__setattr__(self, "leaves", tuple(leaves))
        object.__setattr__(self, "slots", slots)
        object.__setattr__(self, "remat_slots", tuple((i, leaves[i].name) for i, _ in slots
                                                      if leaves[i].name in self.remat))
        object.__setattr__(self, "call_shape", (len(args), tuple(kwargs)) if flat_call else None)

    def fill(self, inputs: list) -> list:
        """The template's leaves with the node's input values in place."""
        flat = list(self.leaves)
        for i, j in self.slots:
            flat[i] = inputs[j]
        return flat

    def build(self, flat: list) -> tuple[tuple, dict]:
        """(args, kwargs) of a call from filled leaves."""
        if self.call_shape is None:
            it = iter(flat)
            return map_aggregate(self.template, lambda _: next(it))
        n, keys = self.call_shape
        return tuple(flat[:n]), dict(zip(keys, flat[n:]))

    def state(self) -> list:
        m = self.module
        return [] if m is None else [*m.parameters(), *m.buffers()]


class Recipe:
    """How to rebuild one node: its function, its inputs (tensors or recipes), the RNG state a
    random op started from, and, for nodes whose backward saves internals (attention weights,
    dropout masks), the requires_grad of its inputs so that a rerun saves the same tensors."""

    __slots__ = ("spec", "flat", "after", "rng", "grad_flags", "amp", "rerun", "value", "saved", "replays")

    def __init__(self, spec: RecipeSpec, flat: list, rng=None, grad_flags=None, amp=(), replays=None, after=()):
        self.spec, self.flat, self.rng, self.grad_flags = spec, flat, rng, grad_flags  # flat: template leaves
        self.replays = replays  # the runtime's count of recomputations this step
        self.after = after  # recipes of in-place writes the inputs had seen in forward
        self.amp = amp  # autocast state of the forward: backward runs outside it
        self.rerun = spec.internals  # rebuild saved internals with autograd
        self.value, self.saved = _EMPTY, None

    def materialize(self):
        if self.value is _EMPTY:
            for writer in self.after:  # writes into the inputs' recomputed storage, in forward's order
                writer.materialize()
            flat = [x.materialize() if type(x) is Recipe else x for x in self.flat]
            if self.rerun:
                self.value, self.saved = self._rerun_with_autograd(flat)
            elif self.rng is None and not self.amp:  # the common case, without generator contexts
                args, kwargs = self.spec.build(flat)
                with torch.no_grad():
                    self.value = self.spec.fn(*args, **kwargs)
            else:
                args, kwargs = self.spec.build(flat)
                with torch.no_grad(), _replaying(self), _autocast(self.amp):
                    self.value = self.spec.fn(*args, **kwargs)
            self.flat = self.after = self.rng = self.grad_flags = None  # let the inputs go
            if self.spec.writer and self.replays is not None:
                self.replays[self.spec.name] += 1
        return self.value

    def _rerun_with_autograd(self, flat: list):
        flags = iter(self.grad_flags)
        leaves = [_rerun_input(x, next(flags), self.spec.in_place) if isinstance(x, torch.Tensor) else x for x in flat]
        args, kwargs = self.spec.build(leaves)
        known = _known_storages(leaves, self.spec.state())
        saved = []

        def pack(t):
            if storage_key(t) not in known:
                saved.append(t)
            # This graph never runs backward. Holding nothing avoids the cycle an output saved
            # by its own grad_fn would make (it would outlive the recipe until a gc pass).

        with (torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _never), _replaying(self),
              _autocast(self.amp)):
            value = self.spec.fn(*args, **kwargs)
        outputs = _known_storages(_tensors(value), ())
        internals = [t.detach() for t in saved if storage_key(t) not in outputs]
        # The graph's saved variables hold `pack`, which holds `saved`, whose tensors hold the
        # graph: clear it, or the cycle keeps the inputs alive until a gc pass. Detached for the
        # same reason: a grad_fn chain would keep the rerun's inputs alive.
        saved.clear()
        return pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, value), internals


def _rerun_input(x: torch.Tensor, requires_grad: bool, in_place: bool) -> torch.Tensor:
    """An input of a rerun with autograd, cut from the step's graph. Autograd refuses in-place
    writes to a leaf that requires grad, so an in-place op gets a copy (not a leaf) to write to."""
    x = x.detach().requires_grad_(requires_grad)
    if not (in_place and requires_grad):
        return x
    with torch.enable_grad():  # backward runs without grad mode
        return x.clone()


def autocast_state() -> tuple:
    """Autocast settings in force, per device type, to recompute under the same ones."""
    return tuple((d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d))


@contextlib.contextmanager
def _autocast(amp: tuple):
    with contextlib.ExitStack() as stack:
        for device, dtype in amp:
            stack.enter_context(torch.autocast(device, dtype=dtype, cache_enabled=False))
        yield


@contextlib.contextmanager
def uncached_casts():
    """Autocast without its cache of parameter casts, for a step that fxckpt plans or runs.

    NOTE [ Autocast's cast cache ]
    Inside `torch.autocast`, the low-precision copy of a parameter is cached until the
    outermost autocast region exits: a node recomputed in backward has its copy freed in
    forward only on paper, since the cache holds it through the rest of the forward (a tiny
    GPT-2 held 0.19 MiB more than planned, and a budget at the floor the error named failed).
    Without the cache, each copy lives exactly as long as its node's saved tensors, as the
    annotation measures and the simulator models; the cost is one more cast per reuse.
    """
    previous = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(previous)


def _never(_):
    raise RuntimeError("fxckpt: backward through a recomputation graph")


# NOTE [ RNG states the runtime holds ]
# A recipe of a random node keeps the generator states it drew from (`rng_state`), from the
# node's forward until its replay, and a replay copies the current states to restore them after
# (`_replaying`): real memory, charged by the plan (`NodeCost.recipe_bytes`, NOTE [ RNG states
# are activation memory ] in fxckpt.core.simulate). On CPU the CPU generator's copy is in the
# step's memory; on CUDA every copy (the CPU generator's and the device's, both host tensors) is
# outside the device's, which is what the budget bounds there. These copies are made outside the
# dispatcher, so a dispatch-mode meter cannot see them: the runtime hands each copy in the step's
# memory to the callbacks registered with `watch_rng_states` (`fxckpt.measure.LiveBytesMode`).
_state_watchers: list[Callable[[torch.Tensor], None]] = []


@contextlib.contextmanager
def watch_rng_states(callback: Callable[[torch.Tensor], None]):
    """Within the block, ``callback(t)`` gets every RNG-state copy the runtime makes in the step's
    memory (NOTE [ RNG states the runtime holds ]), as it is made.

    Example:
        >>> seen = []
        >>> with watch_rng_states(seen.append):
        ...     _ = rng_state([torch.ones(2)])
        >>> [t.nbytes for t in seen] == [torch.get_rng_state().nbytes]
        True
    """
    _state_watchers.append(callback)
    try:
        yield
    finally:
        _state_watchers.remove(callback)


def _cuda_devices(leaves: list) -> list[int]:
    return sorted({t.device.index or 0 for t in leaves if isinstance(t, torch.Tensor) and t.device.type == "cuda"})


def rng_state(leaves: list):
    """RNG states a random op is about to draw from: the CPU generator's and, for CUDA
    tensors among its call's leaves, their devices' generators."""
    return _copy_states(_cuda_devices(leaves))


def _copy_states(devices: list[int]):
    cpu = torch.get_rng_state()
    if not devices:  # a CPU step: the copy is in its memory (NOTE [ RNG states the runtime holds ])
        for watch in _state_watchers:
            watch(cpu)
    return cpu, [(d, torch.cuda.get_rng_state(d)) for d in devices]


def rng_state_bytes(leaves: list) -> int:
    """Bytes of the step's device memory that `rng_state(leaves)` keeps: the CPU generator's
    state for a CPU op, nothing for a CUDA op (host memory; NOTE [ RNG states the runtime holds ])."""
    return 0 if _cuda_devices(leaves) else _cpu_state_bytes()


@functools.cache
def _cpu_state_bytes() -> int:
    return torch.get_rng_state().nbytes


@contextlib.contextmanager
def _replaying(recipe: Recipe):
    """Run the block from the generator states `recipe` kept, and put the current ones back
    after. The recipe's copy is dropped before the block runs: one copy is live while the
    node replays (NOTE [ RNG states are activation memory ] in fxckpt.core.simulate)."""
    if recipe.rng is None:
        yield
        return
    devices = [d for d, _ in recipe.rng[1]]
    current = _copy_states(devices)
    cpu, cuda = recipe.rng
    torch.set_rng_state(cpu)
    for d, state in cuda:
        torch.cuda.set_rng_state(state, d)
    recipe.rng = cpu = cuda = None
    try:
        yield
    finally:
        torch.set_rng_state(current[0])
        for d, state in current[1]:
            torch.cuda.set_rng_state(state, d)


class _Packed:
    """A saved tensor swapped for a recipe: a view of its value (`leaf`), or its k-th internal.
    Tensors a node saves while it runs are resolved when it finishes (`record`)."""

    __slots__ = ("recipe", "leaf", "internal", "geometry", "pending")

    def __init__(self, recipe: Recipe, t: torch.Tensor, leaf: int = -1):
        self.recipe, self.leaf, self.internal = recipe, leaf, -1
        self.geometry = (tuple(t.shape), t.stride(), t.storage_offset())
        # Held until the node finishes: a freed internal's storage address could be reused by
        # the node's output, and storages are told apart by address.
        self.pending = t if leaf < 0 else None

    def unpack(self) -> torch.Tensor:
        value = self.recipe.materialize()
        if self.internal >= 0:
            return self.recipe.saved[self.internal]
        base = _tensors(value)[self.leaf]
        if (tuple(base.shape), base.stride(), base.storage_offset()) == self.geometry:
            return base
        return base.as_strided(*self.geometry)


class RematRuntime:
    """Per-module runtime state; `active()` wraps one forward call."""

    def __init__(self, specs: dict[str, RecipeSpec]):
        self.specs = specs
        self._active = False
        self._recipes: dict[str, Recipe] = {}
        self._storages: dict[int, tuple[StorageWeakRef, Recipe, int]] = {}
        self._capturing: tuple | None = None  # (recipe, known storages, packed, maybe its own) while a node runs
        self._amp: tuple = ()
        self._hooked = False  # our pack hook is on the saved-tensor hooks stack
        # Nodes recomputed since the last forward began (a view rebuilt with its base is not
        # counted): what tests compare with the plan, so a runtime that skips or repeats work fails.
        self.replays: Counter[str] = Counter()

    @contextlib.contextmanager
    def active(self):
        if self._active:
            raise RuntimeError("a fxckpt module was re-entered while its forward is running")
        self._active = True
        self._amp = autocast_state()
        self.replays = Counter()
        try:
            with uncached_casts():
                yield
        finally:
            self.hooks_off()  # a forward that raised may have left them on
            self._active = False
            self._capturing = None
            self._recipes.clear()
            self._storages.clear()

    def hooks_on(self) -> None:
        """Called by the rewritten graph before nodes whose saves may be recipes (NOTE [ Hooks
        only where the plan recomputes ] in rewrite.py): saved_tensors_hooks' push, unscoped."""
        if self._active and not self._hooked:
            torch._C._autograd._push_saved_tensors_default_hooks(self._pack, _unpack)
            self._hooked = True

    def hooks_off(self) -> None:
        if self._hooked:
            torch._C._autograd._pop_saved_tensors_default_hooks()
            self._hooked = False

    def begin(self, name: str, inputs: list) -> None:
        """Called by the rewritten graph right before node `name` runs in forward."""
        if not self._active:
            return
        spec = self.specs[name]
        flat = spec.fill(inputs)
        # Recorded for every recipe: a node may save internals annotation did not see (say,
        # casts under an autocast the plan was not made for); a rerun with autograd rebuilds them.
        grad_flags = [x.requires_grad for x in flat if isinstance(x, torch.Tensor)]
        held = list(flat)
        for i, r in spec.remat_slots:
            held[i] = self._recipes[r]
        recipe = Recipe(spec, held, rng_state(flat) if spec.random else None, grad_flags, self._amp, self.replays,
                        after=[self._recipes[w] for w in spec.after])
        self._recipes[name] = recipe
        self._capturing = (recipe, _known_storages(flat, spec.state()), [], [])

    def record(self, name: str, value) -> None:
        """Called by the rewritten graph right after node `name` ran in forward."""
        if not self._active:
            return
        recipe, writer = self._recipes[name], self.specs[name].writer
        tensors = _tensors(value)
        leaf_of = {}
        for i, t in enumerate(tensors):
            leaf_of.setdefault(storage_key(t), i)
        internals = 0
        for packed in self._capturing[2]:  # saved while it ran: its own output, or an internal
            key = storage_key(packed.pending)
            if key in leaf_of:
                packed.leaf = leaf_of[key]
            else:
                packed.internal, internals = internals, internals + 1
            packed.pending = None
        if internals and not self.specs[name].internals:
            log.warning("fxckpt: %s saved tensors the plan did not expect; recomputing them exactly, "
                        "but memory may differ from the prediction (was the plan made under another autocast?)", name)
        recipe.rerun = recipe.rerun or internals > 0
        # NOTE [ An in-place op saving its own result ]
        # An in-place op that saves its result (tanh_, relu_ save what they wrote) saves a
        # tensor whose storage its input already had: while it runs, that storage still maps
        # to the recipe of the buffer's producer, whose replay gives the contents from *before*
        # the write (tanh_'s backward then computed 1 - x^2 of the wrong x: gradients off by
        # 333 on a 2-Linear model). Such saves are rebound to the writer's own recipe, which
        # replays the producer and then the write.
        for key, packed in self._capturing[3]:
            if key in leaf_of:
                packed.recipe, packed.leaf = recipe, leaf_of[key]
        self._capturing = None
        for i, t in enumerate(tensors):
            key = storage_key(t)
            old = self._storages.get(key)
            if writer or old is None or old[0].expired():  # the last writer rebuilds the final contents
                self._storages[key] = (StorageWeakRef(t.untyped_storage()), recipe, i)

    def _pack(self, t: torch.Tensor):
        key = storage_key(t)
        cap = self._capturing
        if cap is not None and key not in cap[1]:  # created by the node running now
            if t.untyped_storage().nbytes() == 0:
                # held as it is: nothing to free, and a recipe for it made the replay rerun with
                # autograd (batch norm in eval saves two empty statistics)
                return t
            packed = _Packed(cap[0], t)
            cap[2].append(packed)
            return packed
        entry = self._storages.get(key)
        if entry is None or entry[0].expired():
            return t
        packed = _Packed(entry[1], t, leaf=entry[2])
        if cap is not None and cap[0].spec.in_place:
            cap[3].append((key, packed))  # maybe its own result: rebound in record
        return packed


def _unpack(x):
    return x.unpack() if isinstance(x, _Packed) else x


def failed_at(gm: torch.fx.GraphModule, error: BaseException) -> str | None:
    """Where a step of the rewritten `gm` was when `error` was raised: the innermost recipe
    being recomputed ("recompute gelu"), else the node whose line of `gm`'s generated code
    raised (a recipe's begin/record call names its node); None if neither is on the traceback."""
    code, lines = type(gm).forward.__code__, getattr(gm, "_lineno_map", None) or {}
    nodes = list(gm.graph.nodes)
    where = None
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if frame.f_code is Recipe.materialize.__code__:
            where = f"recompute {frame.f_locals['self'].spec.name}"
        elif frame.f_code is code and (i := lines.get(lineno - code.co_firstlineno)) is not None:
            node = nodes[i]
            where = node.args[1] if node.op == "call_method" and node.target in ("begin", "record") else node.name
    return where
