"""Backward formulas that take another path on fake tensors than in a real step, run in a fake
step as the real step runs them."""

from __future__ import annotations

import torch
import torch.fx
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes

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
# An input holding an exact zero takes another path in a real step, which the plan does not see.
# NOTE [ Casts autocast makes before a Function ]
# Under autocast an op of its cast lists (prod on CPU, in fp32) gets operands cast by autocast
# before autograd sees the op: the cast is a node of its own and the op saves the cast copy. A
# Function applied to the uncast operand casts inside its forward, unseen by autograd, and saves
# the operand as it came. So under autocast the operand is cast first, to the dtype the op
# computes in there (read off one run on a two-element tensor per device, dtype and autocast
# dtype), and the Function applied to the cast copy. Until then cumprod and prod ran as they are
# under autocast, on the composite path: a bf16 net with a cumprod gate (8x16x64) was predicted
# 290,824 B for 168,968 B at the allocator at budget 1.0 (+72%), one with a prod 295,944 B for
# 195,592 B (+51%); an orthogonal Linear(64, 32) (NOTE [ The Householder product's backward ])
# measured 100,370 B over a 92,050 B plan. A leaf (a parameter) is left as it is: autocast may
# cache its cast.
_CUMPROD = frozenset((torch.cumprod, torch.Tensor.cumprod, aten.cumprod.default))
_PROD = frozenset((torch.prod, torch.Tensor.prod, aten.prod.default, aten.prod.dim_int))
_HOUSEHOLDER = frozenset((torch.linalg.householder_product, torch.orgqr, torch.Tensor.orgqr,
                          aten.linalg_householder_product.default))


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


# NOTE [ The Householder product's backward ]
# `linalg_householder_product`'s backward (the orthogonal parametrization's map for non-square
# weights) writes each column's gradient into zeros of the input's and tau's shapes, allocated
# before its loop over the columns, for plain tensors; for subclasses (a fake step) it collects
# the columns and concatenates them at the end, so the loop's peak (an outer product of K's
# size per column) ran without the input's gradient: a Linear(64, 32) made orthogonal measured
# 76,948 B at the allocator for 68,748 B planned at budget 1.0. In a fake step it runs as
# `_HouseholderProduct`, whose backward is the plain-tensor formula (K updated in place, as
# without create_graph), op for op.
class _HouseholderProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tau):
        out = torch.linalg.householder_product(x, tau)
        ctx.save_for_backward(x, tau, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, tau, result = ctx.saved_tensors
        if x.numel() == 0 or tau.numel() == 0:
            return None, None
        m, k = x.shape[-2], tau.shape[-1]
        v_all = x.tril(-1)
        v_all.diagonal(0, -2, -1).fill_(1.0)
        first = v_all.narrow(-1, 0, k)
        norms = (first * first).sum(-2)  # held to the end, as the C++ local is
        sigma = tau / (tau * norms - 1.0)
        K = result.matmul(grad.mH)
        K = _reflect(m, 0, v_all.narrow(-1, 0, 1), sigma.narrow(-1, 0, 1), K, True)
        x_grad, tau_grad = torch.zeros_like(x), torch.zeros_like(tau)
        for i in range(k):
            v_i, t_i = v_all.narrow(-1, i, 1), tau.narrow(-1, i, 1)
            v = v_i.narrow(-2, i, m - i)
            vHK = v.mH.matmul(K.narrow(-2, i, m - i))
            Kv = K.narrow(-1, i, m - i).matmul(v)
            t = t_i.unsqueeze(-1)
            v_grad = (-t * vHK).squeeze(-2) - (t * Kv).squeeze(-1)
            t_grad = -(vHK.narrow(-1, i, m - i).matmul(v))
            del vHK, Kv
            x_grad.select(-1, i).copy_(v_grad)
            tau_grad.select(-1, i).copy_(t_grad.squeeze(-1).squeeze(-1))
            if i < k - 1:  # v_grad and t_grad live to the iteration's end, as in the C++ loop
                K = _reflect(m, i + 1, v_all.narrow(-1, i + 1, 1), sigma.narrow(-1, i + 1, 1), K, True)
                K = _reflect(m, i, v_i, t_i, K, False)
            del v_grad, t_grad
        x_grad.tril_(-1)
        return x_grad, tau_grad


def _reflect(m: int, i: int, v_full: torch.Tensor, t: torch.Tensor, K: torch.Tensor, left: bool) -> torch.Tensor:
    """K <- (I - t v v^H) K (`left`) or K (I - t v v^H), in place, the first `i` entries of `v` zero."""
    v = v_full.narrow(-2, i, m - i)
    if left:
        u = v.mH.matmul(K.narrow(-2, i, m - i))
        K.narrow(-2, i, m - i).sub_((t.unsqueeze(-1) * v) * u)
    else:
        u = K.narrow(-1, i, m - i).matmul(t.unsqueeze(-1) * v)
        K.narrow(-1, i, m - i).sub_(u * v.mH)
    return K


# NOTE [ Gather's backward ]
# gather's backward scatters the gradient into zeros of the input's shape: in place for plain
# tensors, out of place (the zeros and the scattered copy alive at once) for subclasses. A net
# gathering 8 of 32 tokens was predicted 107,016 B at budget 1.0 for 98,824 B at the allocator;
# an FFT token mixer (bf16, at its floor) 156,680 B for 152,584 B. In a fake step gather runs as
# `_Gather`, whose backward scatters in place (saving what gather saves: its input and the index).
_GATHER = frozenset((torch.gather, torch.Tensor.gather, aten.gather.default))


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, index):
        ctx.save_for_backward(x, index)
        ctx.dim = dim
        return torch.gather(x, dim, index)

    @staticmethod
    def backward(ctx, grad):
        x, index = ctx.saved_tensors
        return grad.new_zeros(x.shape).scatter_add_(ctx.dim, index, grad), None, None


