"""What the compile path saves across the forward/backward boundary, and so its smallest
feasible budget (aot_eager, where the prediction is the allocator's peak exactly)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import fxckpt
from fxckpt.benchmark import profiled_peak_bytes
from fxckpt.compile import _infeasible
from fxckpt.core.errors import InfeasibleBudgetError

MIB = 2**20


def _step(model, x):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    out = model(x)  # referenced until backward ends, as fxckpt.measure_step's step
    out.sum().backward()
    return [p.grad.clone() for p in model.parameters()]


class ScaledByConstant(nn.Module):
    """Two tanh layers on 512 x 512 (1 MiB each), the first scaled by a `full` (1 MiB), which
    depends on no input: the product's backward reads it, at the end of backward."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(512, 512), nn.Linear(512, 512)

    def forward(self, x):
        h = torch.tanh(self.lin1(x) * torch.full((512, 512), 2.0))
        return torch.tanh(self.lin2(h))


def test_a_value_that_depends_on_no_input_is_replayed_not_saved():
    """NOTE [ Values that depend on no input are replayed, never saved ]: with nothing else to
    recompute (budget=1.0) the `full` is replayed in backward: the boundary holds the two tanh
    outputs (2 MiB; 3 MiB when the `full` was saved), the step's peak is 5 MiB and the bias's
    gradient (6 MiB before), the allocator sees exactly the prediction and the gradients are
    eager's bit for bit."""
    torch.manual_seed(0)
    model, x = ScaledByConstant(), torch.randn(512, 512)
    ref = _step(copy.deepcopy(model), x)
    torch._dynamo.reset()
    be = fxckpt.backend(budget=1.0, compiler="aot_eager")
    compiled = torch.compile(copy.deepcopy(model), backend=be)
    grads = _step(compiled, x)
    for g, r in zip(grads, ref, strict=True):
        assert torch.equal(g, r)
    (graph,) = be.graphs
    assert graph.plan.recompute == frozenset({"full"}), graph.plan.summary()
    assert (graph.boundary_bytes, graph.peak_bytes) == (2 * MIB, 5 * MIB + 2048 + 8), graph.plan.summary()  # + the eager loss

    def run():
        out = compiled(x)
        out.sum().backward()
    assert profiled_peak_bytes(run) == graph.peak_bytes  # the eager `sum` and its seed gradient included (NOTE [ The eager loss ])


class SavedConstant(ScaledByConstant):
    """ScaledByConstant with the first layer in a selective-checkpoint region whose policy says
    MUST_SAVE for the `full` (and lets the solver choose the rest)."""

    def forward(self, x):
        from functools import partial

        from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

        def policy(ctx, op, *args, **kwargs):
            return CheckpointPolicy.MUST_SAVE if op is torch.ops.aten.full.default else CheckpointPolicy.PREFER_SAVE

        def first(x):
            return torch.tanh(self.lin1(x) * torch.full((512, 512), 2.0))
        h = checkpoint(first, x, use_reentrant=False, context_fn=partial(create_selective_checkpoint_contexts, policy))
        return torch.tanh(self.lin2(h))


def test_a_user_policy_saves_a_value_that_depends_on_no_input():
    torch.manual_seed(0)
    model, x = SavedConstant(), torch.randn(512, 512)
    ref = _step(copy.deepcopy(model), x)
    torch._dynamo.reset()
    be = fxckpt.backend(budget=1.0, compiler="aot_eager")
    grads = _step(torch.compile(copy.deepcopy(model), backend=be), x)
    for g, r in zip(grads, ref, strict=True):
        assert torch.equal(g, r)
    (graph,) = be.graphs
    assert not graph.plan.recompute and graph.boundary_bytes == 3 * MIB, graph.plan.summary()


def test_exhaustive_search_keeps_preferred_decisions():
    """The exhaustive solver (auto's on up to 12 candidates) fixes a preferred decision, as the
    other solvers do: it had dropped a forced recomputation that the budget did not need."""
    from fxckpt.core.problem import Buffer, Node, RematProblem
    from fxckpt.core.solvers import solve

    def chain(*prefer):  # a -> b -> c, 1 MiB each, each read by its own backward
        nodes = tuple(Node(n, "mul", inputs=(k - 1,) if k else (), creates=(k,), value=(k,), requires_grad=True,
                           saves=(k,), prefer=p) for k, (n, p) in enumerate(zip("abc", prefer)))
        return RematProblem(nodes, tuple(Buffer(n, MIB, k) for k, n in enumerate("abc")))
    assert solve(chain("recompute", None, None), 10 * MIB, "exhaustive").recompute == {"a"}
    assert solve(chain(None, None, None), 2 * MIB, "exhaustive").recompute == {"a"}  # only a lowers the peak
    with pytest.raises(InfeasibleBudgetError):
        solve(chain("save", None, None), 2 * MIB, "exhaustive")


def make_wide_cnn():
    """Four 128-wide 3x3 convolutions with BatchNorm on a 1x3x4x4 batch: 1.70 MiB of parameters
    against 8 KiB activations, so the parameter gradients pin the compiled floor."""
    torch.manual_seed(0)
    layers, c = [], 3
    for width in (128, 128, 128, 128):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)).train(), torch.randn(1, 3, 4, 4)


