"""Baselines: recompute nothing, everything, all but √n evenly spaced nodes (Chen et al.), or
everything inside each repeated block but its output (per-layer checkpointing)."""

from __future__ import annotations

import math

from .registry import register_solver


@register_solver("none")
def solve_none(problem, budget_bytes):
    return frozenset()


@register_solver("all")
def solve_all(problem, budget_bytes):
    return frozenset(problem.candidates())


@register_solver("sqrt")
def solve_sqrt(problem, budget_bytes):
    """Keep every ⌈√m⌉-th candidate in execution order and recompute the others."""
    cands = problem.candidates()
    step = max(1, math.isqrt(len(cands)) + (math.isqrt(len(cands)) ** 2 < len(cands)))
    return frozenset(c for k, c in enumerate(cands) if (k + 1) % step)


def block_of(scope: str) -> str | None:
    """The repeated block a module path belongs to: the path up to its first numeric part,
    e.g. "transformer.h.3" for "transformer.h.3.attn.c_attn"; None outside any block."""
    parts = scope.split(".")
    for k, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: k + 1])
    return None


@register_solver("blocks")
def solve_blocks(problem, budget_bytes):
    """Recompute every candidate inside a block except the block's last one, its output."""
    last: dict[str, int] = {}
    for i in problem.candidates():
        block = block_of(problem.nodes[i].scope)
        if block is not None:
            last[block] = i
    return frozenset(i for i in problem.candidates()
                     if (b := block_of(problem.nodes[i].scope)) is not None and last[b] != i)
