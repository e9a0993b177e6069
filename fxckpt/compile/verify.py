"""`verify=True`: check a compiled graph's gradients once against the same graph run with eager
kernels and nothing recomputed, and fall back to a compile that matches it on a mismatch.

NOTE [ Why verify compiled gradients ]
Inductor can compute gradients that eager kernels do not: on this CPU build (torch 2.13) default
`torch.compile` trains a small diffusers UNet2DConditionModel (diffusers 0.42.1, two blocks, 208
parameters; issue 8) with 84 of its gradients exactly zero, and none with inductor's
`layout_optimization` off. A reference compiled by the same inductor shares such a fault, so
the reference is the same Dynamo graph run by AOTAutograd with eager kernels and torch's
default partition, which recomputes nothing (`aot_eager_default_partitioner`).
- Tolerance: with `compiler="aot_eager"` both run the same kernels in the same order, so the
  gradients must be equal bitwise. Under inductor, which reorders and fuses float math, a
  gradient matches where every element is within RTOL times the largest magnitude of the
  reference's gradient (plus ATOL): rounding error scales with the terms summed, not with the
  element, so an element-wise relative test fails on cancellation. RTOL is 1e-4 for 32/64-bit
  floats (the tolerance of the tests comparing inductor with `torch.compile`); 16-bit floats get
  1e-2 (not measured). A fault like the one above (a gradient of zeros) differs by 1.0.
- Random numbers: inductor draws its own by default, so under verify it draws them with aten's
  kernels (inductor's `fallback_random`), which gives eager's dropout masks.
- On a mismatch it warns (how many gradients differ, the largest difference) and falls back:
  under inductor to inductor with `layout_optimization` off and torch's default partitioner,
  checked against the reference again; where that differs too (or under aot_eager), to the
  reference itself. It never runs a compile it has seen differ.
- Cost: on the first call, one extra run of the compiled graph and one of the reference (and
  one of the fallback, on a mismatch), each on copies of the call's inputs from the same RNG
  state, so it changes no buffer (BatchNorm's statistics) and draws no extra randomness.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.utils import _pytree as pytree

RTOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2}  # other dtypes: DEFAULT_RTOL
DEFAULT_RTOL = 1e-4
ATOL = 1e-5
REFERENCE = "eager kernels, nothing recomputed (aot_eager, torch's default partition)"


def _copy(args):
    return [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]


def rng_state():
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(rng) -> None:
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state_all(rng[1])


def gradients(fn, args, rng) -> list[torch.Tensor | None]:
    """Gradients of the sum of `fn`'s floating outputs (weighted by ones) w.r.t. the inputs that
    require grad, run on copies of `args` from RNG state `rng`."""
    set_rng_state(rng)
    inputs = _copy(args)
    outs = [o for o in pytree.tree_leaves(fn(*inputs)) if isinstance(o, torch.Tensor) and o.requires_grad]
    wrt = [a for a in inputs if isinstance(a, torch.Tensor) and a.requires_grad]
    if not outs or not wrt:
        return []
    return list(torch.autograd.grad(outs, wrt, [torch.ones_like(o) for o in outs], allow_unused=True))


def difference(x: torch.Tensor | None, y: torch.Tensor | None, exact: bool) -> float | None:
    """None where gradient `x` matches the reference's `y` (NOTE [ Why verify compiled gradients ]),
    else the largest |x - y| over the largest finite |y| (inf where that is 0). None is zeros."""
    if x is None and y is None:
        return None
    x = torch.zeros_like(y) if x is None else x.detach()
    y = torch.zeros_like(x) if y is None else y.detach()
    if x.shape != y.shape:
        return math.inf
    if x.dtype in RTOL:
        x, y = x.float(), y.float()
    finite = y[y.isfinite()].abs()
    scale = finite.max().item() if finite.numel() else 0.0
    tol = 0.0 if exact else RTOL.get(y.dtype, DEFAULT_RTOL) * scale + ATOL
    if torch.isclose(x, y, rtol=0.0, atol=tol, equal_nan=True).all():
        return None
    err = (x - y).abs().nan_to_num(nan=math.inf).max().item()
    return err / scale if scale else math.inf


def differences(ours, ref, exact: bool) -> list[float]:
    """The `difference` of each gradient that does not match."""
    found = (difference(x, y, exact) for x, y in zip(ours, ref, strict=True))
    return [d for d in found if d is not None]


def reference_compile(gm, example_inputs):
    """`gm` run by AOTAutograd with eager kernels and torch's default partition (nothing recomputed)."""
    from torch._dynamo.backends.debugging import aot_eager_default_partitioner

    return aot_eager_default_partitioner(gm, example_inputs)


def fallback_compile(gm, example_inputs, inductor_options: dict, inner_compile=None):
    """`gm` compiled by inductor with `inductor_options`, `layout_optimization` off, and torch's own
    partitioner (`inner_compile`: the backend's replacement of inductor's per-graph compiler)."""
    from torch._inductor.compile_fx import compile_fx

    inner = {"inner_compile": inner_compile} if inner_compile is not None else {}
    # a cached graph would skip `inner_compile` (the benchmarks count FLOPs there)
    with torch._functorch.config.patch(enable_autograd_cache=False):
        return compile_fx(gm, example_inputs, **inner, config_patches={
            **inductor_options, "layout_optimization": False, "fx_graph_cache": False})


def _described(diffs: list[float], total: int) -> str:
    return (f"{len(diffs)} of {total} gradients (largest difference {max(diffs):.3g} of the gradient's "
            f"largest magnitude)")


def verified(gm, example_inputs, compiled, reference, compiler: str, inductor_options: dict, inner_compile=None):
    """A callable that runs `compiled`, after checking its first call's gradients against
    `reference` (`reference_compile`); on a mismatch it warns and runs a fallback (NOTE [ Why
    verify compiled gradients ])."""
    state = {"fn": compiled, "checked": False}

    def run(*args):
        if not state["checked"]:
            state["checked"] = True
            rng = rng_state()
            ref = gradients(reference, args, rng)
            diffs = differences(gradients(compiled, args, rng), ref, exact=compiler == "aot_eager")
            if diffs:
                what = f"{_described(diffs, len(ref))} differ from the same graph run with {REFERENCE}"
                state["fn"], used = reference, REFERENCE
                if compiler == "inductor":
                    fallback = fallback_compile(gm, example_inputs, inductor_options, inner_compile)
                    again = differences(gradients(fallback, args, rng), ref, exact=False)
                    if not again:
                        state["fn"] = fallback
                        used = "inductor with layout_optimization=False and torch's default partitioner"
                    else:
                        what += f"; with layout_optimization=False, {_described(again, len(ref))} differ"
                warnings.warn(f"fxckpt backend: {what}; fell back to {used} for this graph (its fxckpt plan and "
                              f"budget no longer apply)", RuntimeWarning, stacklevel=2)
            set_rng_state(rng)
        return state["fn"](*args)

    return run
