"""Layer-level checkpointing of a chain: exact dynamic programming (Chen et al.'s segment model,
solved optimally in the spirit of Rotor) and the classic √n / fixed-segment planners.

The model, per layer i: it keeps `activation_bytes` a_i for its backward and costs
`compute_cost` c_i to run. A *checkpointed segment* [s, e] keeps only its input (the output
of layer s-1; the model's input is free) and recomputes its layers in backward, when all of
their a_i are live at once. The activation peak of a plan is

    sum of a_i over layers outside segments + sum of segment inputs + max over segments of sum(a_i in it)

and its cost the sum of c_i over checkpointed layers. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

from ..blocks import block_candidates, even_segments
from ..simulate import simulate
from .chain_exact import solve_node_chain
from .greedy import solve_greedy
from .registry import register_solver


@dataclass(frozen=True)
class LayerProfile:
    name: str
    activation_bytes: int
    compute_cost: float = 1.0


@dataclass(frozen=True)
class ChainPlan:
    """Which layers run checkpointed, in which segments, and what that costs."""

    segments: tuple[tuple[int, int], ...]  # checkpointed [start, end] layer ranges, inclusive
    peak_bytes: int
    baseline_bytes: int
    recompute_cost: float

    @property
    def checkpoint_layers(self) -> tuple[int, ...]:
        return tuple(i for s, e in self.segments for i in range(s, e + 1))

    @property
    def memory_savings(self) -> float:
        """Fraction of the un-checkpointed peak saved."""
        return 1 - self.peak_bytes / self.baseline_bytes if self.baseline_bytes else 0.0


def chain_peak(layers: list[LayerProfile], segments) -> int:
    a = [layer.activation_bytes for layer in layers]
    inside = {i for s, e in segments for i in range(s, e + 1)}
    kept = sum(a[i] for i in range(len(a)) if i not in inside) + sum(a[s - 1] for s, _ in segments if s > 0)
    return kept + max((sum(a[s:e + 1]) for s, e in segments), default=0)


def _plan(layers, segments) -> ChainPlan:
    segments = tuple(sorted(segments))
    return ChainPlan(segments, chain_peak(layers, segments), chain_peak(layers, ()),
                     sum(layers[i].compute_cost for s, e in segments for i in range(s, e + 1)))


def solve_chain(layers: list[LayerProfile], memory_budget: int) -> ChainPlan | None:
    """The cheapest plan whose peak is within `memory_budget`, or None if none is.

    Exact: for each candidate working set W (the largest segment's bytes; every contiguous sum
    is a candidate), a DP over layers finds, for each amount of kept bytes, the cheapest
    segmentation whose segments all fit in W. O(n^2) candidates x O(n^2) transitions over a
    Pareto front of (kept bytes, cost).
    """
    n = len(layers)
    a = [layer.activation_bytes for layer in layers]
    c = [layer.compute_cost for layer in layers]
    prefix_a = [0]
    prefix_c = [0.0]
    for i in range(n):
        prefix_a.append(prefix_a[-1] + a[i])
        prefix_c.append(prefix_c[-1] + c[i])
    sums = sorted({prefix_a[e + 1] - prefix_a[s] for s in range(n) for e in range(s, n)} | {0})
    best: tuple[float, tuple] | None = None
    for W in sums:
        if W > memory_budget:
            break
        # front[i]: Pareto list of (kept bytes, cost, segments) for layers [0, i)
        front: list[list[tuple[int, float, tuple]]] = [[] for _ in range(n + 1)]
        front[0] = [(0, 0.0, ())]
        for i in range(n):
            for kept, cost, segs in front[i]:
                _add(front[i + 1], (kept + a[i], cost, segs))  # layer i keeps its activations
                for e in range(i, n):  # a segment [i, e]
                    inner = prefix_a[e + 1] - prefix_a[i]
                    if inner > W:
                        break
                    _add(front[e + 1], (kept + (a[i - 1] if i > 0 else 0), cost + prefix_c[e + 1] - prefix_c[i],
                                        segs + ((i, e),)))
        for kept, cost, segs in front[n]:
            peak = kept + max((prefix_a[e + 1] - prefix_a[s] for s, e in segs), default=0)
            if peak <= memory_budget and (best is None or cost < best[0]):
                best = (cost, segs)
    return None if best is None else _plan(layers, best[1])


def _add(front: list, item) -> None:
    """Keep only points no other point beats on both kept bytes and cost."""
    kept, cost = item[0], item[1]
    if any(k <= kept and c <= cost for k, c, _ in front):
        return
    front[:] = [p for p in front if not (kept <= p[0] and cost <= p[1])] + [item]


def brute_force_chain(layers: list[LayerProfile], memory_budget: int) -> ChainPlan | None:
    """Every assignment of keep / start a segment / continue it: the reference for tests."""
    best = None
    for labels in product("kse", repeat=len(layers)):
        if labels and labels[0] == "e":
            continue
        segs, start = [], None
        for i, lab in enumerate(labels + ("k",)):
            if start is not None and lab != "e":
                segs.append((start, i - 1))
                start = None
            if lab == "s":
                start = i
        plan = _plan(layers, segs)
        if plan.peak_bytes <= memory_budget and (best is None or plan.recompute_cost < best.recompute_cost):
            best = plan
    return best


class OptimalCheckpointer:
    """The classic layer-level API over `solve_chain`.

    Example:
        >>> layers = [LayerProfile(f"block{i}", 2**20, 1.0) for i in range(8)]
        >>> plan = OptimalCheckpointer(layers).find_optimal_checkpoints(memory_budget=5 * 2**20)
        >>> plan.peak_bytes <= 5 * 2**20, round(plan.memory_savings, 3)
        (True, 0.375)
    """

    def __init__(self, layers: list[LayerProfile]):
        self.layers = list(layers)

    def find_optimal_checkpoints(self, memory_budget: int) -> ChainPlan:
        from ..errors import InfeasibleBudgetError

        plan = solve_chain(self.layers, memory_budget)
        if plan is None:
            floor = min(chain_peak(self.layers, segs) for segs in _all_single_segmentations(len(self.layers)))
            raise InfeasibleBudgetError(memory_budget, floor)
        return plan


def _all_single_segmentations(n: int):
    """Candidate plans for the floor: every way to cut the chain into k equal-ish segments."""
    yield ()
    for k in range(1, n + 1):
        yield tuple(SegmentedCheckpointing.get_segment_boundaries(n, k))


class SegmentedCheckpointing:
    """Chen et al.'s segment planners for n equal layers."""

    @staticmethod
    def get_segment_boundaries(num_layers: int, num_segments: int) -> list[tuple[int, int]]:
        """`num_segments` contiguous [start, end] ranges covering the layers, sizes differing by
        at most one: `fxckpt.core.blocks.even_segments` with inclusive ends, as `ChainPlan`'s
        segments have them."""
        return [(start, stop - 1) for start, stop in even_segments(num_layers, num_segments)]

    @staticmethod
    def compute_optimal_segments(num_layers: int, memory_budget_ratio: float) -> int:
        """The fewest segments whose peak (segment inputs plus the largest segment, in units of
        one layer) is within `memory_budget_ratio` of `num_layers` (every layer is recomputed
        once whatever the count, so fewer segments only keep fewer inputs); when no count fits,
        the count with the smallest peak (near √n).

        Example:
            >>> SegmentedCheckpointing.compute_optimal_segments(16, 0.6), SegmentedCheckpointing.compute_optimal_segments(16, 0.1)
            (2, 4)
        """
        if not 0 < memory_budget_ratio:
            raise ValueError(f"memory_budget_ratio must be positive, got {memory_budget_ratio}")
        if memory_budget_ratio >= 1:
            return 1 if num_layers else 0

        def peak(k: int) -> int:
            return (k - 1) + math.ceil(num_layers / k)

        feasible = [k for k in range(1, num_layers + 1) if peak(k) <= memory_budget_ratio * num_layers]
        if not feasible:
            return min(range(1, num_layers + 1), key=peak)
        return min(feasible)  # fewer segments: fewer segment inputs kept, same recompute


