"""fake step: a model's state and inputs as fake tensors, to run a training step with no compute."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from itertools import chain

import torch
import torch.fx
from torch._subclasses import FakeTensor, FakeTensorMode
from torch._subclasses import fake_tensor as _fake_tensor
from torch.nn.utils import stateless
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from .backward_paths import PlainBackwards, needs_plain_backwards
from .capture import flat_inputs
from .ops import DEVICE_QUERY, real_like, storage_key, tensors_of
from .runtime import uncached_casts

aten = torch.ops.aten

# NOTE [ Outputs fake kernels undersize ]
# The CPU LSTM (oneDNN: aten.mkldnn_rnn_layer) returns a workspace that its backward saves, of a
# size oneDNN decides (389,120 bytes for 24 steps of batch 8, 32 -> 32 features); its fake kernel
# returns an empty one. A fake step missed it: the zoo's rnn measured 0.552 MiB at a floor planned
# at 0.375 MiB. Inside a fake step such an op runs once per signature on real tensors of its
# arguments' shapes, in the grad mode in force (the kernel returns its workspace only with grad
# enabled; the tensors require no grad), and the fake outputs get the real kernel's shapes and
# dtypes: annotation charges the node what autograd really saves, the dry run holds it as the
# real step does. Values are not involved: the real step runs the real kernel.
# A fake kernel's dtypes can be wrong too, where operands mix floating dtypes (NOTE [ Fake
# dtypes of mixed-type kernels ]): such ops are run for real as well.
_ALWAYS_REAL = frozenset((aten.mkldnn_rnn_layer.default,)) if hasattr(aten, "mkldnn_rnn_layer") else frozenset()
# The CPU EmbeddingBag allocates offset2bag one element longer than it returns (8 B a fake step
# missed, held through backward: an EmbeddingBag net 8 B over its budget at the allocator): such
# ops run for real, on integer operands of zeros (their first offset must be 0), and their fake
# outputs get the real storages' sizes.
_LARGER_STORAGE = frozenset((aten._embedding_bag.default,))
# NOTE [ Fake strides of batch norm ]
# On a strided input the CPU batch norm (and its backward, and weight norm) return contiguous
# tensors where the fake kernels keep the input's strides. A BatchNorm1d run on a transposed
# activation, transposed back, fed a Linear a contiguous tensor in a fake step and a strided one
# in the real step, whose matmul then copied it and saved the copy: 16,384 B held through
# backward that no plan charged (an FFT token mixer measured 240,904 B over a 224,520 B budget).
# These ops run for real once per signature when an operand is not contiguous, and their fake
# outputs take the real strides.
_STRIDED_OUTPUTS = frozenset((
    aten.native_batch_norm.default, aten.native_batch_norm_backward.default, aten._native_batch_norm_legit.default,
    aten._native_batch_norm_legit.no_stats, aten._native_batch_norm_legit_no_training.default,
    aten._native_batch_norm_legit_functional.default, aten._weight_norm_interface.default))
_OUTPUTS: dict[str, list] = {}  # signature -> the real kernel's outputs: (shape, stride, dtype, storage bytes), or None

# NOTE [ Fake dtypes of mixed-type kernels ]
# Under bf16 autocast on CPU a norm runs on a bf16 activation with fp32 weights (autocast leaves
# layer and group norm alone), and the CPU kernels' "mixed type" path returns the mean and rstd in
# fp32, the weights' dtype; torch's fake kernels (torch._refs) return them in the input's dtype.
# Autograd saves both for backward: a ConvNeXt-like net (8x16x16x16 activations) held 8,192 B
# per statistic where the fake step counted 4,096, 26,624 B more at its peak (a depthwise conv's
# backward) than the plan: predicted 3,667,808 B, allocator 3,694,272 B, budget 3,678,147 B. The
# group norm's backward errs the other way (its fake gradient fp32, the real one bf16). So an
# aten op returning tensors of its own (no view, no in-place op: `_strided_kind`) that is not
# pointwise (TensorIterator's dtypes, which fake kernels compute alike) and whose floating
# operands have more than one dtype is run once per signature on real tensors, and its fake
# outputs take the real ones' shapes, strides and dtypes; the norms' backward then sees the
# fp32 statistics the real step passes it (and its scratch is probed on them: the real kernel
# refuses bf16 ones, and refused the probe). A real kernel that refuses the run leaves the fake
# outputs as they are.
# Ops whose operands share one dtype keep their fake kernels' answer.


def _real_kind(func) -> int:
    """1: always run for real (`_ALWAYS_REAL`), 2: run for real when its floating operands mix
    dtypes (NOTE [ Fake dtypes of mixed-type kernels ]), 3: on integer operands of zeros
    (`_LARGER_STORAGE`), 4: when they mix dtypes or one is strided (NOTE [ Fake strides of batch
    norm ]), 0: never."""
    if func in _ALWAYS_REAL:
        return 1
    if func in _LARGER_STORAGE:
        return 3
    if func in _STRIDED_OUTPUTS:
        return 4
    return 2 if torch.Tag.pointwise not in func.tags and _strided_kind(func) else 0


def _mixed_floating(tensors: list) -> bool:
    return len({t.dtype for t in tensors if t.is_floating_point() and t.numel() > 1}) > 1


def _index_off_cpu(tensors: list) -> bool:
    """Whether an integer operand lies off the CPU: the probe's 0/1 indices may be out of range
    for the step's op, and there that is a device-side assert, no catchable error."""
    return any(t.device.type != "cpu" and not (t.is_floating_point() or t.is_complex()) for t in tensors)


