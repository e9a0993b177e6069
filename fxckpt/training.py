"""Training loops that combine activation checkpointing with gradient accumulation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .core.blocks import even_segments
from .manual import CheckpointedSequential, SelectiveCheckpoint, block_stack
from .measure import LiveBytesMode

__all__ = ["AccumulationResult", "memory_efficient_gradient_accumulation"]


@dataclass(frozen=True)
class AccumulationResult:
    """What `memory_efficient_gradient_accumulation` did.

    Attributes:
        losses: per optimizer step, the sum of its micro-batches' losses divided by
            ``accumulation_steps`` (the mean loss of a full step).
        micro_losses: every micro-batch's loss, undivided.
        peak_bytes: the measured peak over the whole loop: on CUDA the allocator's
            (``max_memory_allocated`` minus what was allocated before), elsewhere the live tensor
            storages created during the loop (`fxckpt.measure.LiveBytesMode`), gradients and
            optimizer state allocated in the loop included.
        model: the checkpointed model that ran (it shares the original's parameters).
    """

    losses: tuple[float, ...]
    micro_losses: tuple[float, ...]
    peak_bytes: int
    model: nn.Module

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


def _checkpointed(model: nn.Module, segments: int, budget_mb, example) -> nn.Module:
    if budget_mb is not None:
        from .api import auto_checkpoint

        return auto_checkpoint(model, example, budget_mb)
    if isinstance(model, nn.Sequential):
        return CheckpointedSequential(*model, checkpoint_segments=min(segments, len(model)))
    found = block_stack(model)
    if found is None or not len(found[1]):
        raise ValueError(f"checkpoint_segments: {type(model).__name__} has no nn.Sequential or nn.ModuleList of "
                         f"blocks to split into segments; pass budget_mb= to plan it with auto_checkpoint instead")
    n = len(found[1])
    k = min(segments, n)
    # Every block of the first k-1 of k segments is checkpointed, as CheckpointedSequential does
    # with whole segments (per block: backward rebuilds one block at a time).
    head = even_segments(n, k)[-1][0]  # where the last segment starts
    return SelectiveCheckpoint(model, list(range(head))) if head else model


def memory_efficient_gradient_accumulation(model: nn.Module, data_loader: Iterable, loss_fn: Callable,
                                           optimizer: torch.optim.Optimizer, accumulation_steps: int = 4,
                                           checkpoint_segments: int = 2, budget_mb: float | None = None,
                                           ) -> AccumulationResult:
    """Train over ``data_loader`` with gradient accumulation and activation checkpointing.

    Each ``(inputs, targets)`` micro-batch runs ``loss = loss_fn(model(inputs), targets)`` and
    ``(loss / accumulation_steps).backward()``; every ``accumulation_steps`` micro-batches (and
    after a last, shorter group) the optimizer steps and the gradients are zeroed
    (``set_to_none``). So the parameters end equal to plain gradient accumulation on the
    unmodified model: checkpointing recomputes the same values (dropout replayed, BatchNorm
    statistics updated once).

    The model is checkpointed first: with ``budget_mb``, planned by `fxckpt.auto_checkpoint` on
    the first micro-batch's inputs (micro-batches of another shape are planned on first sight);
    otherwise split into ``checkpoint_segments`` segments: an ``nn.Sequential`` through
    `fxckpt.CheckpointedSequential`, another model by checkpointing each block of the first
    ``checkpoint_segments - 1`` segments of its largest ``nn.Sequential`` / ``nn.ModuleList``
    (`fxckpt.SelectiveCheckpoint`). ``checkpoint_segments=1`` checkpoints nothing.

    Args:
        model: the module to train (its parameters are the optimizer's).
        data_loader: any iterable of ``(inputs, targets)``; ``inputs`` a tensor, a tuple of
            positional arguments or a dict of keyword arguments.
        loss_fn: ``loss_fn(outputs, targets)`` -> a scalar tensor.
        optimizer: steps once per ``accumulation_steps`` micro-batches.
        accumulation_steps: micro-batches per optimizer step (>= 1).
        checkpoint_segments: segments to split the model into (>= 1), without a budget.
        budget_mb: plan under this activation budget in MiB instead.

    Returns:
        An `AccumulationResult`: per-step losses, per-micro-batch losses, the measured peak.

    Raises:
        ValueError: ``accumulation_steps`` or ``checkpoint_segments`` below 1, an empty
            ``data_loader``, or a model with no blocks to segment.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> data = [(torch.randn(4, 8), torch.randn(4, 1)) for _ in range(8)]
        >>> result = memory_efficient_gradient_accumulation(
        ...     model, data, torch.nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> len(result.losses), len(result.micro_losses)
        (2, 8)
    """
    for name, value in (("accumulation_steps", accumulation_steps), ("checkpoint_segments", checkpoint_segments)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    from .passes.capture import split_input

    batches = iter(data_loader)
    first = next(batches, None)
    if first is None:
        raise ValueError("data_loader yielded no (inputs, targets) micro-batch")
    ckpt = _checkpointed(model, checkpoint_segments, budget_mb, first[0])
    ckpt.train()
    device = next((p.device for p in model.parameters() if p.device.type == "cuda"), None)
    if device is not None:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        meter = contextlib.nullcontext()
    else:
        meter = LiveBytesMode()

    losses, micro, pending = [], [], 0
    optimizer.zero_grad(set_to_none=True)
    with meter:
        for inputs, targets in _chain(first, batches):
            args, kwargs = split_input(inputs)
            loss = loss_fn(ckpt(*args, **kwargs), targets)
            (loss / accumulation_steps).backward()
            micro.append(loss.item())
            pending += 1
            if pending == accumulation_steps:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(sum(micro[-pending:]) / accumulation_steps)
                pending = 0
        if pending:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(sum(micro[-pending:]) / accumulation_steps)
    if device is not None:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = meter.peak_bytes
    return AccumulationResult(tuple(losses), tuple(micro), int(peak), ckpt)


def _chain(first, rest):
    yield first
    yield from rest
