"""Baselines: recompute nothing, everything, all but √n evenly spaced nodes (Chen et al.), or
everything inside each repeated block but its output (per-layer checkpointing)."""

from __future__ import annotations

import math

from ..blocks import block_candidates
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


@register_solver("blocks")
def solve_blocks(problem, budget_bytes):
    """Recompute every candidate inside a block (see NOTE [ Blocks and segments ]) except the
    block's last one, its output."""
    blocks, _ = block_candidates(problem)
    return frozenset(i for members in blocks.values() for i in members[:-1])
