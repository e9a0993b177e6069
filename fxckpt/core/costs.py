"""`NodeCost`: the one record annotate writes to `node.meta["fxckpt"]`; torch-free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeCost:
    """What one fx node costs in a training step, measured on fake tensors.

    Buffers are named "<node>:<k>" after the node that allocates them; the problem builder
    resolves names to indices.
    """

    flops: int  # forward cost (FlopCounterMode; else one per output element; 0 for views)
    requires_grad: bool = False
    creates: tuple[tuple[str, int], ...] = ()  # (buffer, bytes) it allocates; "<node>:saved" = saved internals
    value: tuple[str, ...] = ()  # activation buffers its output refers to
    saves: tuple[str, ...] = ()  # activation buffers its backward holds
    extra_saved_bytes: int = 0  # saved internals (dropout masks, attention weights, statistics)
    transient_bytes: int = 0  # temporaries live only while its forward runs
    unhooked_saved_bytes: int = 0  # saved without saved-tensor hooks (wrapped Python numbers): held whatever the plan
    bwd_rank: int = -1  # position of its backward in the backward pass (-1: none)
    bwd_transient_bytes: int = 0  # peak of what its backward allocates, over the level it starts at
    bwd_unpack_bytes: int = 0  # what its backward has allocated, over that level, when it first unpacks a saved tensor
    bwd_replay_transient_bytes: int = 0  # bwd_transient_bytes with what it saved held to its backward's end (a replay)
    grads: tuple[tuple[str | None, int], ...] = ()  # (node in whose backward it dies, bytes) left by its backward
    is_random: bool = False
    recipe_bytes: int = 0  # RNG-state bytes a recipe of it keeps in the step's device memory until replayed
    writes: tuple[str, ...] = ()  # activation buffers it modifies in place
    reads: tuple[tuple[str, str], ...] = ()  # (input, the node that wrote it in place since): replays read the writer
    mutates: str | None = None  # what it modifies in place, e.g. "buffer bn1.running_mean"
    ban: str | None = None  # why it must not be recomputed
    ops: int = 0  # ATen ops its forward runs, views excluded (each pays a dispatch)
    bytes_read: int = 0  # tensor bytes those ops read (inputs of each op; views excluded)
    bytes_written: int = 0  # tensor bytes those ops write (their outputs)
    random_elements: int = 0  # elements its random ops draw (dropout masks, attention dropout)
    rated_bytes: tuple[tuple[str, int], ...] = ()  # (kind, bytes) of those moved by ops with a rate of their own
