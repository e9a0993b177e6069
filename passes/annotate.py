"""annotate: run the graph once on fake tensors and write a `NodeCost` to every node.

No real computation happens: parameters, buffers and inputs are replaced by fake tensors of the
same shapes, dtypes, devices and requires_grad. Saved tensors are seen through saved-tensor hooks,
so a node's saved bytes are what autograd really keeps for its backward.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace

import torch
import torch.fx
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fxckpt.core.costs import NodeCost
from fxckpt.core.errors import in_stage

from .capture import Captured, copy_graph, derive, has_hooks, step_loss
from .engine_sums import EngineSums
from .fake_step import FakeStep, op_scratch
from .ops import DEVICE_QUERY, RATED_OPS, draws_random, is_batchnorm, op_traffic, storage_key, tensor_leaves, tensors_of
from .runtime import rng_state_bytes

log = logging.getLogger(__name__)
META = "fxckpt"


_NUMBERS_SAVED: dict[tuple, int] = {}  # (op, its arguments with tensors as _Operand) -> bytes


@dataclass(frozen=True)
class _Operand:
    """A tensor argument of a probe, by dtype and rank."""
    dtype: torch.dtype
    dim: int


def view_op_with_numbers(func, args: tuple, kwargs: dict):
    """(func, args, kwargs) with tensors as `_Operand`s, for an in-place op on a floating view
    with a Python number where it takes a tensor; else None (NOTE [ Numbers an in-place op on a
    view saves ])."""
    if not (args and isinstance(args[0], torch.Tensor) and args[0]._is_view() and args[0].is_floating_point()):
        return None
    schema = func._schema.arguments
    if not any(isinstance(a, (bool, int, float, complex)) and isinstance(schema[i].type, torch.TensorType)
               for i, a in enumerate(args[:len(schema)])):
        return None
    return func, *pytree.tree_map_only(torch.Tensor, lambda t: _Operand(t.dtype, t.dim()), (args, kwargs))


def numbers_saved(func, args: tuple, kwargs: dict) -> int:
    """Bytes of the wrapped Python numbers the autograd node of in-place `func` saves, called on
    `_Operand`s and numbers: probed once per signature on one-element real tensors, outside any
    mode (NOTE [ Numbers an in-place op on a view saves ])."""
    key = (func, repr((args, kwargs)))
    if key not in _NUMBERS_SAVED:
        from torch.utils._python_dispatch import _disable_current_modes

        _NUMBERS_SAVED[key] = 0
        with _disable_current_modes(), torch.enable_grad():
            is_operand = lambda x: isinstance(x, _Operand)  # noqa: E731
            a, kw = pytree.tree_map(lambda x: torch.ones((1,) * x.dim, dtype=x.dtype) if is_operand(x) else x,
                                    (args, kwargs), is_leaf=is_operand)
            a = (a[0].detach().requires_grad_().clone(), *a[1:])
            try:
                func(*a, **kw)
            except (RuntimeError, IndexError, TypeError, ValueError):
                return 0
            fn, inputs = a[0].grad_fn, {storage_key(t) for t in tensors_of((a, kw))}
            found = {}
            for attr in _saved_attributes(fn) if fn is not None else ():
                value = getattr(fn, attr)
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(t, torch.Tensor) and t.dim() == 0 and storage_key(t) not in inputs:
                        found[storage_key(t)] = t.untyped_storage().nbytes()
            _NUMBERS_SAVED[key] = sum(found.values())
    return _NUMBERS_SAVED[key]


class _OpRecorder(TorchDispatchMode):
    """Sees every ATen op a node runs: randomness, in-place writes, temporaries (kernels' own
    scratch included: NOTE [ Op scratch the fake values do not show ]), and the ops and bytes that
    price it in seconds (`fxckpt.core.timing`)."""

    def __init__(self, known):
        super().__init__()
        self.known = known  # storages that existed before the node ran
        self.random = False
        self.written: list[torch.Tensor] = []
        self.new: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0
        self.ops = self.bytes_read = self.bytes_written = self.random_elements = 0
        self.rated: dict[str, int] = {}  # bytes moved by ops with a rate of their own, per kind
        self.decomposes = False  # an op FlopCounterMode would decompose (NOTE [ FLOPs counted once per signature ])
        self.view_ops_with_numbers: list = []  # NOTE [ Numbers an in-place op on a view saves ]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is DEVICE_QUERY:  # NOTE [ Device queries under fake tensors ] in ops.py
            return func(*args)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.book(func, args, kwargs, out)
        return out

    def book(self, func, args, kwargs: dict, out) -> None:
        """Record what `func`, called on (args, kwargs), did and returned (`out`): the mode's work
        after each op, or a fake step's observer (NOTE [ Observers inside the fake mode ])."""
        self.decomposes |= _counter_decomposes(func)
        random = draws_random(func, args, kwargs)
        self.random |= random
        schema = func._schema
        if schema.is_mutable:
            for i, arg in enumerate(schema.arguments):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    val = args[i] if i < len(args) else kwargs.get(arg.name)
                    self.written.extend(tensor_leaves(val))
            if torch.is_grad_enabled() and (op := view_op_with_numbers(func, args, kwargs)) is not None:
                self.view_ops_with_numbers.append(op)  # probed after the node: autograd is off in here
        written = tensor_leaves(out)
        if written and not func.is_view:  # views move no data; metadata queries return no tensor
            self.ops += 1
            read, wrote = op_traffic(func, args, kwargs, written)
            self.bytes_read += read
            self.bytes_written += wrote
            if (kind := RATED_OPS.get(func)) is not None:
                self.rated[kind] = self.rated.get(kind, 0) + read + wrote
            if random:
                self.random_elements += sum(t.numel() for t in written)
        for t in written:
            k = storage_key(t)
            if k not in self.new and not self.known(k):
                self.new[k] = (StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes())
        live = sum(n for ref, n in self.new.values() if not ref.expired())
        self.peak = max(self.peak, live + op_scratch(func, args, kwargs))