def chain_of_blocks(problem):
    """The problem's repeated blocks in order (by module scope) as layer profiles: a block keeps
    the bytes of what its nodes allocate that backward holds, and costs its candidates' FLOPs.
    Returns (profiles, candidate node indices per block)."""
    held = {b for n in problem.nodes if n.requires_grad for b in n.saves}
    order, _ = block_candidates(problem)
    profiles, members = [], []
    for block, nodes in order.items():
        nbytes = sum(problem.buffers[b].nbytes for i in nodes for b in problem.nodes[i].creates if b in held)
        profiles.append(LayerProfile(block, nbytes, float(sum(problem.cost[i] for i in nodes))))
        members.append(nodes)
    return profiles, members


@register_solver("chain_dp")
def solve_chain_dp(problem, budget_bytes):
    """Segments of whole blocks chosen by the exact chain DP, for chains of blocks (transformer
    stacks, ResNet stages). The chain model ignores what lies outside the blocks and backward's
    gradients, so the DP is run for a range of chain budgets and the simulator picks the
    cheapest plan that fits. Node chains get the exact DP under the simulator itself
    (`chain_exact`); graphs without repeated blocks fall back to the greedy descent."""
    exact = solve_node_chain(problem, budget_bytes)
    if exact is not None:
        return exact
    profiles, members = chain_of_blocks(problem)
    if len(profiles) < 2:
        return solve_greedy(problem, budget_bytes)
    total = sum(p.activation_bytes for p in profiles)
    best = None
    seen = set()
    for k in range(1, _GRID + 1):
        plan = solve_chain(profiles, total * k // _GRID)
        if plan is None or plan.segments in seen:
            continue
        seen.add(plan.segments)
        R = frozenset(i for s, e in plan.segments for block in range(s, e + 1) for i in members[block])
        sim = simulate(problem, R)
        if sim.peak_bytes <= budget_bytes and (best is None or sim.recompute_cost < best[0]):
            best = (sim.recompute_cost, R)
    return best[1] if best is not None else solve_greedy(problem, budget_bytes)


_GRID = 24  # chain budgets tried, as fractions of the chain's total
