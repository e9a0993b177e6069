"""FLOPs of a training step: `FlopCounterMode` with rules for the CPU flash-attention kernels
(`EXTRA_FLOP_RULES`), and the same rules applied to the graphs inductor compiles
(`graph_flops`, `CountingInductor`), where a dispatch mode would see only eager code."""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

__all__ = ["EXTRA_FLOP_RULES", "CountingInductor", "flop_counter", "graph_flops"]


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


def flop_counter():
    """A `FlopCounterMode` (no printing) that also counts `EXTRA_FLOP_RULES`."""
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