# NOTE [ The loss in the plan ]
# The step is `loss_fn(output).backward()`. What the loss allocates (a cross-entropy: a log-softmax
# of the logits' size, held for its backward) and what its backward allocates (the gradient of the
# logits) live between forward's end and the first graph node's backward, and the gradient of the
# output is that node's input. So the loss's forward and backward are traced as the start of the
# first node's backward: its transient covers their peak, the log-softmax dies there, the
# output's gradient is consumed there, and what survives (the loss itself) is a gradient-like
# buffer born there that lives to the end. The runtime's dry run sees the same step.
LOSS = "<loss>"


class _BackwardTrace:
    """Follows backward on fake tensors: which fx node's backward runs, the storages backward
    allocates (gradients, temporaries), and in which node's backward each of them dies.

    Per node this gives the backward order, a transient (peak of all live bytes during its
    backward, over their level when it starts: what it allocates, less what autograd releases
    part-way, e.g. the first of two saved tensors of a composite op) and the gradients it leaves
    for later nodes. Gradients flow the same whatever is recomputed, so the simulator reuses
    these for any plan.
    """

    def __init__(self, known):
        self.known = known
        self.current: str | None = None
        self.order: list[str] = []
        self.live: dict[int, tuple[StorageWeakRef, int, str]] = {}  # born in backward: (ref, bytes, step)
        self.level = 0
        self.base: dict[str, int] = {}  # level (backward-born bytes) when each node's backward started
        self.unpack: dict[str, int] = {}  # live over `base` when it first unpacked a saved tensor
        self.held: dict[int, tuple[StorageWeakRef, int]] = {}  # forward-born, alive at backward start
        self.held_bytes = 0
        self.start: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        # the peak with the forward-born storages alive at the node's start held to its end, as a
        # replayed recipe holds what the node saved (NOTE [ Replayed saves are freed together ])
        self.held_peak: dict[str, int] = {}
        self.held_at_start = 0
        self.grads: list[tuple[int, str, str | None]] = []  # (bytes, born in, dies in)
        self.sums = EngineSums()

    def begin_loss(self, new: dict, peak: int) -> None:
        """Backward starts with the loss: what computing it allocated (`new`, at most `peak` at
        once) and what its backward allocates count as part of the first node's backward, the
        node whose output the loss read (NOTE [ The loss in the plan ])."""
        self.current = LOSS
        self.start[LOSS] = self.level + self.held_bytes
        self.base[LOSS] = self.level
        for k, (ref, nbytes) in new.items():
            if not ref.expired():
                self.live[k] = (ref, nbytes, LOSS)
                self.level += nbytes
        self.peak[LOSS] = max(self.start[LOSS] + peak, self.level + self.held_bytes)
        self.held_peak[LOSS], self.held_at_start = self.peak[LOSS], self.held_bytes

    # NOTE [ Sweeping forward-born storages lazily ]
    # Checking every held storage (forward-born, alive at backward's start) after every op was a
    # third of annotation's time on GPT-2 small (740,865 liveness checks). `held_bytes` only
    # over-counts (storages die, none is added), so it is swept only where the peak could rise:
    # when a node starts (its level must be exact) and when level + held_bytes passes the node's
    # peak so far. Peaks and levels are the same as with a sweep after every op. Storages born
    # in backward (`live`) are still swept after every op: which node they die in is recorded.
    def enter(self, name: str) -> None:
        if name != self.current:
            self._sweep(ending=self.current)
            if self.current == LOSS:
                self._merge_loss_into(name)
            self.current = name
            if name not in self.start:
                self._sweep_held()
                self.order.append(name)
                self.start[name] = self.peak[name] = self.held_peak[name] = self.level + self.held_bytes
                self.base[name] = self.level
                self.held_at_start = self.held_bytes

    def unpacked(self) -> None:
        """A saved tensor of the node running is unpacked: at the first, the runtime would
        recompute what the node needs (NOTE [ Recomputed when unpacked ] in fxckpt.core.simulate)."""
        if self.current in self.base and self.current not in self.unpack:
            self._sweep(ending=self.current)
            self.unpack[self.current] = max(0, self.level - self.base[self.current])

    def _merge_loss_into(self, name: str) -> None:
        self.order.append(name)
        self.start[name], self.peak[name] = self.start.pop(LOSS), self.peak.pop(LOSS)
        self.held_peak[name] = self.held_peak.pop(LOSS)
        self.base[name] = self.base.pop(LOSS)
        self.live = {k: (ref, nbytes, name if born == LOSS else born) for k, (ref, nbytes, born) in self.live.items()}

    def hold(self, storages) -> None:
        for k, (ref, nbytes) in storages.items():
            if not ref.expired():
                self.held[k] = (ref, nbytes)
                self.held_bytes += nbytes

    def _sweep_held(self) -> None:
        expired = torch.UntypedStorage._expired  # what StorageWeakRef.expired calls, minus two Python frames
        for k in [k for k, (ref, _) in self.held.items() if expired(ref.cdata)]:
            self.held_bytes -= self.held.pop(k)[1]

    def _sweep(self, ending) -> None:
        for k in [k for k, (ref, _, _) in self.live.items() if ref.expired()]:
            ref, nbytes, born = self.live.pop(k)
            self.level -= nbytes
            if born != ending:
                self.grads.append((nbytes, born, ending))

    def finish(self) -> None:
        self._sweep(ending=self.current)
        for ref, nbytes, born in self.live.values():
            self.grads.append((nbytes, born, None))

    def book(self, func, args, kwargs: dict, out) -> None:
        """After each op of backward: the fake step's observer (NOTE [ Observers inside the fake mode ])."""
        self._sweep(ending=self.current)
        summed = self.sums.summed_into(func, args)
        if summed is not None and storage_key(summed) in self.live and isinstance(out, torch.Tensor):
            # NOTE [ Gradients the engine sums in place ]: the sum is the old gradient, written
            _, nbytes, born = self.live.pop(storage_key(summed))
            self.live[storage_key(out)] = (StorageWeakRef(out.untyped_storage()), nbytes, born)
        for t in tensor_leaves(out):
            k = storage_key(t)
            if k in self.held and self.held[k][0].expired():  # its address reused: a new storage
                self.held_bytes -= self.held.pop(k)[1]
            if k not in self.live and k not in self.held and not self.known(k):
                nbytes = t.untyped_storage().nbytes()
                self.live[k] = (StorageWeakRef(t.untyped_storage()), nbytes, self.current)
                self.level += nbytes
        scratch = op_scratch(func, args, kwargs)
        if self.level + self.held_at_start + scratch > self.held_peak[self.current]:
            self.held_peak[self.current] = self.level + self.held_at_start + scratch
        if self.level + self.held_bytes + scratch > self.peak[self.current]:
            self._sweep_held()
            self.peak[self.current] = max(self.peak[self.current], self.level + self.held_bytes + scratch)