# NOTE [ Observers inside the fake mode ]
# A dispatch mode pushed above the fake mode is one more Python layer on every op it sees, device
# queries included (5,652 of the 8,952 ops of GPT-2 small's dry run, each passed through a mode
# that books nothing for them): the dry run's meter and the backward trace of annotation cost
# that much on top of their own work. So `FakeStep.observe(fn)` has the fake mode itself call
# ``fn(func, args, kwargs, out)`` after each op it runs at the top (what a mode above it would
# see: not the ops of its own decompositions, nor those its handlers run, nor device queries),
# with the same outputs, in the same order; `LiveBytesMode.book` and `_BackwardTrace.book` are
# the bodies of those modes' dispatch.


# NOTE [ Device queries in a fake step ]
# Autograd asks every fake tensor it handles for its device (prim.device: 12,280 of the 18,963
# ops of GPT-2 small's annotation and dry run), and each query comes to the fake mode's
# dispatch, which answers it with torch's own handler after a debug-logging prologue (a
# `no_dispatch()` context per call) and `_run`'s checks. The fake mode calls that handler first:
# the same device, for ~60 ms less per planning there (annotation + dry run, 1.11 -> 1.04 CPU s).
_DEVICE_HANDLER = getattr(_fake_tensor, "_DISPATCH_META_HANDLERS", {}).get(DEVICE_QUERY)


