"""Compare activation-checkpointing strategies on one model, measured the same way for each.

`compare_strategies` runs one training step (forward + backward of the model's loss, see
`fxckpt.measure.step_loss`) of a model under each strategy and reports, per strategy, the
measured activation peak, the FLOPs and wall time it adds over no checkpointing, its planning or
compile time, and the largest gradient difference from no checkpointing.

Strategies (the names are the table's):

* ``"none"``: the model as built.
* ``"hf per-layer"``: the model's own per-layer checkpointing: Hugging Face
  ``activation_checkpointing_enable()`` (or ``gradient_checkpointing_enable()`` on older
  transformers) where ``model.supports_gradient_checkpointing``; diffusers
  ``enable_gradient_checkpointing()`` where ``model._supports_gradient_checkpointing``; else
  status ``"not supported"``.
* ``"sqrt segments"``, ``"every-2"``, ``"every-3"``: layer-level checkpointing of the model's
  repeated blocks (`find_blocks`). With ``n`` blocks numbered in registration order:

  - ``every-k`` checkpoints each block ``i`` with ``i % k == 0`` on its own (blocks 0, k, 2k,
    ...), through `fxckpt.manual.SelectiveCheckpoint`: a checkpointed block keeps only its
    inputs and recomputes its insides in backward.
  - ``sqrt segments`` groups the blocks, in the order the forward calls them, into segments of
    ``round(sqrt(n))`` consecutive blocks and checkpoints every segment but the last as one
    unit (`SegmentCheckpoint`): a segment keeps only its first block's inputs and backward
    recomputes the whole segment (Chen et al. 2016; torch's ``checkpoint_sequential``). A
    segment only spans blocks that the model calls back to back, each on the previous one's
    output and with the same other arguments (checked in a probe forward and again at run
    time); elsewhere segments end early.

* ``"compile budget 0.5"``, ``"compile budget 0.1"``: ``torch.compile`` (inductor) with
  ``torch._functorch.config.activation_memory_budget`` set to that value, so the min-cut
  partitioner recomputes in backward until the saved activations fit that fraction. The
  compile time is reported separately (first step minus a normal step); a failure is recorded
  with its exception class name as the status.
* ``"fxckpt N%"`` (``N`` from ``budgets``): `fxckpt.auto_checkpoint` at that fraction of the
  un-checkpointed activation peak; ``"fxckpt min"``: at the smallest feasible budget (a plan at
  a tiny budget raises `InfeasibleBudgetError` naming it); ``"fxckpt @ X"``: at strategy X's
  measured peak, for an equal-memory comparison with X (``"fxckpt @ *"``: every measured X).

How it is measured (the same for every strategy of a model):

* Activation peak: ``torch.profiler`` with ``profile_memory=True`` records every allocation
  and free of the CPU allocator during one step, including the buffers that inductor-compiled
  code allocates; the peak is the largest running sum of those events. Parameters, inputs and
  gradients are excluded as in `fxckpt.measure.measure_step`: every ``.grad`` exists (zeroed)
  before the step. `fxckpt.measure.LiveBytesMode` (a dispatch mode) cannot be used on
  compiled modules: Dynamo runs the original eager code while a dispatch mode is active, so
  it would measure the uncompiled model. It is still run on the eager rows named in
  ``live_check`` as a cross-check; the profiler additionally sees memory an op allocates
  only internally.
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one step for eager strategies
  (recomputation included); for compiled strategies (where the mode would again run eager
  code) the same counting rules applied to the forward and backward graphs that inductor
  compiles, added up each time a compiled graph runs. Both count the CPU flash-attention
  kernels too (`EXTRA_FLOP_RULES`), which ``FlopCounterMode`` alone skips.
* Wall time: median of ``iterations`` steps after a warm-up, with no profiler or mode. Each timed
  step is followed by a timed step of "none" (on a copy kept for the whole comparison), and the
  overhead is relative to the median of those: on a shared machine, load from other processes
  then hits both sides alike.
* A check of the profiler (on "none" and the compiled rows, `forward_memory_check`): after a
  forward, the bytes still allocated must equal the storages saved for backward plus the outputs.
* Gradients: one step with ``torch.manual_seed(seed)`` per strategy, compared with "none"'s.

Every strategy gets a deep copy of one freshly built model (one seed) and the same inputs; the
caller's RNG state is restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import logging
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .core.errors import MIB, InfeasibleBudgetError
from .wrap import ModelWrapper

__all__ = [
    "DEFAULT_BUDGETS", "EXTRA_FLOP_RULES", "STRATEGIES", "ZERO_GRADS", "ZOO", "ProfiledMemory", "SegmentCheckpoint",
    "SegmentError", "ZooModel", "compare_strategies", "find_blocks", "forward_memory_check", "print_comparison_table",
    "profiled_memory", "profiled_peak_bytes", "to_markdown",
]

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.5, 0.25)
BASE_STRATEGIES = ("none", "hf per-layer", "sqrt segments", "every-2", "every-3",
                   "compile budget 0.5", "compile budget 0.1")
ANCHOR_ALL = "fxckpt @ *"
STRATEGIES = BASE_STRATEGIES + tuple(f"fxckpt {round(100 * b)}%" for b in DEFAULT_BUDGETS) + ("fxckpt min", ANCHOR_ALL)
ZERO_GRADS = "zero grads"  # status of a measured row whose step leaves some gradients all-zero, wrongly
_TINY_FRACTION = 1e-4  # a budget no plan reaches: its InfeasibleBudgetError names the smallest feasible one


class SkipStrategy(Exception):
    """A strategy that does not apply to this model; its message is the row's status."""


class SegmentError(RuntimeError):
    """A checkpointed segment's blocks were not called back to back on each other's outputs."""


# ---------------------------------------------------------------- the zoo