# NOTE [ FLOPs counted once per signature ]
# GPT-2 small is 12 identical blocks: most of its nodes repeat an earlier node's op on inputs of
# the same shapes, and so count the same FLOPs. FlopCounterMode is a dispatch mode of its own on
# every op of the forward (about a tenth of annotation's time there), so it runs only on a node
# whose signature is new; a node repeating one gets the FLOPs counted then. The signature
# (`_flop_key`) is conservative: the ATen op, the structure and every constant of its arguments,
# each tensor's type, shape, strides, offset, dtype, device, layout, requires_grad, conj and neg
# bits, and the grad mode, inference mode, autocast state and the module's training flag; any
# argument of another kind (a SymInt, an object) makes the node uncached. FlopCounterMode also
# decomposes ops it has no formula for where they have a CompositeImplicitAutograd kernel, below
# the recorder but above the fake mode: a node that ran such an op, or a higher-order op, is not
# cached, so a node run without the counter dispatches exactly the ops it would have with it.
# Other nodes of an exported graph (getitem, export's guard module) are counted each under a
# counter of their own; symbolic_trace's graphs (modules and Python functions at every node)
# count their whole forward under one counter, as before.
_DECOMPOSES: dict[int, bool] = {}  # id(op) -> whether FlopCounterMode may decompose it


