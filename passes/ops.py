"""Small helpers the passes share: how to run one fx node again, and how tensors are told apart."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch.utils import _pytree as pytree

aten = torch.ops.aten

# Batch norm ops and the positions of (running_mean, running_var) among their arguments.
_BN_STATS = {
    aten.batch_norm.default: (3, 4),
    aten.native_batch_norm.default: (3, 4),
    aten._native_batch_norm_legit.default: (3, 4),
    aten._native_batch_norm_legit_functional.default: (3, 4),
    torch.batch_norm: (3, 4),
    F.batch_norm: (1, 2),
}


def is_batchnorm(node: torch.fx.Node, root: torch.nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), torch.nn.modules.batchnorm._BatchNorm)
    return node.op == "call_function" and node.target in _BN_STATS


def node_fn(node: torch.fx.Node, root: torch.nn.Module, *, recompute: bool = False) -> Callable[..., Any]:
    """A callable f with f(*node.args, **node.kwargs) == the node's value.

    For a recomputation, batch norm in training mode runs without its running statistics: its
    output depends only on the batch, and the statistics must be updated exactly once per step.
    In eval mode it normalizes by the running statistics, which it does not update.
    """
    if node.op == "call_function":
        if recompute and node.target in _BN_STATS:
            return _without_stats(node.target, *_BN_STATS[node.target])
        return node.target
    if node.op == "call_method":
        return lambda self, *a, **k: getattr(self, node.target)(*a, **k)
    if node.op == "call_module":
        mod = root.get_submodule(node.target)
        if recompute and isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            return functools.partial(_replay_batchnorm, mod)
        return mod
    raise ValueError(f"node {node.format_node()} does not compute a value")


# NOTE [ Batch norm replayed in eval mode ]
# A batch norm replayed in eval mode (a graph planned for a call in `eval()`, or a BatchNorm put in
# eval inside a training model) normalizes by its running statistics, as its forward did: replayed
# on batch statistics, a MobileNet-like net planned at its floor in eval() got gradients 1.24 off
# eager's. nn.BatchNorm uses batch statistics where it has no running ones, in any mode.
def _replay_batchnorm(mod: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if mod.training or mod.running_mean is None:
        return F.batch_norm(x, None, None, mod.weight, mod.bias, True, 0.0, mod.eps)
    return F.batch_norm(x, mod.running_mean, mod.running_var, mod.weight, mod.bias, False, 0.0, mod.eps)


def _without_stats(fn, i_mean: int, i_var: int):
    def run(*args, **kwargs):
        training = args[5] if len(args) > 5 else kwargs.get("training", False)
        if not training:  # eval mode reads the running statistics and does not update them
            return fn(*args, **kwargs)
        args = list(args)
        for i, name in ((i_mean, "running_mean"), (i_var, "running_var")):
            if i < len(args):
                args[i] = None
            elif name in kwargs:
                kwargs[name] = None
        return fn(*args, **kwargs)
    return run



# NOTE [ Seeded ops that draw nothing ]
# torch tags every attention kernel `nondeterministic_seeded`, dropout or not. Flagged random, an
# attention recomputed by the eager runtime holds an RNG state copy (5,056 B on CPU) from its
# forward to its replay, and the compile path may not recompute it at all. Attention with
# ``dropout_p == 0`` (every Llama, any model in eval) and dropout with ``train=False`` draw no
# numbers (checked on CPU: the generator's state is unchanged; CUDA's kernels take a philox
# offset only when dropout is on). A bare ``p == 0`` is not enough: ``native_dropout(x, 0.0, True)``
# still draws its mask.
def draws_random(func, args, kwargs) -> bool:
    """Whether an ATen op draws from a random generator with these arguments.

    Example:
        >>> q = torch.randn(1, 1, 4, 8)
        >>> draws_random(aten._scaled_dot_product_flash_attention_for_cpu.default, (q, q, q, 0.0), {})
        False
        >>> draws_random(aten.native_dropout.default, (q, 0.0, True), {})
        True
    """
    if torch.Tag.nondeterministic_seeded not in getattr(func, "tags", ()):
        return False
    for i, arg in enumerate(func._schema.arguments):
        value = args[i] if i < len(args) else kwargs.get(arg.name, arg.default_value)
        if (arg.name == "dropout_p" and value == 0) or (arg.name == "train" and value is False):
            return False
    return True


# NOTE [ Device queries under fake tensors ]
# A fake tensor answers `.device` in Python (its data lives on "meta"), so every device query the
# autograd engine makes from C++ (recording an op's inputs in forward, checking each gradient in
# backward) is dispatched as `prim.device` through every mode on the stack: on GPT-2 small, 5,612
# of the 8,870 ops a dry run's meter saw and 4,798 of annotation's 7,117. A query allocates and
# frees nothing, so the modes that book bytes pass it on untouched: peaks, levels and the node a
# storage dies in are those of booking every query (a sweep left to the next op books the same
# deaths to the same node).
DEVICE_QUERY = torch.ops.prim.device.default


# NOTE [ Bytes an op moves ]
# Priced in seconds (`fxckpt.core.timing`), an op reads its tensor inputs and writes its outputs,
# except where the kernel does not:
# - gathers read rows of their first input by index: an embedding of a 50257 x 768 table reads
#   the rows it looks up, not 154 MB (counted whole, GPT-2 small's embedding was priced 20x its
#   measured time, benchmarks/results/2026-11-30/seconds.md); their table is read at most as much
#   as they write;
# - allocations (`empty_like`: dropout runs one per mask) neither read nor write data;
# - fills (`bernoulli_`, `fill_`, `zero_`, ...) write their first argument without reading it.
_GATHERS = frozenset({aten.embedding.default, aten.index_select.default, aten.index.Tensor, aten.gather.default})
_ALLOCATES = frozenset({aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
                        aten.new_empty.default, aten.new_empty_strided.default})
_FILLS = frozenset({aten.bernoulli_.float, aten.bernoulli_.Tensor, aten.fill_.Scalar, aten.fill_.Tensor,
                    aten.zero_.default, aten.uniform_.default, aten.normal_.default, aten.random_.default,
                    getattr(aten.random_, "from"), aten.random_.to, aten.exponential_.default})

# NOTE [ Ops with a rate of their own ]
# Some kernels move their bytes far slower than a copy: on one CPU thread, max_pool2d (NCHW, with
# indices) ran at 1/20-1/35 of the copy bandwidth over what it reads and writes, training-mode
# batch_norm at 1/4-1/5 (a pass for the mean, one for the variance, one to normalize), attention's
# _safe_softmax at 1/3 of _softmax (benchmarks/results/2026-12-01/estimator.md). Priced at the
# bandwidth, the first two were estimated at 0.04 and 0.25 of their measured times, and plans
# recomputed them as if free. The bytes of these ops are priced at a rate measured per kind by the
# calibration (`fxckpt.calibrate`), each kind on a probe of its own; the other kernels at the bandwidth.
RATED_OPS = {
    aten.native_batch_norm.default: "batch_norm",
    aten._native_batch_norm_legit.default: "batch_norm",
    aten._native_batch_norm_legit_functional.default: "batch_norm",
    aten._native_batch_norm_legit.no_stats: "batch_norm",
    aten.native_group_norm.default: "group_norm",
    aten.native_layer_norm.default: "layer_norm",
    aten.max_pool2d_with_indices.default: "max_pool2d",
    aten._softmax.default: "softmax",
    aten._log_softmax.default: "softmax",
    aten._safe_softmax.default: "safe_softmax",  # attention's: a softmax, then rows of -inf found and zeroed
}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def op_traffic(func, args, kwargs, outputs: list[torch.Tensor]) -> tuple[int, int]:
    """(bytes read, bytes written) of one run of the ATen op `func` that returned `outputs`
    (NOTE [ Bytes an op moves ]).

    Example:
        >>> x = torch.ones(4, 8)
        >>> op_traffic(aten.add.Tensor, (x, x), {}, [x + x])
        (256, 128)
        >>> op_traffic(aten.empty_like.default, (x,), {}, [torch.empty_like(x)])
        (0, 0)
    """
    if func in _ALLOCATES:
        return 0, 0
    written = sum(_nbytes(t) for t in outputs)
    sizes = [_nbytes(t) for t in tensor_leaves((args[1:] if func in _FILLS else args, kwargs))]
    if func in _GATHERS and sizes:
        sizes[0] = min(sizes[0], written)
    return sum(sizes), written


def storage_key(t: torch.Tensor) -> int:
    """Identifies a tensor's storage: views and in-place results share their base's key (the
    StorageImpl's address, what StorageWeakRef(...).cdata is, without making a weak ref)."""
    return t.untyped_storage()._cdata


def memory_owners(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors whose storages hold `t`'s memory: `t` itself, or for a sparse COO tensor (an
    embedding's ``sparse=True`` gradient, which has no storage) its indices and values."""
    return (t._indices(), t._values()) if t.layout == torch.sparse_coo else (t,)


def tensor_leaves(tree) -> list[torch.Tensor]:
    """The tensors of a pytree, each as its `memory_owners`."""
    return [o for t in tensors_of(tree) for o in memory_owners(t)]


# NOTE [ Tensors of an op's arguments ]
# Every op of a fake step has its arguments or outputs walked for tensors, several times (the
# dry run's meter, annotation's recorder and backward trace, `op_scratch`), and pytree's general
# walk (a registry lookup and a namedtuple check per node, a generator per level) cost more than
# the work done with what it found. An op's (args, kwargs) and outputs are tuples, lists and
# dicts of tensors and constants: `tensors_of` walks exactly those types itself, in pytree's
# order, and leaves any other tree (torch.Size, a namedtuple, a registered class, a SymInt) to
# pytree, so it returns what pytree's leaves give in every case.
_CONSTANTS = frozenset((type(None), bool, int, float, complex, str, torch.dtype, torch.device, torch.layout,
                        torch.memory_format))


def tensors_of(tree) -> list[torch.Tensor]:
    """The tensors among `tree`'s pytree leaves, in their order (NOTE [ Tensors of an op's arguments ]).

    Example:
        >>> x = torch.ones(2)
        >>> [t is x for t in tensors_of(((x, 1.0), {"out": [x, None]}))]
        [True, True]
    """
    found = plain_tensors(tree)
    return found if found is not None else [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def plain_tensors(tree) -> list[torch.Tensor] | None:
    """The tensors of a tree of tuples, lists, dicts, tensors and constants, in pytree's order;
    None where it has a part of another type (NOTE [ Tensors of an op's arguments ])."""
    found: list[torch.Tensor] = []
    return found if _walk(tree, found) else None


def _walk(tree, found: list) -> bool:
    """Append the tensors of a tree of tuples, lists, dicts, tensors and constants to `found`;
    False at the first part of another type."""
    kind = type(tree)
    if kind is tuple or kind is list:
        for x in tree:
            if not _walk(x, found):
                return False
        return True
    if kind is dict:
        for x in tree.values():
            if not _walk(x, found):
                return False
        return True
    if kind in _CONSTANTS:
        return True
    if isinstance(tree, torch.Tensor) and kind not in pytree.SUPPORTED_NODES:
        found.append(tree)
        return True
    return False


def real_like(t: torch.Tensor) -> torch.Tensor:
    """A real tensor of `t`'s shape, strides, dtype and device with ordinary values (random
    normal, or 0/1), to run a kernel once on the shapes of a fake `t`."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    # Filled through its whole storage: a stride-0 (expanded) tensor cannot be written as itself.
    storage = torch.empty(0, dtype=t.dtype, device=t.device).set_(out.untyped_storage())
    # complex too: random_ refuses it, and the probes of complex kernels (FFTs) came back empty
    storage.normal_() if out.is_floating_point() or out.is_complex() else storage.random_(0, 2)
    return out
