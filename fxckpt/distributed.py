"""fxckpt under FSDP2 (`torch.distributed.fsdp.fully_shard`): what composes and what does not.

NOTE [ FSDP2 and a captured graph ]
FSDP2 all-gathers a sharded module's parameters in that module's forward pre-hook and frees them
in its post-hook. A captured graph inlines every submodule's forward, so the hooks of a
`fully_shard`-ed *submodule* (a transformer block) never run inside it and the graph would meet
sharded DTensor parameters. What works:
- `fully_shard` on the module fxckpt plans as a whole: the `CheckpointedModule`, or the model
  before `auto_checkpoint`. `CheckpointedModule` runs its graph inside the model's own `__call__`,
  so the hooks run around it; planning all-gathers the parameters for its duration.
- Per-block sharding: `auto_checkpoint` each block, put the `CheckpointedModule` in the block's
  place, then `fully_shard` each of them and the root (the root's own forward stays eager).
Anything else raises `ShardingError` saying which order to use.
"""

from __future__ import annotations

import contextlib

import torch

from .core.errors import ShardingError


def _fsdp_module_type():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FSDPModule
    return FSDPModule


def check_no_sharded_submodules(model: torch.nn.Module) -> None:
    """Raise `ShardingError` if `fully_shard` was applied to a submodule of `model` (whose forward
    a captured graph inlines, so its all-gather would never run)."""
    fsdp = _fsdp_module_type()
    if fsdp is None:
        return
    inner = [name for name, m in model.named_modules() if name and isinstance(m, fsdp)]
    if inner:
        shown = ", ".join(inner[:4]) + (" ..." if len(inner) > 4 else "")
        raise ShardingError(
            f"fully_shard was applied to submodules of {type(model).__name__} ({shown}); fxckpt's "
            "graph inlines their forward, so FSDP would never all-gather their parameters. Either "
            "fully_shard only the module you checkpoint (fully_shard(fxckpt.auto_checkpoint(model, x)) "
            "or auto_checkpoint(fully_shard(model), x)), or for per-block sharding auto_checkpoint "
            "each block, put the result in the block's place, then fully_shard those and the root."
        )


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """Full parameters while planning a `fully_shard`-ed model (an all-gather: every rank must plan);
    nothing to do for a plain model, or inside a forward where FSDP already gathered them."""
    fsdp = _fsdp_module_type()
    if fsdp is None or not isinstance(model, fsdp):
        yield
        return
    from torch.distributed.tensor import DTensor
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def call_with_forward(model: torch.nn.Module, forward, args: tuple, kwargs: dict):
    """`model(*args, **kwargs)` running `forward` in place of `model.forward`, so that the model's
    own hooks (FSDP2's all-gather and free, a user's hooks) run around the checkpointed graph."""
    previous = model.__dict__.get("forward")
    model.__dict__["forward"] = forward  # an instance attribute shadows the class's method
    try:
        return model(*args, **kwargs)
    finally:
        if previous is None:
            del model.__dict__["forward"]
        else:
            model.__dict__["forward"] = previous