def _counter_decomposes(func) -> bool:
    kind = _DECOMPOSES.get(id(func))
    if kind is None:
        if isinstance(func, torch._ops.HigherOrderOperator):
            kind = True
        else:
            dk = torch._C.DispatchKey.CompositeImplicitAutograd
            kind = func is not torch.ops.prim.device.default and (
                dk in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), dk))
        _DECOMPOSES[id(func)] = kind
    if kind:
        from torch.utils.flop_counter import flop_registry

        return func not in flop_registry  # FlopCounterMode's own test (an OpOverload never is)
    return False


_CONSTANTS = (type(None), bool, int, str, torch.dtype, torch.device, torch.layout, torch.memory_format)


def _flop_key(value):
    """A hashable description of an argument, nested as it is, or None where it has a part that
    is not described (NOTE [ FLOPs counted once per signature ])."""
    if isinstance(value, torch.Tensor):
        if any(isinstance(d, torch.SymInt) for d in (*value.shape, *value.stride())):
            return None
        return (type(value), tuple(value.shape), value.stride(), value.storage_offset(), value.dtype, value.device,
                value.layout, value.requires_grad, value.is_conj(), value.is_neg())
    if type(value) in _CONSTANTS:
        return (type(value), value)
    if type(value) is float:
        return (float, repr(value))  # 0.0 == -0.0, and NaN equals nothing
    if isinstance(value, (tuple, list)):  # fx's immutable_list among them
        parts = tuple(_flop_key(v) for v in value)
        return None if None in parts else (type(value), parts)
    if isinstance(value, dict):
        parts = tuple((k, _flop_key(v)) for k, v in value.items())
        return None if not all(type(k) is str for k, _ in parts) or any(p is None for _, p in parts) else (type(value), parts)
    return None


def node_flop_key(target, args: tuple, kwargs: dict, training: bool):
    """The signature under which a node's counted FLOPs are cached, or None for a node that
    is not (NOTE [ FLOPs counted once per signature ])."""
    if not isinstance(target, torch._ops.OpOverload):
        return None
    key = _flop_key((args, kwargs))
    if key is None:
        return None
    from .runtime import autocast_state

    return (target, key, torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocast_state(), training)


_SAVED_ATTRIBUTES: dict[type, tuple[str, ...]] = {}


def _saved_attributes(fn) -> tuple[str, ...]:
    """The `_saved_*` attributes of an autograd node: per class for autograd's own nodes (C++
    classes, no instance attributes; `dir` on each of GPT-2 small's was ~15% of annotation's
    forward), read off the instance for a custom Function's (its ctx may set its own)."""
    if hasattr(fn, "__dict__"):
        return tuple(a for a in dir(fn) if a.startswith("_saved_"))
    names = _SAVED_ATTRIBUTES.get(type(fn))
    if names is None:
        names = _SAVED_ATTRIBUTES[type(fn)] = tuple(a for a in dir(fn) if a.startswith("_saved_"))
    return names


