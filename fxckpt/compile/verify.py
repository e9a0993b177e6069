"""`verify=True`: check a compiled graph's gradients once against the same graph with nothing
recomputed, and fall back to torch's default partitioner on a mismatch.

NOTE [ Why verify compiled gradients ]
A partition that recomputes can meet compiler bugs that the same graphs without recomputation
avoid (on this CPU build inductor trains the diffusers U-Net with most gradients exactly zero
under every memory budget of its own partitioner). The check runs both on copies of the first
call's inputs, from the same RNG state, so it changes no buffer and draws no extra randomness.
"""

from __future__ import annotations

import warnings

import torch
from torch.utils import _pytree as pytree


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


def same_gradients(a, b, exact: bool) -> bool:
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and not (torch.equal(x, y) if exact else torch.allclose(x, y, rtol=1e-4, atol=1e-5)):
            return False
    return True


def verified(gm, example_inputs, compiled, reference, compiler: str, inductor_options: dict):
    """A callable that runs `compiled`, after checking its first call's gradients against
    `reference`, the same graph compiled with nothing recomputed; on a mismatch it runs the graph
    compiled by `compiler` with torch's own partitioner (NOTE [ Why verify compiled gradients ])."""
    state = {"fn": compiled, "checked": False}

    def run(*args):
        if not state["checked"]:
            state["checked"] = True
            rng = rng_state()
            ours = gradients(compiled, args, rng)
            ref = gradients(reference, args, rng)
            set_rng_state(rng)
            if not same_gradients(ours, ref, exact=compiler == "aot_eager"):
                warnings.warn(f"fxckpt backend: gradients of graph {gm.__class__.__name__} with the plan differ from "
                              f"the same graph with nothing recomputed; falling back to torch's default partitioner",
                              RuntimeWarning, stacklevel=2)
                state["fn"] = default_compile(gm, example_inputs, compiler, inductor_options)
        return state["fn"](*args)

    return run


def default_compile(gm, example_inputs, compiler: str, inductor_options: dict):
    """The graph compiled by `compiler` ("inductor" with `inductor_options`, or "aot_eager") with
    torch's own partitioner."""
    if compiler == "inductor":
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, config_patches=dict(inductor_options))
    from torch._dynamo.backends.debugging import aot_eager

    return aot_eager(gm, example_inputs)