@dataclass(frozen=True)
class ZooModel:
    """A benchmark model: ``build()`` returns ``(model, example_input)``, seeded, in train mode."""

    build: Callable[[], tuple[nn.Module, Any]]
    description: str
    threads: int | None = None  # torch threads while it runs (None: leave as is)


class _QuickBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.drop = nn.Dropout(0.1)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(self.drop(nn.functional.gelu(self.up(self.norm(x)))))


class QuickNet(nn.Module):
    """A tiny residual MLP stack (6 blocks with dropout) with a cross-entropy loss."""

    def __init__(self, d: int = 64, blocks: int = 6, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.blocks = nn.ModuleList(_QuickBlock(d) for _ in range(blocks))
        self.head = nn.Linear(d, classes)

    def forward(self, x, labels):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return nn.functional.cross_entropy(self.head(h).flatten(0, -2), labels.flatten())


def _quick():
    torch.manual_seed(0)
    model = QuickNet().train()
    return model, {"x": torch.randn(16, 32, 64), "labels": torch.randint(0, 10, (16, 32))}


def _gpt2_small():
    from .demo import gpt2

    model, example = gpt2(12, 768, 12, 2, 256, 50257)
    return model, {**example, "use_cache": False}


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=8, hidden_size=512, intermediate_size=1376, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=32000, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (2, 256))
    return model, {"input_ids": ids, "labels": ids, "use_cache": False}


def _resnet50():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig()).train()
    return model, {"pixel_values": torch.randn(4, 3, 224, 224), "labels": torch.randint(0, model.config.num_labels, (4,))}


def _unet():
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise SkipStrategy("diffusers not installed") from e
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=64, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(64, 128, 256, 256),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ).train()
    return model, {"sample": torch.randn(2, 3, 64, 64), "timestep": torch.tensor([10, 500])}


ZOO: dict[str, ZooModel] = {
    # One thread: its ops are tiny, and on a shared machine two threads stall on OpenMP barriers.
    "quick": ZooModel(_quick, "QuickNet: 6 residual MLP blocks (d=64, dropout 0.1), batch 16 x 32 tokens, "
                      "cross-entropy; 1 thread", threads=1),
    "gpt2-small": ZooModel(_gpt2_small, "GPT-2 small (transformers, random weights): 12 layers, 768 hidden, 12 heads, "
                           "vocab 50257, batch 2 x seq 256, labels, use_cache=False"),
    "llama": ZooModel(_llama, "Llama (transformers LlamaConfig, random weights): 8 layers, hidden 512, intermediate 1376, "
                      "8 heads, vocab 32000, batch 2 x seq 256, labels, use_cache=False"),
    "resnet50": ZooModel(_resnet50, "ResNet-50 (transformers ResNetConfig defaults, ResNetForImageClassification, "
                         "2 labels), input 4x3x224x224, labels"),
    "unet": ZooModel(_unet, "diffusers UNet2DModel, channels (64, 128, 256, 256), 2 resnets per block, attention at "
                     "16x16, input 2x3x64x64 with timesteps [10, 500], loss = sum of the output"),
}


# ---------------------------------------------------------------- FLOPs


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _extra_flop_rules() -> dict:
    aten = torch.ops.aten
    rules = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        rules[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        rules[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    return rules


# The CPU flash-attention kernels (what F.scaled_dot_product_attention runs on the CPU): FlopCounterMode
# has rules for the CUDA attention kernels only, so without these attention would count nothing.
EXTRA_FLOP_RULES = _extra_flop_rules()


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_RULES)


def graph_flops(gm: torch.fx.GraphModule) -> int:
    """FLOPs of one run of an aten-level graph, by FlopCounterMode's rules, from node metadata."""
    from torch.utils.flop_counter import flop_registry, shape_wrapper

    rules = {**flop_registry, **{k: shape_wrapper(v) for k, v in EXTRA_FLOP_RULES.items()}}
    total = 0
    for node in gm.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None) if node.op == "call_function" else None
        if packet not in rules:
            continue
        args, kwargs = pytree.tree_map_only(torch.fx.Node, lambda n: n.meta.get("val"), (node.args, node.kwargs))
        total += int(rules[packet](*args, **kwargs, out_val=node.meta.get("val")))
    return total


class CountingInductor:
    """A torch.compile backend: inductor (``compile_fx``), plus a tally of the FLOPs that the
    compiled forward and backward graphs execute (`graph_flops` of a graph, each time it runs)."""

    def __init__(self):
        self.flops = 0
        self.calls = 0
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, inner_compile=self._inner_compile)

    def _inner_compile(self, gm, example_inputs, **kwargs):
        from torch._inductor.compile_fx import compile_fx_inner

        flops = graph_flops(gm)
        self.graphs += 1
        compiled = compile_fx_inner(gm, example_inputs, **kwargs)
        # The compiled graph is called by AOTAutograd, which checks its type: count in a subclass.
        base, tally = type(compiled), self

        class _Counted(base):
            def __call__(self, inputs):
                tally.flops += flops
                tally.calls += 1
                return base.__call__(self, inputs)

        compiled.__class__ = _Counted
        return compiled


# ---------------------------------------------------------------- memory


@dataclass(frozen=True)
class ProfiledMemory:
    """What `profiled_memory` saw."""

    result: Any  # what the function returned
    peak_bytes: int  # largest allocated-and-not-freed total, above what was allocated before
    end_bytes: int  # still allocated at the end
    peak_op: str | None  # the outermost aten op running when the peak was reached (None: between ops)