# NOTE [ Tensors a custom Function keeps on its ctx ]
# A custom autograd Function may keep a tensor for its backward as an attribute of its ctx
# (`ctx.offs = offs`, as transformers' grouped-matmul fallback does for its MoE offsets) instead
# of `save_for_backward`: no saved-tensor hook sees it, and it lives as long as the autograd node,
# to its backward. Such tensors, where they are values of the graph, count as saved by the node
# (the ctx is the autograd node, its attributes its `__dict__`): the tiny Mixtral's 16-byte
# offsets, read as dead after their last forward reader, put the dry run 32 B over the simulator
# (336,808 B against 336,776 B). Their producers are not recomputed: the ctx would keep the first
# value beside the replayed one. Not others: a reentrant `torch.utils.checkpoint` keeps the RNG
# state on its ctx, and the rewritten graph replaces that region with fxckpt's own replay.
def _ctx_tensors(grad_fns: list) -> list[torch.Tensor]:
    found = []
    for fn in grad_fns:
        for value in getattr(fn, "__dict__", {}).values():
            found.extend(t for t in (value if isinstance(value, (tuple, list)) else (value,))
                         if isinstance(t, torch.Tensor))
    return found


class _Annotator(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, step: FakeStep, memoize: bool = True):
        super().__init__(gm, garbage_collect_values=True)
        self.step = step
        self.external = step.external  # storage -> name of the parameter, buffer or input
        self.owner: dict[int, tuple[str, StorageWeakRef]] = {}  # storage -> activation buffer
        self.writers: dict[str, list[str]] = {}  # activation buffer -> nodes writing it in place
        self.costs: dict[str, NodeCost] = {}
        self.grad_fns: dict = {}  # autograd node -> fx node name
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}  # every storage forward created
        self.current: str | None = None  # the node running
        self.on_unpack = None  # called when backward unpacks a tensor a node saved (the backward trace's)
        # Exported graphs (ATen ops) count FLOPs per new signature (NOTE [ FLOPs counted once per
        # signature ]); others under one counter around the whole forward (`run`), read before and
        # after each node: entering one per node registered module hooks 700 times on GPT-2 small.
        self.memo: dict | None = {} if memoize else None
        self.memo_hits = 0
        self.flops = FlopCounterMode(display=False)

    def run(self, *args):
        with self.flops if self.memo is None else contextlib.nullcontext():
            out = super().run(*args)
        # NOTE [ Values no node reads ]
        # The Interpreter frees a value after its last reader, so one no node reads (the indices
        # of an exported `median.dim`, a getitem nothing uses) stayed in `env` through the backward
        # trace, held as if the step kept it: a net subtracting an exported median over dim 0
        # (8x16x64) was predicted 141,320 B at budget 1.0 for 133,128 B at the allocator, the
        # indices' 8,192 B alive to the end of the median's backward where the real step frees
        # them as the scatter ends. The rewritten graph's code drops them at once.
        self.env.clear()
        return out

    def _known(self, k: int) -> bool:
        entry = self.owner.get(k)
        return k in self.external or (entry is not None and not entry[1].expired())

    def _buffer(self, t: torch.Tensor) -> str | None:
        entry = self.owner.get(storage_key(t))
        return entry[0] if entry is not None and not entry[1].expired() else None

    def run_node(self, n: torch.fx.Node):
        if n.op in ("placeholder", "get_attr", "output"):
            return super().run_node(n)
        saved: list[torch.Tensor] = []

        def pack(t):
            saved.append(t)
            return t

        def unpack(t):
            if self.on_unpack is not None:
                self.on_unpack()
            return t

        rec = _OpRecorder(self._known)
        self.current = n.name
        key = counter = None
        if self.memo is not None:
            key = node_flop_key(n.target, *self.fetch_args_kwargs_from_env(n), self.module.training)
            counter = None if key in self.memo else FlopCounterMode(display=False)
        with counter if counter is not None else contextlib.nullcontext():
            flops = self.flops.get_total_flops() if self.memo is None else 0
            # The recorder as a mode above a FLOP counter (which may decompose ops), else inside
            # the fake mode (NOTE [ Observers inside the fake mode ]): the same ops either way.
            watched = rec if counter is not None or self.memo is None else self.step.observe(rec.book)
            with torch.autograd.graph.saved_tensors_hooks(pack, unpack), watched:
                out = super().run_node(n)
        if self.memo is None:
            counted = self.flops.get_total_flops() - flops
        elif counter is None:
            counted = self.memo[key]
            self.memo_hits += 1
        else:
            counted = counter.get_total_flops()
            if key is not None and not rec.decomposes:
                self.memo[key] = counted
        grad_fns = self._claim_grad_fns(n.name, out)
        kept = [t for t in _ctx_tensors(grad_fns) if self._buffer(t) is not None]
        for t in kept:  # replayed, its value would live twice: the ctx keeps the first
            producer = self._buffer(t).rsplit(":", 1)[0]
            if producer in self.costs and self.costs[producer].ban is None:
                self.costs[producer] = replace(self.costs[producer], ban=f"{n.name} keeps its value on its ctx")
        cost = self._cost(n, out, [*saved, *kept], rec, counted)
        if rec.random:  # the RNG states a recipe of it would keep (NOTE [ RNG states the runtime holds ])
            cost = replace(cost, recipe_bytes=rng_state_bytes(tensor_leaves(self.fetch_args_kwargs_from_env(n))))
        self.storages.update(rec.new)
        unhooked = self._unhooked_saved_bytes(grad_fns, {storage_key(t) for t in saved})
        unhooked += sum(numbers_saved(*op) for op in rec.view_ops_with_numbers)
        self.costs[n.name] = replace(cost, unhooked_saved_bytes=unhooked) if unhooked else cost
        # NOTE [ The pack hook holds nothing ]
        # Each tensor saved under saved_tensors_hooks keeps the hooks, `pack` and its closure
        # among them, until autograd releases it: a `saved` list still full would hold every
        # tensor the node saved until the last of its autograd nodes ran backward, where autograd
        # frees each as its own autograd node finishes. SDPA's math path with dropout (five autograd
        # nodes, one fx node) held its dropped attention and mask through its softmax backward:
        # the backward trace's transient 2,534,464 B where the step's was 1,369,120 B, and the plan
        # predicted 6,845,608 B for an allocator peak of 5,680,264 B (unseen-model check); a GRU's 16
        # steps held all their saved tensors to the end of its backward (its prediction 18% high).
        saved.clear()
        return out

    def _claim_grad_fns(self, name: str, out) -> list:
        """Autograd nodes this fx node created: their pre-hooks tell the backward trace whose
        backward is running."""
        stack = [t.grad_fn for t in tensor_leaves(out) if t.grad_fn is not None]
        claimed = []
        while stack:
            fn = stack.pop()
            if fn in self.grad_fns or type(fn).__name__ == "AccumulateGrad":
                continue
            self.grad_fns[fn] = name
            claimed.append(fn)
            stack.extend(f for f, _ in fn.next_functions if f is not None)
        return claimed

    # NOTE [ Saved tensors the hooks do not see ]
    # A Python number where an op takes a tensor (`scores / math.sqrt(d)`) becomes a 0-dim
    # "wrapped number" tensor, which autograd saves without calling saved-tensor hooks: the zoo
    # transformer held three 8-byte divisors through backward, 24 B above its plan at the
    # allocator (and unseen by LiveBytesMode, made outside the dispatcher too). They are read off
    # the node's autograd nodes (`_saved_*`): tensors no hook saw, of no known storage. The forward
    # runs with autograd whatever the plan, so they are held until the node's backward whatever
    # the plan (`Node.extra_saved_bytes`).
    # NOTE [ Numbers an in-place op on a view saves ]
    # An in-place op on a view (`h[:, :4] *= 2`) is a CopySlices autograd node wrapping the op's
    # own (MulBackward0), whose saved wrapped number (8 B) no `_saved_*` attribute of CopySlices
    # shows: a net measured 12,432 B at the allocator under a 12,424 B budget (unseen-model
    # check). Such an op is charged what its own autograd node saves of that kind, read off the
    # same op run on one-element real tensors (`numbers_saved`).
    def _unhooked_saved_bytes(self, grad_fns: list, hooked: set[int]) -> int:
        found: dict[int, int] = {}
        for fn in grad_fns:
            for attr in _saved_attributes(fn):
                value = getattr(fn, attr)
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    # 0-dim only: a user's torch.utils.checkpoint region saves through hooks of its
                    # own, and its tensors (freed by that checkpoint) read here as unhooked too.
                    if (isinstance(t, torch.Tensor) and t.dim() == 0 and (k := storage_key(t)) not in hooked
                            and not self._known(k)):
                        found[k] = t.untyped_storage().nbytes()
        return sum(found.values())

    def _cost(self, n, out, saved, rec, counted_flops) -> NodeCost:
        outs = tensor_leaves(out)
        creates, value, seen = [], [], set()
        for t in outs:
            k = storage_key(t)
            if k in seen or k in self.external:
                continue
            seen.add(k)
            name = self._buffer(t)
            if name is None:
                name = f"{n.name}:{len(creates)}"
                nbytes = t.untyped_storage().nbytes()
                creates.append((name, nbytes))
                self.owner[k] = (name, StorageWeakRef(t.untyped_storage()))
            value.append(name)
        saves, extra, extra_keys = [], 0, set()
        for t in saved:
            k = storage_key(t)
            if k in self.external:
                continue
            name = self._buffer(t)
            if name is not None:
                if name not in saves:
                    saves.append(name)
            elif k not in extra_keys:
                extra_keys.add(k)
                extra += t.untyped_storage().nbytes()
        requires_grad = any(t.requires_grad for t in outs)
        mutates, writes = None, []
        for t in rec.written:
            k = storage_key(t)
            if k in self.external:
                mutates = f"{self.external[k]}"
            elif (b := self._buffer(t)) is not None and b not in writes:
                writes.append(b)
                self.writers.setdefault(b, []).append(n.name)
        created_bytes = sum(b for _, b in creates)
        flops = counted_flops or (sum(t.numel() for t in outs) if creates else 0)
        ban = None  # random ops stay candidates: the runtime replays their RNG state exactly
        if mutates is not None and not is_batchnorm(n, self.module):
            ban = f"modifies {mutates} in place"
        elif n.op == "call_module" and has_hooks(self.module.get_submodule(n.target)):
            ban = "its module has hooks, which run once per forward"  # NOTE [ Modules with hooks ]
        if requires_grad and extra:  # saved internals: a buffer of their own, freed or recomputed with the node
            creates.append((f"{n.name}:saved", extra))
            saves.append(f"{n.name}:saved")
        return NodeCost(
            flops=int(flops),
            requires_grad=requires_grad,
            creates=tuple(creates), value=tuple(value), saves=tuple(saves) if requires_grad else (),
            extra_saved_bytes=extra if requires_grad else 0,
            transient_bytes=max(0, rec.peak - created_bytes - extra),
            is_random=rec.random, writes=tuple(writes), mutates=mutates, ban=ban,
            ops=rec.ops, bytes_read=rec.bytes_read, bytes_written=rec.bytes_written, random_elements=rec.random_elements,
            rated_bytes=tuple(sorted(rec.rated.items())),
        )



