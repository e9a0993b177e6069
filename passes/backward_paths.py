"""Backward formulas that take another path on fake tensors than in a real step, run in a fake
step as the real step runs them."""

from __future__ import annotations

import torch
import torch.fx
from torch.overrides import TorchFunctionMode

aten = torch.ops.aten

# NOTE [ Backward formulas that branch on tensor subclasses ]
# Some of autograd's formulas take a cheap path only for plain tensors: cumprod's backward is
# `reversed_cumsum(result * grad).div(input)` and prod's `grad * (result / input)` where the
# input holds no zero, but for a tensor subclass or under a dispatch mode (a fake step is both)
# they always take a composite path, which cumsums masks, scatters and cumprods again: a net
# with a cumprod gate (4x32x32) was predicted 215,560 B at budget 1.0 for 139,272 B at the
# allocator, one with a prod over tokens 115,848 B for 55,432 B. In a fake step these ops run as
# Functions whose backward allocates as the plain-tensor path does (and that save what the op
# saves: its input and result), so annotation and the dry run see the real step's allocations.
# An input holding an exact zero takes another path in a real step, which the plan does not see;
# under autocast (whose casts these Functions would not make) the ops run as they are.
_CUMPROD = frozenset((torch.cumprod, torch.Tensor.cumprod, aten.cumprod.default))
_PROD = frozenset((torch.prod, torch.Tensor.prod, aten.prod.default, aten.prod.dim_int))


class _Cumprod(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        out = torch.cumprod(x, dim)
        ctx.save_for_backward(x, out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        dim = ctx.dim
        if x.numel() <= 1 or x.shape[dim] == 1:
            return grad, None
        # Named as the C++ formula holds them: `w` and the zero mask to its end, the temporaries
        # of `reversed_cumsum` (flip, cumsum, flip) to the end of its expression.
        w = out * grad
        is_zero = x == 0
        is_zero.any()
        return _reversed_cumsum(w, dim).div(x), None


def _reversed_cumsum(w: torch.Tensor, dim: int) -> torch.Tensor:
    flipped = w.flip(dim)
    summed = flipped.cumsum(dim)
    return summed.flip(dim)


class _Prod(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, keepdim):
        out = torch.prod(x) if dim is None else torch.prod(x, dim, keepdim)
        ctx.save_for_backward(x, out)
        ctx.dim, ctx.keepdim = dim, keepdim
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        dim = ctx.dim
        if x.dim() == 0:
            return grad, None, None
        if dim is None:
            (x == 0).any()  # the real formula's `(input == 0).nonzero()`
            return grad * (out / x), None, None
        if not ctx.keepdim:
            grad, out = grad.unsqueeze(dim), out.unsqueeze(dim)
        zero_mask = x == 0  # held to the formula's end, with the zeros counted per slice
        slice_zero_count = zero_mask.sum(dim, True)
        slice_zero_count.sum()
        return grad * (out / x), None, None


def _plain(func, args: tuple, kwargs: dict):
    """(Function, its arguments) to run `func` as in NOTE [ Backward formulas that branch on
    tensor subclasses ], or None where it runs as it is."""
    x = args[0] if args else None
    if not (isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()
            and not torch.is_autocast_enabled(x.device.type)):
        return None
    rest = dict(zip(("dim", "keepdim"), args[1:]), **kwargs)
    if func in _CUMPROD and set(rest) == {"dim"} and isinstance(rest["dim"], int):
        return _Cumprod, (x, rest["dim"])
    if func in _PROD and set(rest) <= {"dim", "keepdim"} and isinstance(rest.get("dim", 0), int):
        return _Prod, (x, rest.get("dim"), bool(rest.get("keepdim", False)))
    return None


class PlainBackwards(TorchFunctionMode):
    """Runs the ops of NOTE [ Backward formulas that branch on tensor subclasses ] as a real step's
    backward runs them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in _CUMPROD or func in _PROD) and torch.is_grad_enabled() and len(args) <= 3:
            plain = _plain(func, args, kwargs)
            if plain is not None:
                return plain[0].apply(*plain[1])
        return func(*args, **kwargs)


def needs_plain_backwards(gm: torch.fx.GraphModule) -> bool:
    """Whether `gm` calls an op of NOTE [ Backward formulas that branch on tensor subclasses ]."""
    return any(n.target in _CUMPROD or n.target in _PROD or (n.op == "call_method" and n.target in ("cumprod", "prod"))
               for n in gm.graph.nodes)