class _FakeMode(FakeTensorMode):
    """A FakeTensorMode whose outputs of the ops in NOTE [ Outputs fake kernels undersize ] have
    the shapes and dtypes the real kernel gives them, and which calls `observer` after each op it
    runs at the top (NOTE [ Observers inside the fake mode ]). It is the fake mode itself rather
    than a dispatch mode above it: a mode of its own put one more Python layer on every op of
    every fake step (about 10% of annotation's and the dry run's time on GPT-2 small) to look for
    a few ops."""

    observer: Callable | None = None
    _depth = 0  # ops of this mode running: nested ones are its own decompositions

    def dispatch(self, func, types, args=(), kwargs=None):
        if func is DEVICE_QUERY and _DEVICE_HANDLER is not None:  # NOTE [ Device queries in a fake step ]
            return _DEVICE_HANDLER(args)
        kwargs = kwargs or {}
        observer = self.observer
        if observer is None or self._depth:
            return self._run(func, types, args, kwargs)
        self._depth += 1
        try:
            out = self._run(func, types, args, kwargs)
            observer(func, args, kwargs, out)  # its own ops (a sparse tensor's indices) unobserved
        finally:
            self._depth -= 1
        return out

    def _run(self, func, types, args, kwargs):
        out = super().dispatch(func, types, args, kwargs)
        kind = _REAL_KINDS.get(id(func))
        if kind is None:
            kind = _REAL_KINDS[id(func)] = _real_kind(func)
        if kind == 0:
            return out
        if kind == 2:
            tensors = tensors_of((args, kwargs))
            if not _mixed_floating(tensors) or _index_off_cpu(tensors):
                return out
        if kind == 3 and _index_off_cpu(tensors_of((args, kwargs))):
            return out
        if kind == 4:
            tensors = tensors_of((args, kwargs))
            if all(t.numel() <= 1 or t.is_contiguous() for t in tensors) and not _mixed_floating(tensors):
                return out
        real = real_outputs(func, args, kwargs, strict=kind == 1, ints=0 if kind == 3 else None)
        if real is None:
            return out
        flat, spec = pytree.tree_flatten(out)
        return pytree.tree_unflatten(like_real(flat, real), spec)


def like_real(flat: list, real: list) -> list:
    """The fake output leaves `flat`, each made again where the real kernel's (`real_outputs`)
    differs in shape, stride, dtype or storage size; the others are the same objects."""
    return [o if r is None or not isinstance(o, torch.Tensor) or (
            (tuple(o.shape), o.stride(), o.dtype) == r[:3] and o.untyped_storage().nbytes() >= r[3])
            else _fake_output(o, r) for o, r in zip(flat, real)]