# NOTE [ Value-selecting reductions ]
# max/min over a dim, median, mode, kthvalue, topk, sort, cummax and cummin pass their gradient back
# by scattering it into zeros of the input's shape: in place for plain tensors, out of place (the
# zeros and the scattered copy alive at once) for subclasses and under modes. A net taking the max
# over 64 features was predicted 110,856 B at budget 1.0 for 98,568 B at the allocator (+12.5%),
# topk, sort and cummax +17.6%. Run as `_Select`, their fake backward scatters in place too.
# name -> (positional arguments after the input, defaults, keeps the reduced dim, scatter_add)
_SELECTING = {
    "max": (("dim", "keepdim"), {"keepdim": False}, False, False),
    "min": (("dim", "keepdim"), {"keepdim": False}, False, False),
    "median": (("dim", "keepdim"), {"keepdim": False}, False, False),
    "nanmedian": (("dim", "keepdim"), {"keepdim": False}, False, False),
    "mode": (("dim", "keepdim"), {"dim": -1, "keepdim": False}, False, False),
    "kthvalue": (("k", "dim", "keepdim"), {"dim": -1, "keepdim": False}, False, False),
    "topk": (("k", "dim", "largest", "sorted"), {"dim": -1}, True, False),
    "sort": (("dim", "descending"), {"dim": -1}, True, False),
    "cummax": (("dim",), {}, True, True),
    "cummin": (("dim",), {}, True, True),
}
_SELECTING_FUNCS = {f: name for name in _SELECTING for f in (getattr(torch, name), getattr(torch.Tensor, name))}
_SELECTING_FUNCS.update({getattr(aten, name).default if name not in ("max", "min", "median", "nanmedian") else
                         getattr(aten, name).dim: name for name in _SELECTING})
_SELECTING_FUNCS[aten.sort.stable] = "sort"
# NOTE [ Full value-selecting reductions ]
# max(), min(), median() and nanmedian() over all elements spread their gradient over the
# elements equal to the result (`evenly_distribute_backward`): for plain tensors into zeros
# masked in place, with one bool mask and its count (whose sum accumulates a 64-bit copy of the
# mask); for subclasses (a fake step) as two NaN masks, their `and`, the equality mask and a
# product of the mask and the gradient. A net subtracting the median of a 16x64 activation
# measured 21,784 B at the allocator for 19,737 B planned at budget 1.0 (max() alike). In a
# fake step they run as `_Spread`, whose backward allocates as the plain-tensor path.
_SELECTING_FUNCS.update({getattr(aten, name).default: name for name in ("max", "min", "median", "nanmedian")})