def profiled_memory(fn: Callable[[], Any]) -> ProfiledMemory:
    """Run ``fn()`` under ``torch.profiler`` memory profiling and read the memory events (every
    allocation and free of the CPU allocator: eager ops, inductor buffers and op-internal scratch
    alike) in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        result = fn()
    events = prof.profiler.kineto_results.events()
    memory = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())  # stable sort
    current = peak = 0
    peak_ns = None
    for e in memory:
        current += e.nbytes()
        if current > peak:
            peak, peak_ns = current, e.start_ns()
    return ProfiledMemory(result, peak, current, _op_at(events, peak_ns))


def _op_at(events, ns: int | None) -> str | None:
    """The outermost aten op whose interval contains the time ``ns`` (the op a model called; the
    allocation itself may be in an op it calls, e.g. ``aten::empty``)."""
    if ns is None:
        return None
    running = [e for e in events if e.name().startswith("aten::") and e.start_ns() <= ns <= e.start_ns() + e.duration_ns()]
    return min(running, key=lambda e: e.start_ns()).name() if running else None


def profiled_peak_bytes(fn: Callable[[], Any]) -> int:
    """The peak of CPU-allocator bytes allocated and not yet freed while ``fn()`` runs, above
    what was allocated before (see `profiled_memory`)."""
    return profiled_memory(fn).peak_bytes


def _storage_key(t: torch.Tensor):
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return s.data_ptr(), s.nbytes()


def forward_memory_check(module: Callable, example, preexisting: Iterable[torch.Tensor]) -> tuple[int, int]:
    """A check of the profiler on any module, compiled or not: ``(bytes the profiler sees still
    allocated after the forward, bytes of the distinct new storages autograd saved for backward
    plus the forward's outputs)``. They are equal when the profiler sees every allocation and
    free the forward makes (inductor-compiled code included), since what a forward leaves behind
    is exactly what backward needs and what it returns. Runs one forward and its backward."""
    from .measure import step_loss

    old = {k[0] for k in map(_storage_key, preexisting) if k}
    new: dict[int, int] = {}

    def note(t):
        key = _storage_key(t) if isinstance(t, torch.Tensor) else None
        if key and key[0] not in old and key[0]:
            new[key[0]] = key[1]

    def pack(t):
        note(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        profiled = profiled_memory(lambda: _call(module, example))
    output, live_end = profiled.result, profiled.end_bytes
    for leaf in pytree.tree_leaves(output if not hasattr(output, "to_tuple") else output.to_tuple()):
        note(leaf)
    step_loss(output).backward()
    return live_end, sum(new.values())


# ---------------------------------------------------------------- blocks and segments


def find_blocks(model: nn.Module, min_blocks: int = 6) -> list[str]:
    """The dotted names of the model's repeated blocks, in registration order.

    Candidates are the modules with parameters held directly in an ``nn.ModuleList`` or
    ``nn.Sequential``, grouped by class. The block class is, among the classes with at least
    ``min_blocks`` such members, the outermost one (no member inside a member of another such
    class), the one with most members if several are; with no such class, the class with most
    members. GPT-2: ``transformer.h.*``; Llama: ``model.layers.*``; ResNet-50: the 16 bottleneck
    layers (not the 4 stages, nor the 48 conv layers inside the bottlenecks); UNet2D: the
    ``ResnetBlock2D`` modules.
    """
    members: dict[type, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        for child_name, child in module.named_children():
            if isinstance(child, (nn.ModuleList, nn.Sequential)) or next(child.parameters(), None) is None:
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
    best = max(pool, key=lambda cls: len(members[cls]))  # max keeps the first of equals
    return members[best]


def _chain_key(args: tuple, kwargs: dict):
    """Where a block's chained input (the previous block's output) is: first positional argument,
    else the first tensor keyword argument."""
    if args:
        return 0
    return next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)


def _get_chained_input(args, kwargs, key):
    return args[0] if key == 0 else kwargs.get(key) if key is not None else None


def _replace_chained(args, kwargs, key, value):
    if key == 0:
        return (value,) + tuple(args[1:]), kwargs
    return args, {**kwargs, key: value}


def _chained_output(out):
    """The tensor a block passes to the next: the output, or its first element."""
    if isinstance(out, torch.Tensor):
        return out
    try:
        first = out[0]
    except (TypeError, IndexError, KeyError):
        return None
    return first if isinstance(first, torch.Tensor) else None


def _other_leaves(args, kwargs, key):
    """Everything a block gets besides its chained input, as a flat list."""
    if key == 0:
        args = args[1:]
    elif key is not None:
        kwargs = {k: v for k, v in kwargs.items() if k != key}
    return pytree.tree_leaves((tuple(args), kwargs))


def _same_leaves(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is y:
            continue
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return False
        try:
            if not bool(x == y):
                return False
        except Exception:  # noqa: BLE001 - objects that cannot be compared are not the same
            return False
    return True


@contextlib.contextmanager
def _patched_forwards(patches: dict[nn.Module, Callable]):
    """Give modules an instance-level ``forward`` while active (so their hooks still run)."""
    saved = {m: (("forward" in vars(m)), vars(m).get("forward")) for m in patches}
    try:
        for m, fwd in patches.items():
            m.forward = fwd
        yield
    finally:
        for m, (had, previous) in saved.items():
            if had:
                m.forward = previous
            else:
                del m.forward


def probe_block_calls(model: nn.Module, blocks: Sequence[str], example) -> list[tuple[str, bool]]:
    """One forward under ``no_grad``: the blocks in call order, each with whether it was called
    on the previous call's output with the same other arguments (chained). Buffers and the RNG
    state are restored afterwards. Raises SegmentError if a block is called more than once."""
    modules = {name: model.get_submodule(name) for name in blocks}
    calls: list[tuple[str, Any, list, Any]] = []  # name, chained input, other leaves, output

    def recorder(name, original):
        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            key = _chain_key(args, kwargs)
            calls.append((name, _get_chained_input(args, kwargs, key), _other_leaves(args, kwargs, key), out))
            return out
        return forward

    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    try:
        with torch.no_grad(), _patched_forwards({m: recorder(n, m.forward) for n, m in modules.items()}):
            _call(model, example)
    finally:
        torch.set_rng_state(rng)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    names = [c[0] for c in calls]
    if len(set(names)) != len(names):
        raise SegmentError("a block is called more than once per forward: segments need one call per block")
    order = []
    for i, (name, chained_in, others, _) in enumerate(calls):
        prev = calls[i - 1] if i else None
        chained = (prev is not None and chained_in is not None and chained_in is _chained_output(prev[3])
                   and _same_leaves(others, prev[2]))
        order.append((name, chained))
    return order


def sqrt_segments(order: Sequence[tuple[str, bool]], n_blocks: int) -> list[list[str]]:
    """Segments of up to ``round(sqrt(n_blocks))`` consecutive chained calls, in call order."""
    size = max(1, round(math.sqrt(n_blocks)))
    segments: list[list[str]] = []
    for name, chained in order:
        if segments and chained and len(segments[-1]) < size:
            segments[-1].append(name)
        else:
            segments.append([name])
    return segments


class SegmentCheckpoint(ModelWrapper):
    """Run ``model`` with each of ``segments`` (lists of block names, called back to back)
    checkpointed as one unit: only the first block's inputs are kept, and backward recomputes
    the whole segment.

    The blocks are called by the model's own forward (typically a loop), so the segment runs
    ahead: when the model calls a segment's first block, that call runs all of the segment's
    blocks under `fxckpt.manual.checkpoint`, each on the previous one's output (the output, or
    its first element, replaces the first positional argument) with the first block's other
    arguments; the model's next calls of the segment's other blocks return their precomputed
    outputs, after checking that each is called on the previous block's output with the same
    other arguments (else `SegmentError`). Hooks of every block run at the model's calls.
    Like `SelectiveCheckpoint` it shares the model's submodules, parameters and buffers, and
    calls the model as is outside training with grad enabled.
    """

    def __init__(self, model: nn.Module, segments: Iterable[Sequence[str]]):
        super().__init__(model)
        self.segments: tuple[tuple[str, ...], ...] = tuple(tuple(s) for s in segments if s)

    def forward(self, *args, **kwargs):
        model = self._model
        if not (model.training and torch.is_grad_enabled()):
            return model(*args, **kwargs)
        pending: dict[nn.Module, tuple] = {}
        patches = {}
        for segment in self.segments:
            blocks = [model.get_submodule(name) for name in segment]
            originals = [b.forward for b in blocks]
            patches[blocks[0]] = functools.partial(_segment_head, blocks, originals, pending)
            for block, name in zip(blocks[1:], segment[1:]):
                patches[block] = functools.partial(_segment_follower, block, name, pending)
        with _patched_forwards(patches):
            out = model(*args, **kwargs)
        if pending:
            raise SegmentError(f"{len(pending)} precomputed block output(s) of a segment were never used")
        return out

    def extra_repr(self) -> str:
        return f"segments={[list(s) for s in self.segments]}"


def _segment_head(blocks, originals, pending, *args, **kwargs):
    from .manual import checkpoint

    key = _chain_key(args, kwargs)

    def run(*a, **k):
        outs = []
        for i, forward in enumerate(originals):
            out = forward(*a, **k)
            outs.append(out)
            if i + 1 < len(originals):
                nxt = _chained_output(out)
                if nxt is None:
                    raise SegmentError(f"{type(blocks[i]).__name__} returned no tensor to pass to the next block")
                a, k = _replace_chained(a, k, key, nxt)
        return tuple(outs)

    outs = checkpoint(run, *args, **kwargs)
    others = _other_leaves(args, kwargs, key)
    for block, prev, out in zip(blocks[1:], outs[:-1], outs[1:]):
        chained = _chained_output(prev)
        pending[block] = (chained, chained._version, others, out)
    return outs[0]


def _segment_follower(block, name, pending, *args, **kwargs):
    entry = pending.pop(block, None)
    key = _chain_key(args, kwargs)
    if entry is None:
        raise SegmentError(f"block {name!r} was called before its segment's first block")
    expected, version, others, out = entry
    got = _get_chained_input(args, kwargs, key)
    if got is not expected or got._version != version or not _same_leaves(_other_leaves(args, kwargs, key), others):
        raise SegmentError(f"block {name!r} was not called on the previous block's output with the same other "
                           f"arguments: it cannot share a checkpointed segment with it")
    return out


# ---------------------------------------------------------------- measuring one strategy


def _call(model, example):
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, (tuple, list)):
        return model(*example)
    return model(example)


@dataclass
class _Prepared:
    """A strategy applied to a fresh model copy."""

    module: Callable  # what a step calls
    inner: nn.Module  # the model copy (parameter names, buffers)
    setup_seconds: float | None = None  # solve seconds (fxckpt); compile seconds are measured
    predicted_bytes: int | None = None
    budget_bytes: int | None = None
    counter: CountingInductor | None = None  # compiled strategies
    context: Callable[[], Any] = contextlib.nullcontext
    notes: list[str] = field(default_factory=list)


@dataclass
class _Measured:
    peak_bytes: int
    flops: int
    seconds: float  # median of the timed steps
    first_seconds: float  # the warm-up step (compiles, for compiled strategies)
    grads: dict[str, torch.Tensor]
    live_bytes: int | None = None
    forward_check: tuple[int, int] | None = None  # see forward_memory_check
    baseline_seconds: float | None = None  # median of the "none" steps timed in between
    times: list[float] = field(default_factory=list)  # the timed steps
    baseline_times: list[float] = field(default_factory=list)  # the "none" step after each
    peak_op: str | None = None  # the aten op running at the profiler's peak


class _Stepper:
    """Training steps of one prepared strategy, each from the same state: every ``.grad``
    allocated (zeroed), the buffers as they were when the stepper was made, and the seed."""

    def __init__(self, prep: _Prepared, example, seed: int):
        self.prep, self.example, self.seed = prep, example, seed
        self.named = [(n, p) for n, p in prep.inner.named_parameters() if p.requires_grad]
        self.buffers = list(prep.inner.buffers())
        self.saved_buffers = [b.detach().clone() for b in self.buffers]
        for _, p in self.named:
            p.grad = torch.zeros_like(p)

    def reset(self) -> None:
        with torch.no_grad():
            for _, p in self.named:
                p.grad.zero_()
            for b, saved in zip(self.buffers, self.saved_buffers):
                b.copy_(saved)
        torch.manual_seed(self.seed)

    def step(self) -> None:
        from .measure import step_loss

        with self.prep.context():
            output = _call(self.prep.module, self.example)
            step_loss(output).backward()

    def timed_step(self) -> float:
        self.reset()
        t0 = time.perf_counter()
        self.step()
        return time.perf_counter() - t0

    def grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad.detach().clone() for n, p in self.named}

    def preexisting(self) -> list[torch.Tensor]:
        """Tensors that exist before a step: parameters, gradients, buffers, inputs."""
        params = [p for _, p in self.prep.inner.named_parameters()]
        grads = [p.grad for _, p in self.named]
        inputs = [t for t in pytree.tree_leaves(self.example) if isinstance(t, torch.Tensor)]
        return params + grads + self.buffers + inputs

    def close(self) -> None:
        with torch.no_grad():
            for b, saved in zip(self.buffers, self.saved_buffers):
                b.copy_(saved)
        for _, p in self.named:
            p.grad = None


def _measure(stepper: _Stepper, *, iterations: int, live: bool, forward_check: bool,
             baseline: _Stepper | None) -> _Measured:
    """A warm-up step that counts FLOPs (compiles, for compiled strategies), a profiled step
    (peak, gradients), optionally a LiveBytesMode step and a `forward_memory_check` step, then
    ``iterations`` timed steps, each followed by a timed step of ``baseline`` (so that both
    medians come from the same stretch of time on a shared machine)."""
    from .measure import LiveBytesMode

    prep = stepper.prep
    stepper.reset()
    t0 = time.perf_counter()
    if prep.counter is not None:
        prep.counter.flops = 0
        stepper.step()
        flops = prep.counter.flops
    else:
        with _flop_counter() as counter:
            stepper.step()
        flops = counter.get_total_flops()
    measured = _Measured(0, int(flops), 0.0, time.perf_counter() - t0, {})
    stepper.reset()
    profiled = profiled_memory(stepper.step)
    measured.peak_bytes, measured.peak_op = profiled.peak_bytes, profiled.peak_op
    measured.grads = stepper.grads()
    if live:
        stepper.reset()
        with LiveBytesMode() as mode:
            stepper.step()
        measured.live_bytes = mode.peak_bytes
    if forward_check:
        stepper.reset()
        with prep.context():
            measured.forward_check = forward_memory_check(prep.module, stepper.example, stepper.preexisting())
    for _ in range(max(1, iterations)):
        measured.times.append(stepper.timed_step())
        if baseline is not None:
            measured.baseline_times.append(baseline.timed_step())
    measured.seconds = statistics.median(measured.times)
    if measured.baseline_times:
        measured.baseline_seconds = statistics.median(measured.baseline_times)
    return measured


# ---------------------------------------------------------------- strategies


def _hf_per_layer(model, example) -> _Prepared:
    if getattr(model, "supports_gradient_checkpointing", False):
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        with _quiet_warnings():
            enable()
        return _Prepared(model, model, notes=[f"{type(model).__name__}.{enable.__name__}()"])
    if getattr(model, "_supports_gradient_checkpointing", False) and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
        return _Prepared(model, model, notes=[f"{type(model).__name__}.enable_gradient_checkpointing()"])
    raise SkipStrategy("not supported")


def _every_k(k: int):
    def apply(model, example) -> _Prepared:
        from .manual import SelectiveCheckpoint

        blocks = find_blocks(model)
        if not blocks:
            raise SkipStrategy("no repeated blocks")
        chosen = blocks[::k]
        return _Prepared(SelectiveCheckpoint(model, checkpoint_layers=chosen), model,
                         notes=[f"{len(chosen)} of {len(blocks)} blocks ({_block_label(blocks)})"])
    return apply


def _sqrt_segments(model, example) -> _Prepared:
    blocks = find_blocks(model)
    if not blocks:
        raise SkipStrategy("no repeated blocks")
    order = probe_block_calls(model, blocks, example)
    segments = sqrt_segments(order, len(blocks))
    checkpointed = segments[:-1]
    sizes = "+".join(str(len(s)) for s in segments)
    return _Prepared(SegmentCheckpoint(model, checkpointed), model,
                     notes=[(f"{len(blocks)} blocks ({_block_label(blocks)}) in segments {sizes}, all but the last "
                             f"checkpointed")])


def _block_label(blocks: Sequence[str]) -> str:
    """``transformer.h.*`` for ``transformer.h.0`` ... ``transformer.h.11``."""
    patterns = list(dict.fromkeys(re.sub(r"\d+", "*", n) for n in blocks))
    return patterns[0] if len(patterns) == 1 else f"{patterns[0]} and {len(patterns) - 1} more pattern(s)"


def _compile(budget: float):
    def apply(model, example) -> _Prepared:
        torch._dynamo.reset()
        counter = CountingInductor()

        def context():
            stack = contextlib.ExitStack()
            # Caches off: a cache hit would skip inner_compile (no FLOP tally) and hide compile time.
            stack.enter_context(torch._functorch.config.patch(activation_memory_budget=budget,
                                                              enable_autograd_cache=False))
            stack.enter_context(torch._inductor.config.patch(fx_graph_cache=False))
            return stack

        return _Prepared(torch.compile(model, backend=counter), model, counter=counter, context=context)
    return apply


def _fxckpt(**spec):
    def apply(model, example) -> _Prepared:
        from .api import auto_checkpoint

        t0 = time.perf_counter()
        ckpt = auto_checkpoint(model, example, **spec)
        return _plan_prepared(model, ckpt, time.perf_counter() - t0)
    return apply


def _fxckpt_min(model, example) -> _Prepared:
    from .api import auto_checkpoint

    t0 = time.perf_counter()
    try:
        ckpt = auto_checkpoint(model, example, budget=_TINY_FRACTION)
    except InfeasibleBudgetError as e:
        ckpt = auto_checkpoint(model, example, budget_mb=e.min_feasible_bytes / MIB)
    prep = _plan_prepared(model, ckpt, time.perf_counter() - t0)
    prep.notes.insert(0, "smallest feasible budget")
    return prep


def _plan_prepared(model, ckpt, plan_seconds: float) -> _Prepared:
    plan = ckpt.plan
    return _Prepared(ckpt, model, setup_seconds=plan.solve_seconds, predicted_bytes=plan.predicted_peak_bytes,
                     budget_bytes=plan.budget_bytes,
                     notes=[(f"budget {plan.budget_bytes / MIB:.1f} MiB; planned in {plan_seconds:.1f} s "
                             f"(capture, annotate, solve, rewrite, dry run)")])


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


_FIXED: dict[str, Callable] = {
    "none": lambda model, example: _Prepared(model, model),
    "hf per-layer": _hf_per_layer,
    "sqrt segments": _sqrt_segments,
    "every-2": _every_k(2),
    "every-3": _every_k(3),
    "compile budget 0.5": _compile(0.5),
    "compile budget 0.1": _compile(0.1),
    "fxckpt min": _fxckpt_min,
}


def _strategy(name: str, rows: dict[str, dict]) -> Callable:
    if name in _FIXED:
        return _FIXED[name]
    m = re.fullmatch(r"compile budget ([0-9.]+)", name)
    if m:
        return _compile(float(m.group(1)))
    m = re.fullmatch(r"every-(\d+)", name)
    if m:
        return _every_k(int(m.group(1)))
    m = re.fullmatch(r"fxckpt ([0-9.]+)%", name)
    if m:
        return _fxckpt(budget=float(m.group(1)) / 100)
    m = re.fullmatch(r"fxckpt @ (.+)", name)
    if m:
        anchor = rows.get(m.group(1))
        if anchor is None or anchor["peak_mib"] is None:
            raise SkipStrategy(f"anchor {m.group(1)!r} not measured")
        return _fxckpt(budget_mb=anchor["peak_mib"])
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}, 'every-K', 'compile budget F', "
                     f"'fxckpt N%', 'fxckpt @ <strategy>'")


def _expand(strategies: Sequence[str] | None, budgets: Sequence[float]) -> tuple[list[str], bool]:
    """The strategies to run (none first) and whether every anchor gets an 'fxckpt @' row."""
    if strategies is None:
        strategies = list(BASE_STRATEGIES) + [f"fxckpt {round(100 * b)}%" for b in budgets] + ["fxckpt min", ANCHOR_ALL]
    names = [s for s in strategies if s != ANCHOR_ALL]
    if "none" in names:
        names.remove("none")
    return ["none"] + names, ANCHOR_ALL in strategies


# ---------------------------------------------------------------- compare


def _row(model_name: str, strategy: str, status: str = "ok", **values) -> dict:
    row = {"model": model_name, "strategy": strategy, "peak_mib": None, "saved_pct": None, "flops": None,
           "flops_overhead_pct": None, "step_seconds": None, "time_overhead_pct": None, "setup_seconds": None,
           "setup_kind": None, "grad_diff": None, "predicted_mib": None, "budget_mib": None, "live_peak_mib": None,
           "forward_check_bytes": None, "none_step_seconds": None, "peak_op": None, "step_times": None,
           "none_step_times": None, "time_range_pct": None,
           "status": status, "notes": ""}
    row.update(values)
    return row


def _max_grad_diff(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference of any gradient element from the reference's."""
    return max(_grad_diffs(grads, reference), default=(0.0, 0.0))[0]