def _fake_output(o: torch.Tensor, real: tuple) -> torch.Tensor:
    """A fake tensor like the real kernel's output `real` (shape, stride, dtype, storage bytes),
    made next to the fake output `o`: in a storage as large as the real one."""
    shape, stride, dtype, nbytes = real
    t = o.new_empty_strided(shape, stride, dtype=dtype)
    if t.untyped_storage().nbytes() < nbytes:
        whole = o.new_empty((nbytes // dtype.itemsize,), dtype=dtype)
        t = o.new_empty((0,), dtype=dtype).set_(whole.untyped_storage(), 0, shape, stride)
    return t


_REAL_KINDS: dict[int, int] = {}  # id(op) -> `_real_kind` (by id: see `_KINDS`)


def _signature(func, grad: bool, args: tuple, kwargs: dict) -> str:
    return repr((func, grad, pytree.tree_map_only(torch.Tensor, lambda t: (t.shape, t.stride(), t.dtype, t.device),
                                                  (args, kwargs))))


@contextlib.contextmanager
def _real_args(args: tuple, kwargs: dict, grad: bool, ints: int | None = None):
    """Real tensors shaped like the (fake) arguments, for a probe. The caller's RNG streams are
    left as they were: the values are drawn from them, and a probed kernel may draw too (without
    this, planning a transformer moved the user's dropout masks). No dispatch mode sees the probe:
    annotation's FLOP counter counted each probed run as the node's (a probed addmm: 3x its FLOPs
    in the first planning of a model, 1x once the probe was cached, and the plans differed)."""
    devices = sorted({t.device.index or 0 for t in pytree.tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor) and t.device.type == "cuda"})
    with _disable_current_modes(), torch.set_grad_enabled(grad), torch.random.fork_rng(devices=devices):
        real = real_like if ints is None else (lambda t: real_like(t) if t.is_floating_point() or t.is_complex()
                                                else torch.full(t.shape, ints, dtype=t.dtype, device=t.device))
        yield pytree.tree_map_only(torch.Tensor, real, (args, kwargs))  # not requiring grad


def real_outputs(func, args: tuple, kwargs: dict, strict: bool = True, ints: int | None = None) -> list | None:
    """(shape, stride, dtype, storage bytes) of each output leaf of `func` run once on real tensors shaped like
    (fake) `args`, per signature and grad mode (kernels read it: the LSTM returns no workspace
    under no_grad); None for a leaf that is no tensor. Not `strict`: None where the real kernel
    refuses the arguments (NOTE [ Fake dtypes of mixed-type kernels ])."""
    grad = torch.is_grad_enabled()
    key = _signature(func, grad, args, kwargs)
    if key not in _OUTPUTS:
        try:
            with _real_args(args, kwargs, grad, ints) as (a, kw):
                _OUTPUTS[key] = [(tuple(o.shape), o.stride(), o.dtype, o.untyped_storage().nbytes())
                                 if isinstance(o, torch.Tensor) else None
                                 for o in pytree.tree_leaves(func(*a, **kw))]
        except (RuntimeError, IndexError):
            if strict:
                raise
            _OUTPUTS[key] = None
    return _OUTPUTS[key]


# NOTE [ Op scratch the fake values do not show ]
# Some kernels allocate temporaries beyond their outputs while they run, which no fake kernel shows
# and no live-storage count sees, but the allocator does (its peak is the promise users check):
# oneDNN convolutions and their backward (U-Net 64x64: up to 13.5 MiB at once), nearest upsampling,
# the CPU flash attention and its backward, the norms' backward, the CPU dropout backward. Found by
# probing every op signature of a real step of the test zoo and the benchmark zoo
# (benchmarks/allocator.py). Each op in SCRATCH_OPS runs once per signature on real tensors of its
# arguments' shapes, under the profiler's allocator events, after one untimed run (oneDNN builds
# and caches its primitive on the first); the peak beyond its outputs is its scratch, which
# annotation, the dry run and the compile path charge where the op runs. Other ops are charged
# their outputs only (their scratch measured at most a few bytes: wrapped scalars).
SCRATCH_OPS = frozenset(getattr(aten, name).default for name in (
    "convolution", "convolution_backward", "native_batch_norm_backward", "native_group_norm",
    "native_group_norm_backward", "native_layer_norm_backward", "upsample_nearest2d", "upsample_nearest2d_backward",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_safe_softmax", "cumsum", "native_dropout", "native_dropout_backward",
    # EmbeddingBag's CPU backward sorts and counts the indices of its bags (an EmbeddingBag net at
    # budget 1.0: 28,848 B at the allocator for 27,304 B planned); `max` mode's forward too
    "_embedding_bag", "_embedding_bag_backward", "_embedding_bag_dense_backward",
    "_embedding_bag_per_sample_weights_backward",
    # the CPU FFTs (pocketfft) copy their input: a real-to-complex rfft over the token dimension
    # of a 4x32x32 activation took 16,384 B beyond its output (an FFT token mixer 16,384 B over
    # its plan at budget 1.0)
    "_fft_r2c", "_fft_c2r", "_fft_c2c",
    # the matrix exponential's Pade terms and squarings (torch.nn.utils.parametrizations.orthogonal,
    # forward and backward): 786,456 B beyond a 128x128 fp32 result; a 64x64 orthogonal Linear's
    # step measured 958,752 B at the allocator for 188,680 B planned; the Householder product
    # (the orthogonal map of non-square weights) 8,196 B beyond a 64x32 result
    "linalg_matrix_exp", "linalg_householder_product",
    # selection and decompositions copy their input (kthvalue over 64 features: 10,232 B more at
    # the allocator than planned, budget 1.0), LAPACK takes workspaces
    "kthvalue", "mode", "_unique2", "unique_dim", "_cdist_forward", "linalg_qr", "_linalg_eigh", "_linalg_svd",
    "linalg_inv_ex", "linalg_eig", "cholesky_solve", "im2col") if hasattr(aten, name)) | frozenset(
    (aten.median.dim, aten.nanmedian.dim, aten.median.default, aten.nanmedian.default))
# `native_dropout` is not in eager CPU steps (`F.dropout` there multiplies by a noise tensor it
# keeps), but AOTAutograd's graphs call it, and its CPU kernel draws the noise into a float
# temporary of the input's size before the bool mask: an SDPA net with attention dropout at its
# aot_eager floor measured 393,216 B against a 385,676 B budget, the 65,536 B noise of a
# 4x4x32x32 attention its forward peak (unseen-model check).
# EmbeddingBag's integer operands are ones in the probe, not 0/1: max mode's backward works on the bags
# that are not empty, and half of 0/1 bag sizes are (its scratch 1,960 B where the step's is
# 3,136 B: an EmbeddingBag(mode="max") net 1,544 B over its budget at the allocator). The
# forward's are zeros (`_LARGER_STORAGE`): random 0/1 offsets fail its check that the first is 0
# half of the time, and the probe said 0 B where mean mode takes 392 B.
_PROBED_ON_ONES = frozenset(getattr(aten, name).default for name in (
    "_embedding_bag_backward", "_embedding_bag_dense_backward",
    "_embedding_bag_per_sample_weights_backward") if hasattr(aten, name))
# Matrix products copy an operand BLAS cannot read in place (a zero stride: the expanded gradient
# of a sum loss; a slice with a gap) into a contiguous temporary: the tied LM's head gradient
# (16x64x64, fp32) took 262,144 B beyond its outputs, twice. Probed for such operands, and in
# reduced precision (see NOTE [ Scratch under autocast ]).
MATMUL_OPS = frozenset((aten.mm.default, aten.addmm.default, aten.bmm.default))
# NOTE [ Inductor's fallbacks are probed ]
# Under inductor the ops above are mostly fused into generated kernels; what runs as an eager
# kernel is an inductor fallback, and a fallback may allocate beyond its outputs where no survey
# of eager steps looked: the pooling CNN of tests/test_compile.py on a channels-last input, its
# `_adaptive_avg_pool2d_backward` held a second 262,144 B buffer beside its 262,144 B output (the
# allocator 2,398,476 B at the floor plan, inductor's code read as 2,159,628 B). So the code walk
# (`fxckpt.compile.inductor_memory`) probes every aten op it finds run as a fallback, once per
# signature and strides; the eager paths keep to the surveyed ops (and strided operands: NOTE
# [ Kernels that copy strided operands ]), which keeps their probes few.
_MAYBE_PROBED = SCRATCH_OPS | MATMUL_OPS
_SCRATCH: dict[str, int] = {}  # signature -> scratch bytes
# id(op) -> 1: in _MAYBE_PROBED, 2: pointwise, 3: strided (NOTE [ Kernels that copy strided
# operands ]), 0: never probed. By id: an OpOverload's __hash__ is a Python call, and every op of
# a fake step asks (ops live as long as the process).
_KINDS: dict[int, int] = {}

# NOTE [ Kernels that copy strided operands ]
# Many CPU kernels outside TensorIterator read their input as contiguous memory and copy an
# operand that is not (`expect_contiguous`): layer norm, softmax, roll, each a temporary of the
# operand's size beyond its outputs (65,536 B for a 2x16x16x32 view of a permuted
# convolution output). None of them is in SCRATCH_OPS, nor was it charged. A Swin-like
# net (patch embedding permuted to B, H, W, C: every block's residual stream is a strided
# tensor) recomputes a layer norm in backward at budget 0.5 under aot_eager, and its copy was the
# whole gap: predicted 2,799,720 B, allocator 2,848,360 B, budget 2,810,612 B. So an aten op
# that returns a tensor of its own (no view, no in-place op; pointwise ops are TensorIterator's,
# strided reads without copies) is probed when a tensor operand of more than one element is not
# contiguous; with contiguous operands it keeps the survey's answer.


def _strided_kind(func) -> int:
    """3 where `func` may copy a strided operand (NOTE [ Kernels that copy strided operands ]), else 0."""
    schema = getattr(func, "_schema", None)
    if getattr(func, "namespace", None) != "aten" or schema is None:
        return 0
    returns = [r for r in schema.returns if isinstance(r.type, torch.TensorType)]
    return 3 if returns and all(r.alias_info is None for r in schema.returns) else 0

# NOTE [ Scratch under autocast ]
# Under bf16 autocast on CPU two more kinds of op allocate beyond their outputs, which the fp32
# survey above never met. (1) Matrix products in bf16 or fp16 (oneDNN's reduced-precision GEMM
# packs its operands): a hand-written net's backward mm of a (256x384)^T-by-(384x64) bf16
# product took 304,896 B beyond its 32,768 B output, its forward addmm up to 59,008 B; its plan
# at budget 0.5 predicted 1,922,568 B and the allocator measured 2,064,136 B. (2) Elementwise
# ops on operands of different floating dtypes (the fp32 residual plus a bf16 branch): on CPU
# TensorIterator copies each operand not in the result's dtype into a temporary of it (98,304 B
# for a 8x48x64 add), where a GPU kernel casts as it reads. Both are probed, per signature.
_REDUCED = frozenset((torch.bfloat16, torch.float16))


# NOTE [ Kernels that cast their operands ]
# Beyond floating mixes (NOTE [ Scratch under autocast ]), CPU TensorIterator copies a bool or
# integer operand into the common dtype before an elementwise op (a float gradient times a bool
# mask: a float copy of the mask), and a sum of a bool tensor accumulates a 64-bit copy of it.
# amax's backward does both (`grad / mask.sum(dim) * mask`): 65,536 B and 32,768 B beyond their
# outputs for a 16x8x64 mask, and a net reducing with amax measured 127,240 B at the allocator
# for 98,568 B planned. So an elementwise op whose operands (of more than one element) differ in
# dtype, and any other op with a bool operand, is probed too.
def _probed(func, tensors: list, kind: int) -> bool:
    """Whether `func` (of `_KINDS` `kind`) may allocate scratch on these operands (NOTEs above)."""
    if kind == 3:
        return any(t.numel() > 1 and (not t.is_contiguous() or t.dtype is torch.bool) for t in tensors)
    if func in SCRATCH_OPS:
        return True
    if func in MATMUL_OPS:
        return any(t.dtype in _REDUCED for t in tensors) or not all(
            t.dim() < 2 or t.numel() <= 1 or t.is_contiguous() or transposed_contiguous(t) for t in tensors)
    return len({t.dtype for t in tensors if t.numel() > 1}) > 1


def transposed_contiguous(t: torch.Tensor) -> bool:
    """``t.transpose(-1, -2).is_contiguous()``, read off `t`'s sizes and strides: the view is a
    fake op of its own on a fake `t` (every matrix product of a fake step asked, twice per
    operand in annotation and the dry run). The rule is c10's `_compute_contiguous`.

    Example:
        >>> transposed_contiguous(torch.randn(3, 4).t()), transposed_contiguous(torch.randn(3, 4))
        (True, False)
    """
    if t.numel() == 0:
        return True
    shape, stride = list(t.shape), list(t.stride())
    shape[-2:], stride[-2:] = shape[:-3:-1], stride[:-3:-1]
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride)):
        if size != 1:
            if step != expected:
                return False
            expected *= size
    return True