def annotate(captured: Captured, loss_fn=None) -> torch.fx.GraphModule:
    """A copy of `captured.gm` with `node.meta["fxckpt"] = NodeCost(...)` on every computing node,
    measured on one training step on fake tensors: ``loss_fn(output).backward()`` (default
    `step_loss`). `captured` is left as it was.

    Raises:
        StageError: stage "annotate", naming the node whose forward (or "backward of" it) failed.

    Example:
        >>> import torch, fxckpt.passes as P
        >>> cap = P.capture(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), torch.randn(2, 4))
        >>> gm = P.annotate(cap)
        >>> [n.meta["fxckpt"].creates for n in gm.graph.nodes if "fxckpt" in n.meta]
        [(('_0:0', 32),), (('_1:0', 32),)]
    """
    if not isinstance(captured, Captured):
        raise TypeError(f"annotate takes the Captured that capture() returns, got {type(captured).__name__}")
    return annotate_with(captured, loss_fn)[0]


def annotate_with(captured: Captured, loss_fn=None, *, memoize: bool = True) -> tuple[torch.fx.GraphModule, _Annotator]:
    """`annotate`, and the annotator that ran: `memoize=False` counts every node's FLOPs afresh
    (NOTE [ FLOPs counted once per signature ]), which tests compare against."""
    # NOTE [ The annotated graph's code ]
    # Annotation interprets the graph node by node and `rewrite` derives the graph that runs, so
    # the annotated module's own Python code is never run on the planning path: it is generated
    # on first use (a call, `.code`), not here (GPT-2 small: 25-40 ms of code generation and
    # compile() per planning).
    gm = derive(captured.gm, copy_graph(captured.gm.graph)[0], lazy=True)
    with FakeStep(gm, captured.args, captured.kwargs) as step:
        runner = _Annotator(gm, step, memoize=memoize and captured.frontend == "export")
        with in_stage("annotate", lambda e: runner.current):
            out = runner.run(*step.flat)
        trace = _trace_backward(runner, out, step, loss_fn or step_loss)
    _in_place_reads(gm, runner)
    gm.meta[META] = {}  # marks the graph annotated (`to_problem` checks)
    rank = {name: i for i, name in enumerate(trace.order)}
    born: dict[str, list] = {}
    for nbytes, b, d in trace.grads:
        born.setdefault(b, []).append((d, nbytes))
    for node in gm.graph.nodes:
        if node.name in runner.costs:
            runner.costs[node.name] = replace(
                runner.costs[node.name], bwd_rank=rank.get(node.name, -1),
                bwd_transient_bytes=trace.peak.get(node.name, 0) - trace.start.get(node.name, 0),
                bwd_unpack_bytes=trace.unpack.get(node.name, 0),
                bwd_replay_transient_bytes=max(trace.peak.get(node.name, 0), trace.held_peak.get(node.name, 0))
                - trace.start.get(node.name, 0),
                grads=tuple(born.get(node.name, ())))
            node.meta[META] = runner.costs[node.name]
    return gm, runner