def _max_relative_grad_diff(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """The largest of (largest absolute difference / largest absolute reference value) per parameter."""
    return max((rel for _, rel in _grad_diffs(grads, reference)), default=0.0)


def _zeroed_grads(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> list[str]:
    """Parameters whose gradient is all zeros although the reference's is not."""
    return [n for n, g in reference.items() if n in grads and bool(g.any()) and not bool(grads[n].any())]


def _grad_diffs(grads, reference):
    for name, g in reference.items():
        if name not in grads:
            yield math.inf, math.inf
            continue
        diff = (grads[name].float() - g.float()).abs().max().item() if g.numel() else 0.0
        scale = g.float().abs().max().item() if g.numel() else 0.0
        yield diff, (diff / scale if scale else (math.inf if diff else 0.0))


def _run_one(name: str, strategy: Callable, base: nn.Module, example, *, model_name: str, iterations: int, seed: int,
             live: bool, reference: _Measured | None, baseline: _Stepper | None) -> tuple[dict, _Measured | None]:
    log.info("%s: %s", model_name, name)
    model = copy.deepcopy(base)
    stepper = None
    try:
        prep = strategy(model, example)
        stepper = _Stepper(prep, example, seed)
        measured = _measure(stepper, iterations=iterations, live=live, baseline=baseline,
                            forward_check=name == "none" or prep.counter is not None)
    except SkipStrategy as e:
        return _row(model_name, name, status=str(e)), None
    except InfeasibleBudgetError as e:
        pinned = f"; held at the peak: {', '.join(e.pinned[:4])}{' ...' if len(e.pinned) > 4 else ''}" if e.pinned else ""
        return _row(model_name, name, status="infeasible", budget_mib=e.budget_bytes / MIB,
                    notes=f"smallest feasible {e.min_feasible_bytes / MIB:.1f} MiB{pinned}"), None
    except Exception as e:  # recorded, never hidden: the status names the exception
        log.warning("%s: %s failed: %s: %s", model_name, name, type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return _row(model_name, name, status=type(e).__name__, notes=first), None
    finally:
        if stepper is not None:
            stepper.close()
        if name.startswith("compile"):
            torch._dynamo.reset()
    return _finish_row(name, model_name, prep, measured, reference, _has_dropout(base)), measured


def _finish_row(name: str, model_name: str, prep: _Prepared, measured: _Measured, reference: _Measured | None,
                dropout: bool) -> dict:
    notes = list(prep.notes)
    row = _row(model_name, name, peak_mib=measured.peak_bytes / MIB, flops=measured.flops,
               step_seconds=measured.seconds, predicted_mib=_mib(prep.predicted_bytes), budget_mib=_mib(prep.budget_bytes),
               live_peak_mib=_mib(measured.live_bytes), forward_check_bytes=measured.forward_check,
               peak_op=measured.peak_op,
               none_step_seconds=measured.baseline_seconds, step_times=measured.times,
               none_step_times=measured.baseline_times or None)
    if prep.counter is not None:
        row["setup_seconds"], row["setup_kind"] = measured.first_seconds - measured.seconds, "compile"
        notes.append(f"{prep.counter.graphs} compiled graphs (forward and backward)")
    elif prep.setup_seconds is not None:
        row["setup_seconds"], row["setup_kind"] = prep.setup_seconds, "solve"
    row["time_range_pct"] = _time_range(measured)
    if reference is None:  # this is "none"
        row.update(saved_pct=0.0, flops_overhead_pct=0.0, time_overhead_pct=0.0, grad_diff=0.0)
    else:
        row["saved_pct"] = 100 * (1 - measured.peak_bytes / reference.peak_bytes)
        row["flops_overhead_pct"] = 100 * (measured.flops / reference.flops - 1) if reference.flops else None
        base_seconds = measured.baseline_seconds or reference.seconds
        row["time_overhead_pct"] = 100 * (measured.seconds / base_seconds - 1)
        row["grad_diff"] = _max_grad_diff(measured.grads, reference.grads)
        if row["grad_diff"] > 0:
            notes.append(f"largest gradient difference relative to that parameter's largest gradient: "
                         f"{_max_relative_grad_diff(measured.grads, reference.grads):.2g}")
        zeroed = _zeroed_grads(measured.grads, reference.grads)
        if zeroed:
            row["status"] = ZERO_GRADS
            notes.insert(0, f"WRONG GRADIENTS: {len(zeroed)} parameter(s) get all-zero gradients where none's are "
                            f"non-zero (e.g. {', '.join(zeroed[:3])})")
        if prep.counter is not None and row["grad_diff"] > 0 and dropout:
            notes.append("dropout: inductor draws its own random numbers, so gradients differ from eager")
    if measured.live_bytes is not None and reference is None:
        agree = 100 * (measured.peak_bytes / measured.live_bytes - 1) if measured.live_bytes else math.nan
        notes.append(f"profiler peak vs LiveBytesMode: {agree:+.2f}%")
    if measured.forward_check is not None:
        live_end, expected = measured.forward_check
        notes.append(f"profiler check: live after forward {live_end / MIB:.1f} MiB vs saved-for-backward + outputs "
                     f"{expected / MIB:.1f} MiB ({100 * (live_end / expected - 1) if expected else math.nan:+.2f}%)")
    row["notes"] = "; ".join(notes)
    return row


def _time_range(measured: _Measured) -> list[float]:
    """The spread of the time overhead, in %: the smallest and largest ratio of a timed step to
    the "none" step timed right after it (for "none" itself: of a step to the median)."""
    if measured.baseline_times:
        ratios = [t / b for t, b in zip(measured.times, measured.baseline_times)]
    else:
        ratios = [t / measured.seconds for t in measured.times]
    return [100 * (min(ratios) - 1), 100 * (max(ratios) - 1)]


def _mib(nbytes):
    return None if nbytes is None else nbytes / MIB


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def compare_strategies(model_or_name: nn.Module | str, example_input: Any = None, *,
                       strategies: Sequence[str] | None = None, iterations: int = 3,
                       budgets: Sequence[float] = DEFAULT_BUDGETS, seed: int = 0,
                       live_check: Sequence[str] = ("none", "fxckpt"), model_name: str | None = None) -> list[dict]:
    """Measure one training step of a model under each checkpointing strategy.

    Args:
        model_or_name: an ``nn.Module`` (then ``example_input`` is required) or a `ZOO` name.
        example_input: a tensor, a tuple of positional arguments or a dict of keyword arguments.
        strategies: names from `STRATEGIES` (also ``"every-K"``, ``"compile budget F"``,
            ``"fxckpt N%"``, ``"fxckpt @ X"``, ``"fxckpt @ *"``); default: all, with the fxckpt
            budgets from ``budgets`` and an ``"fxckpt @ X"`` row for every other measured X.
            ``"none"`` is always measured (first): the other rows are relative to it.
        iterations: timed steps per strategy (after a warm-up); the median is reported.
        budgets: fractions for the default ``"fxckpt N%"`` rows.
        seed: ``torch.manual_seed`` before every step (dropout draws the same numbers).
        live_check: strategies (exact names, or ``"fxckpt"`` for all fxckpt rows) that also get a
            `LiveBytesMode` step (eager only), reported as ``live_peak_mib``.
        model_name: the ``model`` column for a module (default: its class name).

    Returns:
        One dict per strategy, in run order, with keys ``model``, ``strategy``, ``peak_mib``
        (measured), ``saved_pct``, ``flops``, ``flops_overhead_pct``, ``step_seconds``,
        ``time_overhead_pct``, ``setup_seconds`` and ``setup_kind`` (``"solve"``/``"compile"``),
        ``grad_diff`` (largest absolute gradient difference from "none"), ``predicted_mib`` and
        ``budget_mib`` (fxckpt), ``live_peak_mib``, ``peak_op`` (the aten op running at the peak),
        ``step_times`` and ``none_step_times`` (the paired timed steps), ``time_range_pct``
        (smallest and largest paired ratio, in %), ``forward_check_bytes`` (see
        `forward_memory_check`), ``status`` (``"ok"``, ``"zero grads"`` (measured, but
        some parameters' gradients are all zeros where "none"'s are not), ``"not supported"``,
        ``"infeasible"``, an exception class name, ...) and ``notes``.

    Example:
        >>> rows = compare_strategies("quick", strategies=["none", "every-2", "fxckpt 50%"], iterations=1)
        >>> [r["status"] for r in rows]
        ['ok', 'ok', 'ok']
    """
    if isinstance(model_or_name, str):
        entry = ZOO.get(model_or_name)
        if entry is None:
            raise ValueError(f"unknown zoo model {model_or_name!r}; known: {', '.join(ZOO)}")
        if entry.threads is not None and entry.threads != torch.get_num_threads():
            threads = torch.get_num_threads()
            torch.set_num_threads(entry.threads)
            try:
                return compare_strategies(model_or_name, strategies=strategies, iterations=iterations, budgets=budgets,
                                          seed=seed, live_check=live_check, model_name=model_name)
            finally:
                torch.set_num_threads(threads)
        name = model_name or model_or_name
        try:
            base, example = entry.build()
        except SkipStrategy as e:
            return [_row(name, "(all)", status=str(e))]
        except ImportError as e:
            return [_row(name, "(all)", status=f"{e.name or 'dependency'} not installed")]
    else:
        if example_input is None:
            raise ValueError("example_input is required when passing a module")
        base, example, name = model_or_name, example_input, model_name or type(model_or_name).__name__
    if isinstance(example, dict):
        from .passes.capture import training_kwargs

        example = training_kwargs(base, example)  # use_cache=False for every strategy alike
    names, all_anchors = _expand(strategies, budgets)
    rows: dict[str, dict] = {}
    reference = baseline = None
    rng = torch.get_rng_state()
    try:
        queue = list(names)
        while queue:
            strategy_name = queue.pop(0)
            try:
                strategy = _strategy(strategy_name, rows)
            except SkipStrategy as e:
                rows[strategy_name] = _row(name, strategy_name, status=str(e))
                continue
            live = strategy_name in live_check or ("fxckpt" in live_check and strategy_name.startswith("fxckpt"))
            row, measured = _run_one(strategy_name, strategy, base, example, model_name=name, iterations=iterations,
                                     seed=seed, live=live and not strategy_name.startswith("compile"),
                                     reference=reference, baseline=baseline)
            rows[strategy_name] = row
            if strategy_name == "none":
                if measured is None:
                    raise RuntimeError(f"{name}: the 'none' step failed ({row['status']}: {row['notes']})")
                reference = measured
                # "none" is timed again next to every other strategy's timed steps (paired timing).
                baseline = _Stepper(_Prepared(*(2 * [copy.deepcopy(base)])), example, seed)
            gc.collect()
            if not queue and all_anchors:
                all_anchors = False
                queue = [f"fxckpt @ {s}" for s, r in rows.items()
                         if r["peak_mib"] is not None and s != "none" and not s.startswith("fxckpt")
                         and f"fxckpt @ {s}" not in rows]
    finally:
        if baseline is not None:
            baseline.close()
        torch.set_rng_state(rng)
    return list(rows.values())


# ---------------------------------------------------------------- tables

COLUMNS = (
    ("model", "model"), ("strategy", "strategy"), ("peak_mib", "peak MiB"), ("saved_pct", "saved %"),
    ("flops_overhead_pct", "FLOPs +%"), ("time_overhead_pct", "time +% [range]"), ("setup_seconds", "solve/compile s"),
    ("grad_diff", "max |Δgrad|"), ("predicted_mib", "predicted MiB"), ("live_peak_mib", "LiveBytes MiB"),
    ("status", "status"),
)


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key == "grad_diff":
        return "0" if value == 0 else f"{value:.3g}"
    if key in ("saved_pct", "flops_overhead_pct", "time_overhead_pct"):
        return f"{value:+.1f}" if key != "saved_pct" else f"{value:.1f}"
    if key == "setup_seconds":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _cells(row: dict) -> list[str]:
    cells = [_cell(k, row.get(k)) for k, _ in COLUMNS]
    if row.get("setup_kind") == "compile" and row.get("setup_seconds") is not None:
        cells[6] += " (compile)"
    if row.get("time_range_pct") and row.get("time_overhead_pct") is not None:
        lo, hi = row["time_range_pct"]
        cells[5] += f" [{lo:+.0f}, {hi:+.0f}]"
    return cells


def to_markdown(results: Sequence[dict], *, notes: bool = True) -> str:
    """A Markdown table of `compare_strategies` rows, each row's notes listed under it."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in results:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        noted = [r for r in results if r.get("notes")]
        if noted:
            text += "\n" + "\n".join(f"- {r['model']} / {r['strategy']}: {r['notes']}" for r in noted) + "\n"
    return text


def print_comparison_table(results: Sequence[dict]) -> None:
    """Print `compare_strategies` rows as an aligned text table (notes below)."""
    table = [[h for _, h in COLUMNS]] + [_cells(r) for r in results]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j < 2 or j == len(COLUMNS) - 1 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in results:
        if r.get("notes"):
            print(f"  {r['model']} / {r['strategy']}: {r['notes']}")