class _Spread(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, func):
        out = func(x)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        out.isnan()  # the real formula's `value.isnan().item()` (x.isnan() is the mask where it holds)
        mask = x == out
        return grad.new_zeros(x.shape).masked_fill_(mask, grad / mask.sum()), None


class _Select(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, func, args, kwargs, name, dim, keepdim, add):
        values, indices = func(x, *args, **kwargs)
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)  # else the indices' absent gradient is made as zeros
        ctx.save_for_backward(indices, *((x,) if add else ()))  # cummax/cummin save their input too
        ctx.dim, ctx.keepdim, ctx.add, ctx.shape = dim, keepdim, add, x.shape
        return values, indices

    @staticmethod
    def backward(ctx, grad, _):
        indices = ctx.saved_tensors[0]
        if grad is None:
            return (None,) * 8
        if not ctx.keepdim and len(ctx.shape):
            grad, indices = grad.unsqueeze(ctx.dim), indices.unsqueeze(ctx.dim)
        grad_in = grad.new_zeros(ctx.shape)
        scatter = grad_in.scatter_add_ if ctx.add else grad_in.scatter_
        return (scatter(ctx.dim, indices, grad),) + (None,) * 7


def _selecting(func, x: torch.Tensor, args: tuple, kwargs: dict):
    """`func`'s values and indices through `_Select` (NOTE [ Value-selecting reductions ]), or
    None where this call is not a value-selecting one (a full reduction, `max(a, b)`)."""
    name = _SELECTING_FUNCS[func]
    if not args and not kwargs and name in ("max", "min", "median", "nanmedian"):  # NOTE [ Full value-selecting reductions ]
        return _Spread.apply(x, func)
    names, defaults, keeps, add = _SELECTING[name]
    bound = dict(defaults, **dict(zip(names, args)), **kwargs)
    if len(args) > len(names) or not set(bound) <= set(names) | {"stable"} or not isinstance(bound.get("dim"), int):
        return None
    dim = bound["dim"] % max(x.dim(), 1)
    values, indices = _Select.apply(x, func, args, kwargs, name, dim, keeps or bool(bound.get("keepdim")), add)
    if isinstance(func, torch._ops.OpOverload):
        return values, indices
    return getattr(torch.return_types, name)((values, indices))


def _differentiable(x, autocast: bool = False) -> bool:
    return (isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()
            and (autocast or not torch.is_autocast_enabled(x.device.type)))


def _plain(func, args: tuple, kwargs: dict):
    """(Function, its arguments) to run `func` as in NOTE [ Backward formulas that branch on
    tensor subclasses ], or None where it runs as it is."""
    x = args[0] if args else None
    autocast = isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)
    if not _differentiable(x, autocast=True) or (autocast and x.is_leaf):
        return None
    rest = dict(zip(("dim", "keepdim"), args[1:]), **kwargs)
    if func in _CUMPROD and set(rest) == {"dim"} and isinstance(rest["dim"], int):
        return _Cumprod, (_autocast_cast(x, "cumprod"), rest["dim"])
    if func in _PROD and set(rest) <= {"dim", "keepdim"} and isinstance(rest.get("dim", 0), int):
        return _Prod, (_autocast_cast(x, "prod"), rest.get("dim"), bool(rest.get("keepdim", False)))
    return None


_AUTOCAST_DTYPES: dict[tuple, torch.dtype] = {}  # (op, device type, dtype, autocast dtype) -> the op's dtype
_AUTOCAST_PROBES = {"cumprod": lambda t: torch.cumprod(t, 0), "prod": lambda t: torch.prod(t, 0),
                    "gather": lambda t: torch.gather(t, 0, torch.zeros(1, dtype=torch.long, device=t.device)),
                    "householder_product": lambda t: torch.linalg.householder_product(t.unsqueeze(-1), t[:1])}


