"""Layer-level checkpointing of a model's repeated blocks, for the eager baselines: the library's
`fxckpt.manual.find_blocks` names the blocks, `probe_block_calls` sees in which order the forward
calls them and which calls chain (each on the previous one's output), `sqrt_segments` groups
chained calls, and `SegmentCheckpoint` checkpoints each group as one unit."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..manual import checkpoint
from ..passes.capture import call_with
from ..wrap import ModelWrapper

__all__ = ["SegmentCheckpoint", "SegmentError", "probe_block_calls", "sqrt_segments"]


class SegmentError(RuntimeError):
    """A checkpointed segment's blocks were not called back to back on each other's outputs."""


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
            call_with(model, example)
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