def test_a_budget_below_the_parameter_gradients_splits_the_graph():
    """NOTE [ Parameter gradients are returned per graph ]: AOTAutograd returns a graph's
    parameter gradients all at once, so no plan of the whole graph fits under their bytes; a
    budget of 85% of them (infeasible before) splits the graph into pieces whose gradients are
    accumulated piece by piece. The step then fits: the allocator's peak is under the budget and
    within 5% of the prediction, gradients and BatchNorm statistics are eager's bit for bit."""
    model, x = make_wide_cnn()
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ref = copy.deepcopy(model)
    budget = int(0.85 * grad_bytes)
    be = fxckpt.backend(budget_mb=budget / MIB, compiler="aot_eager")
    compiled = torch.compile(copy.deepcopy(model), backend=be)
    with warnings.catch_warnings():  # the split's runs on fake tensors are no runs of the step
        warnings.simplefilter("error", fxckpt.UncountedMemoryWarning)
        for _ in range(3):  # the first compiles; a piece re-planned for the pieces after it compiles again next
            ref_grads, grads = _step(ref, x), _step(compiled, x)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)
    for b, r in zip(compiled.buffers(), ref.buffers(), strict=True):
        assert torch.equal(b, r)  # BatchNorm's statistics, updated once a step
    assert len(be.graphs) > 1

    def run():
        out = compiled(x)
        out.sum().backward()
    peak, predicted = profiled_peak_bytes(run), be.predicted_peak_bytes()
    assert peak <= budget and abs(peak - predicted) <= 0.05 * predicted, (peak, predicted, budget)


def test_a_split_graphs_refusal_names_a_floor_that_plans():
    """NOTE [ A split graph's floor is its pieces' together ]: four 1 MiB Linears on 256 rows, split
    below their parameters' gradients; the first piece refused used to name the floor of the pieces
    planned so far (2,099,208 B, then 3,147,784 and 3,672,072 B as each was passed back, before
    3,675,148 B planned). Now the first refusal names a budget that plans, and the step fits it."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(512, 512), nn.GELU()) for _ in range(4)], nn.Linear(512, 1)).train()
    x = torch.randn(256, 512)
    ref = copy.deepcopy(model)
    with pytest.raises(Exception) as info:
        _step(torch.compile(copy.deepcopy(model), backend=fxckpt.backend(budget_mb=0.001, compiler="aot_eager")), x)
    floor = _infeasible(info.value).min_feasible_bytes
    torch._dynamo.reset()
    be = fxckpt.backend(budget_mb=floor / MIB, compiler="aot_eager")
    compiled = torch.compile(copy.deepcopy(model), backend=be)
    for _ in range(2):
        ref_grads, grads = _step(ref, x), _step(compiled, x)
    assert len(be.graphs) > 1
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)

    def run():
        compiled(x).sum().backward()
    peak = profiled_peak_bytes(run)
    assert peak <= floor and abs(peak - be.predicted_peak_bytes()) <= 0.05 * peak, (peak, floor)


class _TwoBranches(nn.Module):
    """Wide Linears with dropout on one input, a branch of its own with dropout on another: a split's
    piece holding the second branch depends on no piece of the first, and could run first."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(256, 256), nn.Tanh(), nn.Dropout(0.5))])
        self.b = nn.Sequential(nn.Linear(256, 256), nn.Dropout(0.5), nn.Linear(256, 256))

    def forward(self, x, y):
        return self.a(x) * self.b(y)


def test_a_split_that_would_reorder_the_random_numbers_is_not_made():
    """NOTE [ Pieces keep the random numbers' order ]: at 85% of its parameters' bytes the graph
    was split into 6 pieces, the second branch's piece ran first, and its dropout drew the first
    branch's numbers: output and gradients differed from eager's under the same seed, silently.
    Now the graph is not split; the error names the whole graph's floor, where the gradients are
    eager's bit for bit."""
    torch.manual_seed(0)
    model, x, y = _TwoBranches().train(), torch.randn(1, 256), torch.randn(1, 256)
    def step(m):
        for p in m.parameters():
            p.grad = None
        torch.manual_seed(1)
        m(x, y).sum().backward()
        return [p.grad for p in m.parameters()]

    ref = step(copy.deepcopy(model))
    budget = int(0.85 * sum(p.numel() * p.element_size() for p in model.parameters()))
    with pytest.raises(Exception) as info:
        step(torch.compile(copy.deepcopy(model), backend=fxckpt.backend(budget_mb=budget / MIB, compiler="aot_eager")))
    floor = _infeasible(info.value).min_feasible_bytes
    assert floor > budget
    torch._dynamo.reset()
    be = fxckpt.backend(budget_mb=floor / MIB, compiler="aot_eager")
    for g, r in zip(step(torch.compile(copy.deepcopy(model), backend=be)), ref, strict=True):
        assert torch.equal(g, r)
    assert len(be.graphs) == 1