def _trace_backward(runner: _Annotator, out, step: FakeStep, loss_fn) -> _BackwardTrace:
    """Backward of the step on fake tensors, gradients of leaves preallocated as in a real step."""
    output, leaves, loss_fn = out, step.leaves(), step.loss(loss_fn)  # Interpreter.run rebuilt the output
    grads = {storage_key(t.grad) for t in leaves}  # accumulating into .grad allocates nothing
    known = lambda k: k in grads or runner._known(k)  # noqa: E731
    trace = _BackwardTrace(known)
    handles = [fn.register_prehook(lambda grads, name=name: trace.enter(name)) for fn, name in runner.grad_fns.items()]
    try:
        with _OpRecorder(trace.known) as rec:  # what computing the loss allocates
            loss = loss_fn(output)
        trace.hold(runner.storages)
        trace.begin_loss(rec.new, rec.peak)
        runner.on_unpack = trace.unpacked
        with in_stage("annotate", lambda e: trace.current and f"backward of {trace.current}"), step.observe(trace.book), \
                trace.sums.following(loss):
            loss.backward()
        trace.finish()
    finally:
        runner.on_unpack = None
        for h in handles:
            h.remove()
    return trace


def _in_place_reads(gm, runner: _Annotator) -> None:
    """In-place writes to activations. A node reading an input whose storage another node wrote
    after the input was made reads the written contents: its replay runs after the last such
    writer's (`NodeCost.reads`). A node whose input is written *after* it ran cannot be
    recomputed: the replay would see contents it never saw. Writers themselves can be:
    replaying the producer, then the writes in order, rebuilds the final contents, which is all
    that autograd may have saved; but a writer that copies from another buffer written later
    would copy the later contents, so the buffer it writes is not recomputed either."""
    if not runner.writers:
        return
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    banned: dict[str, str] = {}  # producer of a written buffer -> why it must be kept
    for n in gm.graph.nodes:
        cost = runner.costs.get(n.name)
        if cost is None:
            continue
        reads, ban = [], cost.ban
        for a in n.all_input_nodes:
            read = getattr(runner.costs.get(a.name), "value", ())
            writers = [w for b in read for w in runner.writers.get(b, ()) if order[a.name] < order[w] and w != n.name]
            before = [w for w in writers if order[w] < order[n.name]]
            if before:
                reads.append((a.name, max(before, key=order.get)))
            after = [w for w in writers if order[w] > order[n.name]]
            if after and ban is None:
                ban = f"reads {a.name}, which {after[0]} modifies in place later"
            if after and not cost.creates and not set(read) <= set(cost.writes):
                for b in cost.writes:  # replayed, it would write the later contents of `a`
                    banned.setdefault(b.rsplit(":", 1)[0], f"{n.name} writes it from {a.name}, "
                                                           f"which {after[0]} modifies in place later")
        if reads or ban != cost.ban:
            runner.costs[n.name] = replace(cost, ban=ban, reads=tuple(reads))
    for name, why in banned.items():
        if runner.costs[name].ban is None:
            runner.costs[name] = replace(runner.costs[name], ban=why)