def op_scratch(func, args: tuple, kwargs: dict, fallback: bool = False) -> int:
    """Bytes `func` allocates beyond its outputs while it runs on real tensors shaped like (fake)
    `args`, per signature (NOTE [ Op scratch the fake values do not show ]); 0 for ops not in
    `SCRATCH_OPS` (nor a matrix product with an operand it must copy) and for symbolic shapes.
    With `fallback` (an eager kernel that inductor's code calls), every other aten op is probed
    too (NOTE [ Inductor's fallbacks are probed ]).

    Example:
        >>> x, w = torch.randn(2, 8, 32, 32), torch.randn(16, 8, 3, 3)
        >>> op_scratch(aten.convolution.default, (x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1), {}) >= 0
        True
    """
    # Every op of a fake step asks: most are answered before flattening their arguments, and
    # pointwise ops, probed only for mixed dtypes (NOTE [ Scratch under autocast ]), with fewer
    # than two tensors among them.
    kind = _KINDS.get(id(func))
    if kind is None:
        kind = _KINDS[id(func)] = 1 if func in _MAYBE_PROBED else 2 if torch.Tag.pointwise in func.tags else (
            _strided_kind(func))
    always = fallback and kind in (0, 3) and func.namespace == "aten"  # NOTE [ Inductor's fallbacks are probed ]
    if kind == 0 and not always:
        return 0
    tensors = tensors_of((args, kwargs))
    if kind == 2 and len(tensors) < 2:
        return 0
    if (always or kind == 3) and _index_off_cpu(tensors):
        return 0
    if (not always and not _probed(func, tensors, kind)) or any(isinstance(x, torch.SymInt) for t in tensors for x in t.shape):
        return 0
    key = _signature(func, False, args, kwargs)
    if key not in _SCRATCH:
        from fxckpt.measure import profiled_memory  # the allocator's view, as users measure

        try:
            ints = 1 if func in _PROBED_ON_ONES else 0 if func in _LARGER_STORAGE else None
            with _real_args(args, kwargs, False, ints) as (a, kw):
                func(*a, **kw)
                probed = profiled_memory(lambda: func(*a, **kw))
        except (RuntimeError, IndexError):
            # A fake kernel's dtypes can differ from the real one's (the compile path's graphs,
            # made by torch's fake kernels: NOTE [ Fake dtypes of mixed-type kernels ]), and the
            # real kernel refuses them; the probe's values are not the step's (an index out of
            # range): no probe.
            _SCRATCH[key] = 0
            return 0
        # An in-place op's output is its input, allocated before the probe: not in its peak (a
        # bf16 `y += x` of an fp32 `x` copies both operands to fp32: 768 B, charged 576 B).
        before = {storage_key(t) for t in tensors_of((a, kw))}
        outputs = {storage_key(t): t.untyped_storage().nbytes() for t in pytree.tree_leaves(probed.result)
                   if isinstance(t, torch.Tensor) and storage_key(t) not in before}
        _SCRATCH[key] = max(0, probed.peak_bytes - sum(outputs.values()))
    return _SCRATCH[key]