def _autocast_cast(x: torch.Tensor, op: str) -> torch.Tensor:
    """`x` cast as autocast casts it for `op` (NOTE [ Casts autocast makes before a Function ])."""
    if not torch.is_autocast_enabled(x.device.type):
        return x
    kind = x.device.type
    key = (op, kind, x.dtype, torch.get_autocast_dtype(kind))
    dtype = _AUTOCAST_DTYPES.get(key)
    if dtype is None:
        with _disable_current_modes(), torch.no_grad():
            dtype = _AUTOCAST_DTYPES[key] = _AUTOCAST_PROBES[op](torch.ones(2, dtype=x.dtype, device=x.device)).dtype
    return x if dtype == x.dtype else x.to(dtype)


def _gather(args: tuple, kwargs: dict) -> tuple | None:
    """(input, dim, index) of a gather that runs as `_Gather` (NOTE [ Gather's backward ]), else None."""
    bound = dict(zip(("input", "dim", "index", "sparse_grad"), args), **kwargs)
    x, dim, index = bound.get("input"), bound.get("dim"), bound.get("index")
    if (set(bound) - {"input", "dim", "index", "sparse_grad"} or bound.get("sparse_grad") or not isinstance(dim, int)
            or not isinstance(index, torch.Tensor) or not _differentiable(x, autocast=True)
            or (torch.is_autocast_enabled(x.device.type) and (x.is_leaf or _autocast_cast(x, "gather") is not x))):
        return None
    return x, dim, index


def _plain_under_autocast(args: tuple) -> bool:
    """Whether operands `args` can be cast before a Function (NOTE [ Casts autocast makes before a
    Function ]): floating tensors of one dtype, no leaf under autocast (its cast may be cached)."""
    if not all(isinstance(a, torch.Tensor) for a in args) or not torch.is_autocast_enabled(args[0].device.type):
        return all(isinstance(a, torch.Tensor) for a in args)
    return all(isinstance(a, torch.Tensor) and a.is_floating_point() and not a.is_leaf and a.dtype == args[0].dtype
               for a in args)


class PlainBackwards(TorchFunctionMode):
    """Runs the ops of NOTE [ Backward formulas that branch on tensor subclasses ] as a real step's
    backward runs them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in _CUMPROD or func in _PROD) and torch.is_grad_enabled() and len(args) <= 3:
            plain = _plain(func, args, kwargs)
            if plain is not None:
                return plain[0].apply(*plain[1])
        if func in _GATHER and torch.is_grad_enabled():
            plain = _gather(args, kwargs)
            if plain is not None:
                return _Gather.apply(*plain)
        if func in _HOUSEHOLDER and torch.is_grad_enabled() and len(args) == 2 and not kwargs and any(
                _differentiable(a, autocast=True) for a in args) and _plain_under_autocast(args):
            return _HouseholderProduct.apply(*(_autocast_cast(a, "householder_product") for a in args))
        if func in _SELECTING_FUNCS and torch.is_grad_enabled() and args and _differentiable(args[0]):
            out = _selecting(func, args[0], args[1:], kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def needs_plain_backwards(gm: torch.fx.GraphModule) -> bool:
    """Whether `gm` calls an op of NOTE [ Backward formulas that branch on tensor subclasses ] (or
    of NOTE [ The Householder product's backward ], which a leaf module may call)."""
    return any(n.target in _CUMPROD or n.target in _PROD or n.target in _SELECTING_FUNCS
               or n.target in _HOUSEHOLDER or n.target in _GATHER
               or (n.op == "call_method" and n.target in ("cumprod", "prod", "orgqr", "gather", *_SELECTING))
               or (n.op == "call_module" and _orthogonal(gm.get_submodule(n.target))) for n in gm.graph.nodes)


def _orthogonal(module: torch.nn.Module) -> bool:
    from torch.nn.utils.parametrizations import _Orthogonal

    return any(isinstance(m, _Orthogonal) for m in module.modules())