class FakeStep:
    """The model's state and inputs as fake tensors: same shapes, dtypes, devices, requires_grad.

    Inside the context, `gm`'s parameters and buffers are the fakes; `flat` are the graph's
    placeholder values; `external` names the storages that exist before the step.
    """

    def __init__(self, gm: torch.fx.GraphModule, args: tuple, kwargs: dict):
        self.gm, self.mode = gm, _FakeMode(allow_non_fake_inputs=False)
        self.fakes: dict[int, torch.Tensor] = {}
        self.external: dict[int, str] = {}
        self.state = {name: self.fake(t, name) for name, t in chain(gm.named_parameters(remove_duplicate=False),
                                                                    gm.named_buffers(remove_duplicate=False))}
        for node in gm.graph.nodes:  # constants lifted by torch.export live as plain attributes
            if node.op == "get_attr" and node.target not in self.state:
                value = getattr(gm, node.target, None)
                if isinstance(value, torch.Tensor):
                    self.state[node.target] = self.fake(value, node.target)
        self.args, self.kwargs = pytree.tree_map(lambda v: self.fake(v, "input"), (args, kwargs))
        self.flat = flat_inputs(gm, self.args, self.kwargs)
        self._stack = contextlib.ExitStack()

    def fake(self, t, name):
        if not isinstance(t, torch.Tensor):
            return t
        if id(t) not in self.fakes:
            self.fakes[id(t)] = self.mode.from_tensor(t)
            self.external[storage_key(self.fakes[id(t)])] = name
        return self.fakes[id(t)]

    def loss(self, loss_fn):
        """`loss_fn` made callable on the fake output. A user's loss closes over real tensors
        (the targets): each is faked as it is used, as a tensor that exists before the step."""
        def run(output):
            with _FakeRealArgs(self):
                return loss_fn(output)
        return run

    def leaves(self) -> list[torch.Tensor]:
        """Fakes whose gradient a step accumulates: allocate their .grad first, as a real step has."""
        leaves = [t for t in self.fakes.values() if t.requires_grad and t.is_leaf]
        with torch.no_grad():
            for t in leaves:
                t.grad = torch.empty_like(t)  # fake: no values to zero (zeros_like is two fake ops)
        return leaves

    @contextlib.contextmanager
    def observe(self, observer: Callable):
        """Within the block, ``observer(func, args, kwargs, out)`` after each op the step runs, as a
        dispatch mode above the fake mode would see it (NOTE [ Observers inside the fake mode ])."""
        if self.mode.observer is not None:
            raise RuntimeError("a fake step takes one observer at a time")
        self.mode.observer = observer
        try:
            yield
        finally:
            self.mode.observer = None

    def __enter__(self):
        self._stack.enter_context(self.mode)
        self._stack.enter_context(uncached_casts())  # as the runtime runs the step
        if needs_plain_backwards(self.gm):  # NOTE [ Backward formulas that branch on tensor subclasses ]
            self._stack.enter_context(PlainBackwards())
        self._stack.enter_context(stateless._reparametrize_module(self.gm, self.state, tie_weights=True, strict=False))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


class _FakeRealArgs(TorchDispatchMode):
    """Replaces the real tensors an op receives with the step's fakes of them (made on first use,
    counted as external: the loss's targets exist before the step)."""

    def __init__(self, step: FakeStep):
        super().__init__()
        self.step = step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        fake = lambda t: t if isinstance(t, FakeTensor) else self.step.fake(t, "loss input")  # noqa: E731
        args, kwargs = pytree.tree_map_only(torch.Tensor, fake, (args, kwargs or {}))
        return func(*args, **kwargs)


def repeated_casts(gm: torch.fx.GraphModule, args: tuple, kwargs: dict) -> dict[str, int]:
    """Leaves that require grad (parameters, inputs) that one forward of `gm`, run as the
    runtime runs it (without autocast's cast cache), casts to a lower precision more than once:
    {name: number of casts}.

    NOTE [ Casts autocast's cache would share ]
    Eager autocast caches the low-precision copy of a leaf that requires grad, so a weight read
    twice (a Linear applied twice, a GRU's hidden weights at every time step) is cast once and
    its two gradients are summed in low precision before the cast's backward. fxckpt's steps run
    without the cache (NOTE [ Autocast's cast cache ] in runtime.py): each read has its own cast
    and the gradients are summed in float32, so they differ from eager's by rounding (a GRU
    under CPU bf16: hidden biases' gradients off by 16.6 of 2,720). Found here so the plan can
    say so.
    """
    casts: Counter[int] = Counter()

    def book(func, a, kw, out):
        x = a[0] if a else None
        if (func is torch.ops.aten._to_copy.default and isinstance(x, torch.Tensor) and x.is_leaf
                and x.requires_grad and isinstance(out, torch.Tensor) and out.dtype != x.dtype):
            casts[id(x)] += 1

    with FakeStep(gm, args, kwargs) as step, step.observe(book):
        gm(*step.args, **step.kwargs)
    names = {id(t): name for name, t in step.state.items()}
    return {names.get(key, "an input"): n for key, n in casts.items() if n > 1}
