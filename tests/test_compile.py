"""The torch.compile backend: gradients equal to eager, measured peak within the budget and
the prediction, monotone in the budget, registered by name.

Compiling is the slow part (seconds per graph): each test compiles few graphs, most with
`compiler="aot_eager"`; one test runs inductor on a tiny model.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxckpt
import fxckpt.api as fxckpt_api
from fxckpt.benchmark import profiled_peak_bytes
from fxckpt.core.errors import InfeasibleBudgetError
from fxckpt.profiling import MemoryProfiler

from tests.models import call_model, make_cnn, make_gpt2, make_transformer

MIB = 2**20
# 10 MiB failed when the first graph took what it could and left the second less than its floor
# (9.5 MiB planned); the first graph is now re-planned to leave it (NOTE [ Graph breaks share ...]).
BROKEN_BUDGET_MB = 10


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_dropout_mlp():
    """Four 512-wide layers with dropout on a 512-row batch: every activation is 1 MiB."""
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(512, 512), nn.GELU(), nn.Dropout(0.1)) for _ in range(4)]
    return nn.Sequential(*layers, nn.Linear(512, 1)).train(), torch.randn(512, 512)


def loss_of(output):
    loss = getattr(output, "loss", None)
    return loss if loss is not None else output.sum()


def step(model, example, seed=1):
    """One training step from zeroed `.grad`s; the gradients and buffers after it."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    torch.manual_seed(seed)
    loss_of(call_model(model, example)).backward()
    return [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


def measured_peak(model, example, seed=1) -> int:
    """The step's peak, the output referenced until backward finishes (`fxckpt.measure_step`'s step)."""
    def run():
        torch.manual_seed(seed)
        out = call_model(model, example)
        loss_of(out).backward()
    return profiled_peak_bytes(run)


def infeasible(error: BaseException) -> InfeasibleBudgetError | None:
    """The InfeasibleBudgetError behind Dynamo's BackendCompilerFailed."""
    while error is not None and not isinstance(error, InfeasibleBudgetError):
        error = getattr(error, "inner_exception", None) or error.__cause__
    return error


def compiled_step(model, example, **options):
    """Compile a copy of `model` with the fxckpt backend, run one step; (copy, backend, grads, buffers)."""
    m = copy.deepcopy(model)
    be = fxckpt.backend(**options)
    compiled = torch.compile(m, backend=be)
    grads, buffers = step(compiled, example)
    return compiled, be, grads, buffers


def compiled_at_floor(model, example, **options):
    """`compiled_step` at the smallest feasible budget the backend names (aot_eager); also the floor."""
    with pytest.raises(Exception) as info:
        compiled_step(model, example, budget_mb=0.001, compiler="aot_eager", **options)
    floor = infeasible(info.value).min_feasible_bytes
    torch._dynamo.reset()
    return (*compiled_step(model, example, budget_mb=floor / MIB, compiler="aot_eager", **options), floor)


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), (x - y).abs().max()


def test_budget_sweep_on_dropout_mlp():
    """90% / 70% / the smallest feasible budget: bitwise gradients (dropout included), measured
    peak under the budget and within 5% of the prediction, peak and FLOPs monotone."""
    model, x = make_dropout_mlp()
    ref_grads, _ = step(copy.deepcopy(model), x)
    with pytest.raises(Exception) as info:
        compiled_step(model, x, budget_mb=0.01, compiler="aot_eager")
    floor = infeasible(info.value)
    assert floor is not None and floor.min_feasible_bytes > 0, info.value
    rows = []
    for spec in ({"budget": 0.9}, {"budget": 0.7}, {"budget_mb": floor.min_feasible_bytes / MIB}):
        torch._dynamo.reset()
        compiled, be, grads, _ = compiled_step(model, x, compiler="aot_eager", **spec)
        assert_same(grads, ref_grads)
        (plan,) = fxckpt.compiled_plans(compiled)  # the torch.compile result leads to the backend object
        assert fxckpt.compiled_plans(be) == [plan]
        peak = measured_peak(compiled, x)
        assert peak <= plan.budget_bytes, (spec, peak, plan.budget_bytes)
        assert abs(peak - plan.predicted_peak_bytes) <= 0.05 * plan.predicted_peak_bytes, (spec, peak, plan.summary())
        rows.append((peak, plan.recompute_flops))
    # MemoryProfiler reads a compiled step from the allocator (a dispatch mode would run it eagerly)
    profiler = MemoryProfiler("cpu")
    with profiler.profile(compiled):
        torch.manual_seed(1)
        out = compiled(x)  # held until backward ends, as measured_peak's step
        out.sum().backward()
    profile = profiler.result()
    assert profile.peak_bytes == peak and profile.peak_op.phase == "backward", profile.summary()
    assert {r.scope for r in profile.timeline} >= {"Torch-Compiled Region: 0/0", "CompiledFunctionBackward"}
    peaks, flops = zip(*rows)
    assert list(peaks) == sorted(peaks, reverse=True) and peaks[-1] < peaks[0]
    assert list(flops) == sorted(flops) and flops[-1] > 0
    # dropout's output is never replayed: its mask is saved
    assert not any(r.op == "aten.native_dropout" and r.decision == "recompute" for r in plan.rows)


class LossInGraph(nn.Module):
    """A model returning its own scalar loss: `.backward()` is called on the graph's output."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))

    def forward(self, x, y):
        return F.cross_entropy(self.body(x), y)


def test_seed_gradient_of_a_graph_loss_is_held_to_the_end():
    """The seed `loss.backward()` makes is referenced by `torch.autograd.backward` until backward
    returns: at the smallest feasible budget the allocator's peak equals the prediction, no byte over
    (it was 4 bytes over: the seed died at its last reader in the model), but for the 8 B of an eager
    loss this step does not make (NOTE [ The eager loss ]: `compiled(x, y).backward()` backpropagates
    the graph's own scalar)."""
    torch.manual_seed(0)
    model, x, y = LossInGraph(), torch.randn(128, 64), torch.randint(0, 10, (128,))
    compiled, be, _, _, floor = compiled_at_floor(model, (x, y))
    (plan,) = fxckpt.compiled_plans(be)

    def run():
        compiled(x, y).backward()
    assert profiled_peak_bytes(run) + 8 == plan.predicted_peak_bytes <= int(floor / MIB * MIB), plan.summary()


def test_two_forwards_before_one_backward_with_batchnorm():
    """NOTE [ A replayed batch norm reads copies of the running statistics ]: the second forward
    writes the running statistics a replayed batch norm read; autograd raised "modified by an
    inplace operation" in backward (plain torch.compile ran). Now gradients and statistics are
    plain aot_eager's, bit for bit."""
    model, x = make_cnn()
    x2 = torch.randn_like(x)

    def two_forwards(backend):
        torch._dynamo.reset()
        m = copy.deepcopy(model)
        compiled = torch.compile(m, backend=backend)
        (compiled(x).sum() + compiled(x2).sum()).backward()
        return [p.grad for p in m.parameters()], list(m.buffers())
    ref_grads, ref_buffers = two_forwards("aot_eager")
    be = fxckpt.backend(budget=0.5, compiler="aot_eager")
    grads, buffers = two_forwards(be)
    assert any(r.op == "aten._native_batch_norm_legit_functional" and r.decision == "recompute"
               for r in be.plans[0].rows), be.plans[0].summary()
    assert_same(grads, ref_grads)
    assert_same(buffers, ref_buffers)


@pytest.mark.parametrize("make", [make_transformer, make_cnn], ids=["pre-LN transformer", "cnn with batchnorm"])
def test_gradients_and_buffers_equal_eager(make):
    model, x = make()
    ref_grads, ref_buffers = step(copy.deepcopy(model), x)
    compiled, be, grads, buffers = compiled_step(model, x, budget=0.8, compiler="aot_eager")
    assert_same(grads, ref_grads)
    assert_same(buffers, ref_buffers)  # BatchNorm's running statistics updated once
    (plan,) = fxckpt.compiled_plans(be)
    assert plan.recompute, plan.summary()
    peak = measured_peak(compiled, x)
    assert peak <= plan.budget_bytes
    assert abs(peak - plan.predicted_peak_bytes) <= 0.05 * plan.predicted_peak_bytes, (peak, plan.summary())


def test_gpt2_with_labels_by_name_graphs_share_budget_mb():
    """Hugging Face GPT-2 through backend="fxckpt": two graphs (Dynamo breaks before the loss),
    planned in order, the second for what the first leaves of the budget."""
    model, example = make_gpt2()
    example = {**example, "use_cache": False}
    ref_grads, _ = step(copy.deepcopy(model), example)
    m = copy.deepcopy(model)
    compiled = torch.compile(m, backend="fxckpt", options={"budget_mb": 2.4, "compiler": "aot_eager"})
    grads, _ = step(compiled, example)
    assert_same(grads, ref_grads)
    plans = fxckpt.compiled_plans(compiled)
    assert len(plans) == 2 and plans[0].recompute, [p.summary() for p in plans]
    first = fxckpt.compile._backend_of(compiled).graphs[0]
    assert plans[0].budget_bytes == int(2.4 * MIB)
    assert plans[1].budget_bytes == int(2.4 * MIB) - first.boundary_bytes
    peak, predicted = measured_peak(compiled, example), fxckpt.compile._backend_of(compiled).predicted_peak_bytes()
    assert peak <= 2.4 * MIB
    assert abs(peak - predicted) <= 0.05 * predicted, (peak, predicted)


class BrokenMLP(nn.Module):
    """Dropout MLP with a forced graph break in the middle: two graphs, a 1 MiB activation crossing."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(*[nn.Sequential(nn.Linear(512, 512), nn.GELU(), nn.Dropout(0.1)) for _ in range(3)])
        self.b = nn.Sequential(nn.Linear(512, 512), nn.GELU(), nn.Dropout(0.1), nn.Linear(512, 1))

    def forward(self, x):
        h = self.a(x)
        torch._dynamo.graph_break()
        return self.b(h)


def test_forced_graph_break_shares_the_budget_and_predicts_the_step():
    """Two graphs under one budget_mb that the first graph alone would crowd out: the second
    graph's floor is reserved in the first, which compiles again on its next call; from then on
    the step's predicted peak is within 5% of the measured one and under the budget; gradients
    bitwise on every step."""
    torch.manual_seed(0)
    model, x = BrokenMLP().train(), torch.randn(512, 512)
    ref_grads, _ = step(copy.deepcopy(model), x)
    compiled, be, grads, _ = compiled_step(model, x, budget_mb=BROKEN_BUDGET_MB, compiler="aot_eager")
    assert_same(grads, ref_grads)
    first, second = be.graphs
    assert first.reserve_bytes > 0 and second.reserve_bytes == 0
    assert first.boundary_bytes + first.reserve_bytes <= BROKEN_BUDGET_MB * MIB
    assert second.plan.budget_bytes == int(BROKEN_BUDGET_MB * MIB) - first.boundary_bytes
    assert_same(step(compiled, x)[0], ref_grads)  # the first graph compiled again, with its new plan
    plans = fxckpt.compiled_plans(be)
    assert len(plans) == 2 and all(p.recompute for p in plans), [p.summary() for p in plans]
    assert plans[0].recompute == first.plan.recompute  # the recompiled graph planned what the re-plan said
    peak, predicted = measured_peak(compiled, x), be.predicted_peak_bytes()
    assert peak <= BROKEN_BUDGET_MB * MIB
    assert abs(peak - predicted) <= 0.05 * predicted, (peak, predicted)


class WideTail(nn.Module):
    """A graph break before a tail whose 2 MiB output the caller holds through the backward of
    the first graph, where the step peaks."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(*[nn.Sequential(nn.Linear(512, 512), nn.GELU()) for _ in range(4)])
        self.s = nn.Parameter(torch.ones(1024))

    def forward(self, x):
        h = self.a(x)
        torch._dynamo.graph_break()
        return h.repeat(1, 2) * self.s


def test_a_later_graphs_output_is_counted_in_the_backward_of_the_graphs_before_it():
    """NOTE [ Later graphs' outputs outlive their backward ]: the first graph's backward runs
    while the caller holds the second graph's output (measured 11,534,344 B against 10.5 MiB when
    it was not counted); the first graph is planned again to leave it room."""
    torch.manual_seed(0)
    model, x = WideTail().train(), torch.randn(512, 512)
    ref_grads, _ = step(copy.deepcopy(model), x)
    compiled, be, grads, _ = compiled_step(model, x, budget_mb=10.5, compiler="aot_eager")
    assert_same(grads, ref_grads)
    first, second = be.graphs
    assert second.after_bytes == 2 * MIB and first.after_bytes == MIB
    assert_same(step(compiled, x)[0], ref_grads)  # the first graph compiled again, with its new plan
    peak, predicted = measured_peak(compiled, x), be.predicted_peak_bytes()
    assert peak <= 10.5 * MIB
    # over by at most the 1 MiB crossing the break, counted as held to the step's end (the module docstring)
    assert peak <= predicted <= peak + MIB, (peak, predicted)


def test_inductor_budget_check_counts_the_later_graphs_outputs(monkeypatch):
    """The code's check of a graph's plan counts, through its backward, the outputs of the graphs
    after it (NOTE [ Later graphs' outputs outlive their backward ]), as the problem it was solved
    on does. Here the first graph's code made to hold 1.5 MiB more in its backward than it does:
    its check left them out, and at 10.5 MiB the step was accepted with a prediction of
    11,014,152 B, over the 11,010,048 B budget; now that budget is refused naming that peak, and
    at that peak the step plans within it."""
    import dataclasses

    from fxckpt.compile import _Partitioner

    held = _Partitioner.held
    first = []

    def over(self):
        h = held(self)
        first.append(first[0] if first else self.frame)
        return h and (dataclasses.replace(h, backward_peak=h.backward_peak + 1536 * 1024) if self.frame == first[0] else h)

    monkeypatch.setattr(_Partitioner, "held", over)
    torch.manual_seed(0)
    model, x = WideTail().train(), torch.randn(512, 512)
    with pytest.raises(Exception) as err:
        compiled, be, _, _ = compiled_step(model, x, budget_mb=10.5)
        step(compiled, x)  # the first graph compiles again, with the second's needs, on its next call
    floor = infeasible(err.value).min_feasible_bytes
    assert floor > 10.5 * MIB, err.value
    torch._dynamo.reset()
    compiled, be, _, _ = compiled_step(model, x, budget_mb=floor / MIB)
    step(compiled, x)
    assert be.predicted_peak_bytes() <= floor, (be.predicted_peak_bytes(), floor)


class TwoBranches(nn.Module):
    """A data-dependent branch (a graph break; each branch a graph of its own) after four layers."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.Tanh()) for _ in range(4)])
        self.b = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.Tanh()) for _ in range(6)])
        self.c = nn.Linear(256, 256)

    def forward(self, x):
        h = self.a(x)
        if x[0, 0] > 0:
            return self.b(h)
        return self.c(h)


def test_a_replan_reaches_the_training_graph_after_a_no_grad_forward():
    """NOTE [ A frame's graphs ]: the long branch, first taken after a no_grad forward, re-plans
    the first graph; the re-plan went to the no_grad forward's graph, and the step measured
    5,771,272 B against a 4,722,697 B budget; now 4,198,408 B."""
    torch.manual_seed(0)
    model, short, long = TwoBranches().train(), torch.randn(512, 256), torch.randn(512, 256)
    short[0, 0], long[0, 0] = -1.0, 1.0
    ref_grads, _ = step(copy.deepcopy(model), long)
    budget = 4_722_697
    compiled, be, _, _ = compiled_step(model, short, budget_mb=budget / MIB, compiler="aot_eager")
    with torch.no_grad():
        compiled(short)
    step(compiled, long)  # the long branch compiled: the first graph re-planned, compiled again next call
    assert_same(step(compiled, long)[0], ref_grads)
    assert measured_peak(compiled, long) <= budget <= be.predicted_peak_bytes() + 1


class SkipOverSplit(nn.Module):
    """Three graphs; the third, split, reads the first's output (a skip connection over the second)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(512, 512)
        self.big = nn.Sequential(*[nn.Sequential(nn.Linear(512, 512), nn.Tanh()) for _ in range(6)])

    def forward(self, x):
        h0 = torch.tanh(self.stem(x))
        torch._dynamo.graph_break()
        h1 = (h0.repeat(1, 4).tanh() * 2).tanh().view(64, 4, 512).mean(1)
        torch._dynamo.graph_break()
        return self.big(h1) + h0


def test_a_split_graphs_reads_of_earlier_graphs_are_known_when_it_is_planned():
    """NOTE [ Later graphs' outputs outlive their backward ]: the split graph's read of the first
    graph's output (whose gradient lives through the second graph's backward) was noted for the
    whole graph, which is no plan's key, and found only when its piece first ran: at the floor a
    compile error named (2,490,376 B) the first forward raised InfeasibleBudgetError from inside
    the compiled code, twice (2,492,424 B, then 2,621,448 B). Now the compile error names it."""
    torch.manual_seed(0)
    model, x = SkipOverSplit().train(), torch.randn(64, 512)
    ref_grads, _ = step(copy.deepcopy(model), x)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
        compiled_step(model, x, budget_mb=2_490_376 / MIB, compiler="aot_eager")
    floor = infeasible(info.value).min_feasible_bytes
    assert floor == 2_621_448
    torch._dynamo.reset()
    compiled, be, grads, _ = compiled_step(model, x, budget_mb=floor / MIB, compiler="aot_eager")
    assert_same(grads, ref_grads)
    assert measured_peak(compiled, x) <= floor == be.predicted_peak_bytes()


def planned_at_floor(model, run):
    """`model` compiled (aot_eager) at the floor its errors lead to, `run(m)` its step (a copy of
    `model` compiled, zeroing its `.grad`s first): (the copy, compiled, backend, floor)."""
    floor = 1
    while True:
        torch._dynamo.reset()
        m = copy.deepcopy(model)
        be = fxckpt.backend(budget_mb=floor / MIB, compiler="aot_eager")
        compiled = torch.compile(m, backend=be)
        try:
            run(compiled)
            return m, compiled, be, floor
        except Exception as e:
            assert infeasible(e).min_feasible_bytes > floor
            floor = infeasible(e).min_feasible_bytes


def two_outputs_step(x):
    """A step on a model returning two tensors, both summed into the loss; `zero`: zero `.grad`s."""
    def run(m, zero=True):
        for p in m.parameters() if zero else ():
            p.grad = torch.zeros_like(p)
        a, b = m(x)
        (a.sum() + b.sum()).backward()
    return run


class SharedAcrossBreak(nn.Module):
    """A Linear called before and after a graph break: two graphs read its parameters. Returns
    the first graph's output too, which the caller then holds (no over-count: module docstring)."""

    def __init__(self):
        super().__init__()
        self.lin, self.l2 = nn.Linear(256, 256), nn.Linear(256, 256)

    def forward(self, x):
        h = torch.tanh(self.lin(torch.relu(self.lin(x))))
        torch._dynamo.graph_break()
        return torch.relu(self.lin(torch.tanh(self.l2(h)))), h


def test_a_parameter_two_graphs_read_holds_the_later_gradient_through_the_earlier_backward():
    """NOTE [ A leaf read by two graphs ]: autograd holds the second graph's gradient of the shared
    weight and bias until the first graph's backward returns its own: at the 3,145,736 B floor it
    named the step measured 3,408,904 B (those gradients' 263,168 B over). Now the floor named is
    the allocator's peak, 3,408,904 B."""
    torch.manual_seed(0)
    model, x = SharedAcrossBreak().train(), torch.randn(512, 256)
    run = two_outputs_step(x)
    ref = copy.deepcopy(model)
    run(torch.compile(ref, backend="aot_eager"))  # eager sums the shared gradients in another order
    m, compiled, be, floor = planned_at_floor(model, run)
    run(compiled)  # the first graph compiled again, with its new plan
    assert_same([p.grad for p in m.parameters()], [p.grad for p in ref.parameters()])
    assert profiled_peak_bytes(lambda: run(compiled, zero=False)) == be.predicted_peak_bytes() <= floor


class ViewOfEarlier(nn.Module):
    """The second graph returns a view of the first graph's output."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(256, 256), nn.Linear(256, 256)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        torch._dynamo.graph_break()
        return torch.relu(self.l2(h)), h[:, :64]


def test_an_output_viewing_an_earlier_graphs_value_is_counted():
    """NOTE [ An output viewing an input ]: the view's backward makes the whole input's gradient
    before the second graph's backward runs: at the floor named (2,360,328 B) the step measured
    2,884,616 B (the whole 524,288 B input's gradient). Now the floor named is the allocator's
    peak, 2,884,616 B."""
    torch.manual_seed(0)
    model, x = ViewOfEarlier().train(), torch.randn(512, 256)
    run = two_outputs_step(x)
    ref = copy.deepcopy(model)
    run(torch.compile(ref, backend="aot_eager"))
    m, compiled, be, floor = planned_at_floor(model, run)
    run(compiled)
    assert_same([p.grad for p in m.parameters()], [p.grad for p in ref.parameters()])
    assert profiled_peak_bytes(lambda: run(compiled, zero=False)) == be.predicted_peak_bytes() <= floor


# Synthetic step graphs where planning first-come failed above the smallest budget that planned
# (at 45-46, 34-35 and 40-44 MiB respectively).
CROWDED = [(4, ("chain", "skip", "chain")), (5, ("skip", "chain")), (11, ("chain", "chain"))]


@pytest.mark.parametrize("seed, shapes", CROWDED)
def test_graphs_sharing_budget_mb_plan_at_every_budget_above_the_floor(seed, shapes):
    """Graphs planned in first-run order (synthetic problems, no Dynamo): the floors the
    errors name lead to a budget that plans, every budget above it plans too (where taking the
    earlier graphs' plans first-come failed), the step's predicted peak fits it, and each plan's
    budget is at most what the graphs before it leave."""
    from fxckpt.compile import FxckptBackend
    from fxckpt.core.simulate import simulate
    from fxckpt.core.synthetic import random_problem

    problems = [random_problem(6, shape, seed=seed + k) for k, shape in enumerate(shapes)]

    def plan_all(budget_mb):
        be = FxckptBackend(budget_mb=budget_mb, solver="auto")
        for frame, p in enumerate(problems):
            be.plan(p, frame)
        return be

    floor, tries = 1, 0  # follow the errors: each names the smallest budget for the graphs seen so far
    while True:
        try:
            plan_all(floor / MIB)
            break
        except InfeasibleBudgetError as e:
            assert e.min_feasible_bytes > floor
            floor, tries = e.min_feasible_bytes, tries + 1
    # each graph may name a floor twice: when it is planned, and when the outputs of a graph after
    # it are counted in its backward (NOTE [ Later graphs' outputs outlive their backward ])
    assert tries <= 2 * len(problems)
    none = sum(simulate(p).boundary_bytes for p in problems[:-1]) + simulate(problems[-1]).peak_bytes
    for budget in range(floor, none + 2 * MIB, MIB):
        be = plan_all(budget / MIB)
        assert be.predicted_peak_bytes() <= budget, (budget, [g.plan.summary() for g in be.graphs])
        held = 0
        for g in be.graphs:
            # less where a graph before it was planned again later (NOTE [ Later graphs' outputs ...])
            assert g.plan.budget_bytes <= budget - held and g.peak_bytes + held <= budget
            assert simulate(g.problem, g.problem.indices(g.plan.recompute)).boundary_bytes == g.boundary_bytes
            held += g.boundary_bytes


def test_cache_key_names_budget_and_solver():
    be = fxckpt.backend(budget_mb=2.6, compiler="aot_eager")
    assert be.uuid() != fxckpt.backend(budget_mb=2.5, compiler="aot_eager").uuid()
    assert be.uuid() != fxckpt.backend(budget_mb=2.6, solver="greedy", compiler="aot_eager").uuid()
    assert be.uuid() == fxckpt.backend(budget_mb=2.6, compiler="aot_eager").uuid()


def zero_outputs(gm: torch.fx.GraphModule) -> None:
    """A fault: `gm` (a backward graph) returns its tensor outputs (the gradients) multiplied by 0."""
    out = gm.graph.output_node()
    with gm.graph.inserting_before(out):
        zeroed = []
        for a in out.args[0]:
            if isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor):
                z = gm.graph.call_function(torch.ops.aten.mul.Tensor, (a, 0.0))
                z.meta = dict(a.meta)
                a = z
            zeroed.append(a)
    out.args = (tuple(zeroed),)
    gm.recompile()


def test_verify_checks_once_and_falls_back_to_the_eager_reference(monkeypatch):
    """aot_eager: our plan's gradients equal the reference's bitwise; where our backward graph is
    wrong (its gradients zeroed), verify warns, says how many differ, and runs the reference:
    gradients bitwise eager's, dropout included (the check draws no extra random numbers).
    Failed before: the reference was our own partition with nothing recomputed, zeroed as well."""
    import fxckpt.compile as compile_mod
    import fxckpt.compile.verify as verify

    model, x = make_dropout_mlp()
    ref_grads, _ = step(copy.deepcopy(model), x)
    runs = []  # the check's runs: ours and the reference's
    real = verify.gradients
    monkeypatch.setattr(verify, "gradients", lambda *a: runs.append(a[0]) or real(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # equal bitwise: no warning
        compiled, be, grads, _ = compiled_step(model, x, budget=0.7, compiler="aot_eager", verify=True)
    assert len(runs) == 2 and fxckpt.compiled_plans(be)[0].recompute
    assert_same(grads, ref_grads)

    def faulty(joint, **kwargs):
        fw, bw = partition(joint, **kwargs)
        zero_outputs(bw)
        return fw, bw
    partition = compile_mod.partition
    monkeypatch.setattr(compile_mod, "partition", faulty)
    torch._dynamo.reset()
    runs.clear()
    with pytest.warns(RuntimeWarning, match=r"10 of 10 gradients \(largest difference 1 .*fell back to eager kernels"):
        compiled, _, grads, _ = compiled_step(model, x, budget=0.7, compiler="aot_eager", verify=True)
    assert_same(grads, ref_grads)
    assert_same(step(compiled, x)[0], ref_grads)  # the second step: no second check
    assert len(runs) == 2


def test_inductor_fault_is_caught_and_falls_back_without_layout_optimization():
    """Inductor computes wrong gradients where its layout optimization is on (as on the diffusers
    U-Net, NOTE [ Why verify compiled gradients ]; here injected: the backward's gradients zeroed
    while `layout_optimization` is on). verify warns and falls back to inductor compiled with
    `layout_optimization=False`: the step's gradients and BatchNorm statistics equal eager's
    within tolerance, dropout included (inductor draws aten's random numbers under verify).
    Failed before: the reference was compiled by the same inductor, so the check saw no
    difference and the step's gradients were zeros."""
    cnn, x = make_cnn()
    model = nn.Sequential(cnn, nn.Dropout(0.3)).train()
    ref_grads, ref_buffers = step(copy.deepcopy(model), x)
    layouts = []

    def faulty_inductor(gm, example_inputs, **kwargs):
        from torch._inductor.compile_fx import compile_fx_inner

        layout = torch._inductor.config.layout_optimization
        if kwargs.get("is_backward"):
            layouts.append(layout)
            if layout:
                zero_outputs(gm)
        return compile_fx_inner(gm, example_inputs, **kwargs)

    m = copy.deepcopy(model)
    be = fxckpt.backend(budget=0.9, verify=True)
    be.inner_compile = faulty_inductor
    with pytest.warns(RuntimeWarning, match="differ from the same graph run with eager kernels.*fell back to "
                                            "inductor with layout_optimization=False"):
        grads, buffers = step(torch.compile(m, backend=be), x)
    assert layouts == [True, False]  # ours, then the fallback
    for g, r in zip(grads + buffers, ref_grads + ref_buffers, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_verify_runs_the_reference_where_layout_optimization_off_differs_too(monkeypatch):
    """The last fallback: where inductor without layout optimization differs too, the eager
    reference runs, and the warning says both (no inductor compile: the compiles are stand-ins)."""
    import fxckpt.compile.verify as verify

    torch.manual_seed(0)
    x, w = torch.randn(4, 8), torch.randn(8, 8, requires_grad=True)

    def f(x, w):
        return (torch.tanh(x @ w),)

    def wrong(x, w):  # w's gradient zero
        return (torch.tanh(x @ w.detach()) + 0 * w.sum(),)
    fallbacks = []
    monkeypatch.setattr(verify, "fallback_compile", lambda *a: fallbacks.append(a) or wrong)
    gm = torch.fx.symbolic_trace(f)
    run = verify.verified(gm, [x, w], wrong, verify.reference_compile(gm, [x, w]), "inductor", {})
    with pytest.warns(RuntimeWarning, match=r"1 of 1 gradients .*with layout_optimization=False, 1 of 1 gradients "
                                            r".*fell back to eager kernels"):
        (out,) = run(x, w)
    assert len(fallbacks) == 1
    (grad,) = torch.autograd.grad(out.sum(), w)
    assert torch.equal(grad, torch.autograd.grad(f(x, w)[0].sum(), w)[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        fxckpt.backend()
    with pytest.raises(ValueError, match="positive"):
        fxckpt.backend(budget_mb=-1)
    with pytest.raises(ValueError, match="unknown solver"):
        fxckpt.backend(budget=0.5, solver="nope")
    with pytest.raises(ValueError, match="inductor"):
        fxckpt.backend(budget=0.5, compiler="aot_eager", max_autotune=True)
    with pytest.raises(TypeError, match="fxckpt backend"):
        fxckpt.compiled_plans(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="fallback_random"):
        fxckpt.backend(budget=0.5, verify=True, fallback_random=False)


# Metadata that names fxckpt without the entry point shadows the installed one (importlib.metadata
# takes the first `fxckpt` on sys.path: a stale fxckpt.egg-info in the working directory, as
# /work/main's from before the entry point was added); Dynamo caches what it found per process.
_NAME_WITHOUT_ENTRY_POINT = """
import pathlib, sys, tempfile
stale = pathlib.Path(tempfile.mkdtemp()) / "fxckpt-0.1.0.dist-info"
stale.mkdir()
(stale / "METADATA").write_text("Metadata-Version: 2.1\\nName: fxckpt\\nVersion: 0.1.0\\n")
sys.path.insert(0, str(stale.parent))
import torch
assert "fxckpt" not in torch._dynamo.list_backends(exclude_tags=())  # discovery ran, and is cached
import fxckpt.compile
compiled = torch.compile(torch.nn.Linear(2, 2), backend="fxckpt", options={"budget": 1.0, "compiler": "aot_eager"})
compiled(torch.randn(3, 2)).sum().backward()
assert len(fxckpt.compiled_plans(compiled)) == 1
print("ok")
"""


def test_backend_name_resolves_without_its_entry_point():
    """backend="fxckpt" works once fxckpt.compile is imported, even where the package metadata
    that Dynamo reads lacks the entry point (InvalidBackend: 'fxckpt' before)."""
    out = subprocess.run([sys.executable, "-c", _NAME_WITHOUT_ENTRY_POINT], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_inductor_matches_default_compile_with_dropout():
    """Inductor: gradients equal torch.compile's own (same seeds, so the same dropout masks)
    within float tolerance; the measured peak fits the budget."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, 256), nn.Tanh(),
                          nn.Linear(256, 1)).train()
    x = torch.randn(256, 256)
    ref_grads, _ = step(torch.compile(copy.deepcopy(model)), x)
    torch._dynamo.reset()
    compiled, be, grads, _ = compiled_step(model, x, budget=0.7)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    (plan,) = fxckpt.compiled_plans(be)
    assert plan.recompute
    # inductor's random numbers are saved, never drawn again (whatever the import order)
    assert not any("inductor_random" in r.op and r.decision == "recompute" for r in plan.rows), plan.summary()
    # NOTE [ Fused buffers ]: what inductor really holds, never under it
    peak = measured_peak(compiled, x)
    assert peak <= plan.predicted_peak_bytes <= plan.budget_bytes
    assert peak >= 0.95 * plan.predicted_peak_bytes, (peak, plan.summary())


def test_inductor_cnn_with_batchnorm_measured_within_5_percent_of_prediction():
    """Inductor on the CNN with BatchNorm and a residual block (channels-last layout, fused
    BatchNorm and ReLU masks, an inlined residual gradient): the allocator's peak within 5% of
    the prediction and within the budget at 90% and at 50%, which is below this CNN's floor
    (70% too): planned at its smallest feasible peak. Before the compile path modelled
    inductor's layout and fusion, the prediction was 15-26% over the measurement; before it
    modelled recomputation inside inductor's kernels (NOTE [ Recomputation inside inductor's
    kernels ]), the allocator exceeded the floor's budget (537,516 B measured, 521,620 B
    predicted, 522,348 B budgeted)."""
    model, x = make_cnn()
    for fraction in (0.9, 0.5):
        torch._dynamo.reset()
        compiled, be, _, _ = compiled_step(model, x, budget=fraction)
        (plan,) = fxckpt.compiled_plans(be)
        peak = measured_peak(compiled, x)
        assert abs(peak - plan.predicted_peak_bytes) <= 0.05 * plan.predicted_peak_bytes, (fraction, peak, plan.summary())
        assert peak <= plan.budget_bytes, (fraction, peak, plan.summary())
        if fraction == 0.5:  # at the floor
            with pytest.raises(InfeasibleBudgetError):
                fxckpt.core.solvers.solve(be.graphs[0].problem, plan.predicted_peak_bytes - 2**16, "auto")


@pytest.mark.parametrize("backend", ["aot_eager", "eager"])
def test_compiling_the_wrapper_runs_its_plan_uncompiled(backend, capfd, monkeypatch):
    """`torch.compile(auto_checkpoint(...))` (issue 10 item 13): Dynamo used to trace the
    saved-tensor-hook runtime (81 graph breaks, recompile-limit warnings, tracebacks on stderr).
    The training step now runs uncompiled, bitwise like the eager wrapper and at its measured
    peak, with one UncompiledRuntimeWarning pointing to backend="fxckpt" and nothing on stderr."""
    monkeypatch.setattr(fxckpt_api, "_warned_uncompiled", False)
    model, x = make_transformer()
    ckpt = fxckpt.auto_checkpoint(model, x, budget=0.5)
    eager = fxckpt.auto_checkpoint(copy.deepcopy(model), x, budget=0.5)
    compiled = torch.compile(ckpt, backend=backend)
    capfd.readouterr()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with pytest.warns(fxckpt.UncompiledRuntimeWarning, match='backend="fxckpt"') as caught:
        for seed in (1, 2):
            assert all(torch.equal(a, b) for a, b in zip(step(compiled, x, seed)[0], step(eager, x, seed)[0]))
    assert len(caught) == 1
    assert capfd.readouterr().err == ""
    assert sum(counters["graph_break"].values()) == 1 and not counters["stats"]["unique_graphs"]
    assert ckpt.graph_module.fxckpt_runtime.replays == eager.graph_module.fxckpt_runtime.replays != {}
    assert measured_peak(compiled, x) == measured_peak(eager, x)
    with warnings.catch_warnings():  # FlopCounterMode's global module hooks and an OptimizedModule
        warnings.filterwarnings("ignore", "Using `torch.compile", UserWarning)
        assert fxckpt.measure_step(compiled, x).peak_bytes == ckpt.plan.dry_run_peak_bytes <= ckpt.plan.budget_bytes

    ckpt.eval()  # eval: the original model compiles as usual
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_submodules_and_module_compile(monkeypatch):
    """`ckpt.compile()` runs the plan like `torch.compile(ckpt)`; a compiled block put back into
    the model is traced through by the next plan (its graph inlines blocks), gradients bitwise."""
    model, x = make_transformer()
    ref = copy.deepcopy(model)
    ckpt = fxckpt.auto_checkpoint(model, x, budget=0.5)
    ckpt.compile(backend="aot_eager")
    monkeypatch.setattr(fxckpt_api, "_warned_uncompiled", False)
    with pytest.warns(fxckpt.UncompiledRuntimeWarning):
        assert all(torch.equal(a, b) for a, b in zip(step(ckpt, x)[0], step(ref, x)[0]))
    ckpt.blocks[0] = torch.compile(ckpt.blocks[0], backend="aot_eager")
    assert all(torch.equal(a, b) for a, b in zip(step(ckpt, x)[0], step(ref, x)[0]))
    assert len(ckpt.plans) == 2  # the model changed: planned again


class UnusedParameters(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.unused = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return h + 0 * self.b(h)  # b's gradient is zeros, unused's is None


def test_unused_and_zero_gradients_match_eager():
    """A parameter on no path keeps grad None, one on a path multiplied by zero gets zeros, as in eager."""
    torch.manual_seed(0)
    model, x = UnusedParameters().train(), torch.randn(32, 64)
    eager = _grads_from_none(copy.deepcopy(model), x)
    ours = _grads_from_none(torch.compile(copy.deepcopy(model), backend=fxckpt.backend(budget=0.5, compiler="aot_eager")), x)
    assert [g is None for g in ours] == [g is None for g in eager] == [False] * 4 + [True] * 2
    assert_same([g for g in ours if g is not None], [g for g in eager if g is not None])


def _grads_from_none(model, x):
    torch.manual_seed(1)
    model(x).sum().backward()
    return [p.grad for p in model.parameters()]


def test_compiled_plans_of_a_ddp_model():
    """`compiled_plans` finds the backend under DistributedDataParallel (a TypeError before)."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model, x = make_transformer()
        for be in (fxckpt.backend(budget=0.7, compiler="aot_eager"), None):
            torch._dynamo.reset()
            compiled = torch.compile(DDP(copy.deepcopy(model)), backend=be) if be is not None else \
                torch.compile(DDP(copy.deepcopy(model)), backend="fxckpt", options={"budget": 0.7, "compiler": "aot_eager"})
            compiled(x).sum().backward()
            plans = fxckpt.compiled_plans(compiled)  # TypeError before
            assert plans and plans[0].recompute
            if be is not None:
                assert plans == be.plans
    finally:
        dist.destroy_process_group()


class _AttentionNet(nn.Module):
    """Causal flash attention, GroupNorm and cumsum: eager kernels with scratch beyond their outputs."""

    def __init__(self, d=64):
        super().__init__()
        self.norm, self.qkv, self.out = nn.GroupNorm(4, d), nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):  # x: B, T, d
        h = self.norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = (t.unflatten(-1, (4, -1)).transpose(1, 2) for t in self.qkv(h).chunk(3, -1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
        return (x + torch.relu(self.out(a)).cumsum(1)).square().mean()


def test_aot_eager_charges_the_eager_kernels_scratch():
    """Under aot_eager every op runs its eager kernel, so each is charged the scratch the eager
    path charges (NOTE [ Op scratch the fake values do not show ]): before, only inductor's extern
    kernels were, and a net's flash-attention backward took 122,880 B beyond an aot_eager plan."""
    torch.manual_seed(0)
    model, x = _AttentionNet().train(), torch.randn(8, 48, 64)
    eager_grads, _ = step(model, x)
    for fraction in (0.9, 0.5):
        torch._dynamo.reset()
        compiled, be, grads, _ = compiled_step(model, x, budget=fraction, compiler="aot_eager")
        assert_same(eager_grads, grads)
        (plan,) = fxckpt.compiled_plans(be)
        peak = measured_peak(compiled, x)
        # 4 B over at 0.5 (833,932 for 833,928) while a scalar output was charged no eager loss
        # (NOTE [ The eager loss ]): `loss_of` sums it into a new scalar
        assert peak <= plan.budget_bytes, (fraction, peak, plan.summary())
        assert abs(peak - plan.predicted_peak_bytes) <= 0.02 * plan.predicted_peak_bytes, (fraction, peak, plan.summary())


class _GroupedEmbedding(nn.Module):
    def __init__(self, vocab=97, d=64):
        super().__init__()
        self.embed, self.norm = nn.Embedding(vocab, d), nn.GroupNorm(4, d)
        self.conv, self.head = nn.Conv1d(d, d, 5, padding=2, groups=d), nn.Linear(d, vocab)

    def forward(self, ids):
        h = self.conv(self.norm(self.embed(ids).transpose(1, 2))).transpose(1, 2)
        return torch.nn.functional.cross_entropy(self.head(h).flatten(0, 1), ids.roll(-1, 1).flatten())


def test_inductor_gets_views_as_their_base():
    """NOTE [ Views cross the boundary as their base ]: GroupNorm's grouped view of a transposed
    embedding, saved as a strided view, crashed inductor's fused backward kernel (fp64); replayed
    from its base, gradients match eager as the default partitioner's do."""
    torch.manual_seed(0)
    model, ids = _GroupedEmbedding().double(), torch.randint(0, 97, (8, 48))
    eager, _ = step(model, ids)
    _, _, grads, _ = compiled_step(model, ids, budget=1.0)
    for a, b in zip(eager, grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


class _TiedGatedNet(nn.Module):
    """A depthwise convolution, GroupNorm, causal attention beside a SiLU gate, dropout, a cumsum
    and a head tied to the embedding, with the loss in the graph. (GroupNorm straight on the
    transposed embedding, as in `_GroupedEmbedding`, made inductor's fused embedding/GroupNorm
    backward kernel write out of bounds under this backend at these sizes: heap corruption.)"""

    def __init__(self, vocab=61, d=32):
        super().__init__()
        self.embed, self.norm = nn.Embedding(vocab, d), nn.GroupNorm(4, d)
        self.conv = nn.Conv1d(d, d, 5, padding=2, groups=d)
        self.qkv, self.gate, self.out = nn.Linear(d, 3 * d), nn.Linear(d, 4 * d), nn.Linear(2 * d, d)
        self.drop, self.final = nn.Dropout(0.1), nn.LayerNorm(d)

    def forward(self, ids):
        x = self.embed(ids)
        h = self.norm(self.conv(x.transpose(1, 2))).transpose(1, 2)
        q, k, v = (t.unflatten(-1, (4, -1)).transpose(1, 2) for t in self.qkv(h).chunk(3, -1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
        u, w = self.gate(h).chunk(2, -1)
        y = torch.relu(self.out(self.drop(torch.cat([a, (torch.nn.functional.silu(u) * w)[..., : a.shape[-1]]], -1))))
        logits = torch.nn.functional.linear(self.final(x + y.cumsum(1)), self.embed.weight)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten())


def test_inductor_post_grad_rewrites_stay_within_the_budget():
    """NOTE [ Inductor's post-grad rewrites ] and (4) of NOTE [ Recomputation inside inductor's
    kernels ]: the tied head's weight gradient is an addmm at the end of backward, the gate's
    gradient is written into its cat in the kernel that recomputes the gate. Before they were
    modelled, this net measured 502,412 B for 463,248 B predicted at 90% and 411,276 B for
    363,396 B at 70%, over the budget at both. (4) counts a replay kernel's backward ops whether or
    not the plan recomputes there, so the prediction may exceed the measurement: by 3.2% at 90%,
    and by 8.3% at 70% on the plan `auto` has chosen since 8b91701 (368,396 B for 401,800 B)."""
    torch.manual_seed(0)
    model, ids = _TiedGatedNet().train(), torch.randint(0, 61, (4, 32))
    for fraction, over_count in ((0.9, 0.05), (0.7, 0.10)):
        torch._dynamo.reset()
        compiled, be, _, _ = compiled_step(model, ids, budget=fraction)
        (plan,) = fxckpt.compiled_plans(be)
        peak = measured_peak(compiled, ids)
        assert peak <= plan.predicted_peak_bytes <= plan.budget_bytes, (fraction, peak, plan.summary())
        assert plan.predicted_peak_bytes - peak <= over_count * plan.predicted_peak_bytes, (fraction, peak, plan.summary())


_TRANSPOSED_COPY = """
import copy, torch, torch.nn as nn, torch.nn.functional as F, fxckpt

class Net(nn.Module):
    def __init__(s, v=97, d=64):
        super().__init__()
        s.e, s.n, s.o = nn.Embedding(v, d), nn.GroupNorm(4, d), nn.Linear(d, v)
        s.dw = nn.Conv1d(d, d, 5, padding=2, groups=d)

    def forward(s, ids):
        x = s.e(ids)
        h = x + s.dw(s.n(x.transpose(1, 2))).transpose(1, 2)
        return F.cross_entropy(s.o(h).flatten(0, 1), ids.roll(-1, 1).flatten())

def grads(m):
    for p in m.parameters():
        p.grad = None
    m(ids).backward()
    return [p.grad.clone() for p in m.parameters()]

torch.manual_seed(0)
ids, net = torch.randint(0, 97, (8, 48)), Net()
ref = grads(torch.compile(copy.deepcopy(net)))
torch._dynamo.reset()
be = fxckpt.backend(budget=1.0)
for g, r in zip(grads(torch.compile(copy.deepcopy(net), backend=be)), ref, strict=True):
    torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
(plan,) = fxckpt.compiled_plans(be)
assert "clone" in plan.recompute, plan.summary()
print("ok")
"""


def test_inductor_fused_transposed_copy_is_replayed():
    """Inductor, embedding -> transpose -> GroupNorm -> depthwise Conv1d with a residual: the
    contiguous copy of the transposed embedding is replayed in backward, not saved (NOTE [ Fused
    copies are replayed, never saved ]), and the gradients equal torch.compile's own. Saved, the
    first backward aborted the process (inductor's fused GroupNorm + embedding backward wrote
    outside the embedding's gradient), hence the subprocess."""
    out = subprocess.run([sys.executable, "-c", _TRANSPOSED_COPY], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.returncode, out.stderr[-3000:])


def test_inductor_budget_rests_on_the_code_inductor_generated():
    """NOTE [ Inductor's code is the prediction ]: the quick zoo net's forward kernels emit outputs
    the joint-graph model does not know of, and its allocator peaks at the end of the forward;
    before the prediction was read from inductor's generated code, the allocator went 48,005 B
    over the budget at 90% (10,629,168 B for 10,581,163 B). Now, at 90% and at its floor (the floor
    plan's code: `test_inductor_floor_is_the_smallest_peak_its_code_held`) the allocator fits the
    budget and the prediction within 5% (measured: equal to the byte, but the eager loss's 4 B)."""
    from fxckpt.benchmark import zoo

    model, example = zoo.ZOO["quick"].build()
    compiled, be, _, _ = compiled_step(model, example, budget=0.9)
    (plan,) = fxckpt.compiled_plans(be)
    peak = measured_peak(compiled, example)
    assert peak <= plan.budget_bytes, (peak, plan.summary())
    assert abs(peak - plan.predicted_peak_bytes) <= 0.05 * peak, (peak, plan.summary())


@pytest.mark.slow
def test_inductor_floor_is_the_smallest_peak_its_code_held():
    """A `budget_mb` below what even the floor plan's code holds names that peak, and it holds:
    the quick zoo net (NOTE [ Inductor's code is the prediction ])."""
    from fxckpt.benchmark import zoo

    model, example = zoo.ZOO["quick"].build()
    with pytest.raises(Exception) as err:
        compiled_step(model, example, budget_mb=1)
    floor = infeasible(err.value).min_feasible_bytes
    assert floor > MIB, err.value
    torch._dynamo.reset()
    compiled, be, _, _ = compiled_step(model, example, budget_mb=floor / MIB)
    (plan,) = fxckpt.compiled_plans(be)
    peak = measured_peak(compiled, example)
    assert peak <= floor, (floor, peak, plan.summary())
    assert abs(peak - plan.predicted_peak_bytes) <= 0.05 * peak, (floor, peak, plan.summary())


class _PoolCNN(nn.Module):
    """BatchNorm, max-pool, Hardswish, a grouped convolution, adaptive pooling, cross-entropy."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.Hardswish(),
            nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(128, 10)

    def forward(self, x, y):
        return F.cross_entropy(self.fc(self.f(x).flatten(1)), y)


def test_inductor_replans_to_the_floor_plan_before_giving_up_a_fraction(caplog):
    """At 70%, planning lower twice gave the same plan, whose code held 2,624,756 B over the
    fraction's 2,617,022 B; the backend then gave up the fraction (planned at that peak, with a
    warning) although the floor plan's code holds 2,155,508 B. Now the floor plan is tried before
    a fraction is given up, and the 70% budget holds as asked. And the prediction is the
    allocator's peak within 5% (to the eager loss's 4 B): before the code walk counted what its
    fallback kernels allocate (NOTE [ Inductor's fallbacks are probed ], NOTE [ A fallback's
    outputs exist while it runs ]), the floor plan was predicted at 1,884,020 B for 2,155,512 B
    measured: 271,488 B, a `convolution_backward`'s three outputs, counted after its call, not
    beside its scratch while it runs."""
    torch.manual_seed(0)
    model = _PoolCNN().train()
    example = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    with caplog.at_level("WARNING", logger="fxckpt.compile"):
        compiled, be, _, _ = compiled_step(model, example, budget=0.7)
    (plan,) = fxckpt.compiled_plans(be)
    assert not [r for r in caplog.records if "smallest feasible peak" in r.getMessage()], plan.summary()
    peak = measured_peak(compiled, example)
    assert peak <= plan.budget_bytes, (peak, plan.summary())
    assert abs(peak - plan.predicted_peak_bytes) <= 0.05 * peak, (peak, plan.summary())



class _LateWideCNN(nn.Module):
    """A wide stem over a large image, pooled hard, then 3x3 convolutions with large weights:
    the backward's peak is at the stem, after the late convolutions' weights are done with."""

    def __init__(self, stem: int, pool: int, wide: int, late: int):
        super().__init__()
        self.pool = pool
        self.stem, self.wide = nn.Conv2d(3, stem, 3, padding=1), nn.Conv2d(stem, wide, 1)
        self.late, self.fc = nn.Conv2d(wide, late, 3, padding=1), nn.Linear(late, 10)

    def forward(self, x, y):
        h = F.max_pool2d(torch.relu(self.stem(x)), self.pool)
        h = torch.relu(self.late(torch.relu(self.wide(h))))
        return F.cross_entropy(self.fc(h.mean((2, 3))), y)


@pytest.mark.parametrize("widths", [(64, 8, 128, 256), (16, 8, 256, 256)], ids=["copied-weights", "dead-locals"])
def test_inductor_prediction_follows_copies_and_locals_of_the_code(widths):
    """What the code walk got wrong on CNNs, each case +4-6% over the allocator before:
    - NOTE [ A saved input the forward copied ]: inductor copies the 3x3 weights channels-last in
      the forward and saves the copies; the walk held them to the end of the backward (the small
      ResNet of benchmarks/results/2026-12-02/compile_bench.md: 12,127,544 B predicted, 9,298,224 B
      measured). Here: 19,596,368 B predicted, 18,416,716 B measured.
    - NOTE [ A graph's locals die when it returns ]: the last convolution's output, read only by
      the forward's last kernel, was held across the boundary: 12,562,520 B for 12,038,156 B.
    Now the prediction is the allocator's peak within 1% (measured: to the eager loss's 4 B)."""
    torch.manual_seed(0)
    model = _LateWideCNN(*widths).train()
    example = (torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,)))
    compiled, be, _, _ = compiled_step(model, example, budget=1.0)
    (plan,) = fxckpt.compiled_plans(be)
    peak = measured_peak(compiled, example)
    assert peak <= plan.budget_bytes, (peak, plan.summary())
    assert abs(peak - plan.predicted_peak_bytes) <= 0.01 * peak, (peak, plan.summary())


def test_inductor_aims_lower_until_the_plan_changes(monkeypatch):
    """NOTE [ Aiming lower until the plan changes ]: where the code holds a few bytes more than
    the problem predicts (here made so: every plan's code 400 B over its figure, at a budget equal
    to the 70% plan's peak), aiming 16 B lower gave the same plan, and the backend went to the
    floor plan (39 values replayed, +1.9% FLOPs); now a repeated plan is not compiled again and
    the aim doubles lower until the plan changes: 33 replayed, +1.5%, three compiles."""
    import dataclasses

    from fxckpt.compile import _Partitioner

    torch.manual_seed(0)
    model = _PoolCNN().train()
    example = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    _, be, _, _ = compiled_step(model, example, budget=0.7)
    (first,) = fxckpt.compiled_plans(be)
    held = _Partitioner.held

    def over(self, extra=400):
        h = held(self)
        return h and dataclasses.replace(h, forward_peak=h.forward_peak + extra, backward_peak=h.backward_peak + extra)

    monkeypatch.setattr(_Partitioner, "held", over)
    compiles = []
    torch._dynamo.reset()
    m = copy.deepcopy(model)
    be = fxckpt.backend(budget_mb=first.predicted_peak_bytes / MIB)

    def counted(gm, example_inputs, **kwargs):
        from torch._inductor.compile_fx import compile_fx_inner
        compiles.append(gm)
        return compile_fx_inner(gm, example_inputs, **kwargs)

    be.inner_compile = counted
    step(torch.compile(m, backend=be), example)
    (plan,) = fxckpt.compiled_plans(be)
    floor = be.plan(be.graphs[0].problem, be.graphs[0].frame, floor=True)
    assert plan.predicted_peak_bytes <= plan.budget_bytes, plan.summary()
    assert plan.recompute != first.recompute and plan.recompute != floor.recompute, plan.summary()
    assert plan.recompute_flops < floor.recompute_flops, (plan.summary(), floor.summary())
    assert len(compiles) == 2 * 3, len(compiles)  # forward and backward, three plans


@pytest.mark.slow
def test_inductor_floor_counts_what_its_fallback_kernels_allocate():
    """At the pooling CNN's floor `budget_mb` (2,166,196 B), the plan read from inductor's code
    without its fallbacks' allocations (NOTE [ Inductor's fallbacks are probed ], NOTE [ A
    fallback's outputs exist while it runs ]) was predicted at 2,159,628 B and the allocator
    measured 2,398,476 B, over the budget, at an `_adaptive_avg_pool2d_backward` that holds
    262,144 B beside its output on a channels-last input; now the prediction is the allocator's
    2,155,508 B (another plan: the walk no longer takes that one for the smallest).
    (The same miss at 70%: `test_inductor_replans_to_the_floor_plan_before_giving_up_a_fraction`.)
    And the floor named is what the plan at it holds (NOTE [ The floor plan is not the code's
    floor ]): the floor plan's code held 2,520,696 B, named, where the plan at that budget held
    2,394,000 B (measured 2,393,996 B), so budgets in between were refused."""
    torch.manual_seed(0)
    model = _PoolCNN().train()
    example = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    with pytest.raises(Exception) as err:
        compiled_step(model, example, budget_mb=0.01)
    floor = infeasible(err.value).min_feasible_bytes
    torch._dynamo.reset()
    compiled, be, _, _ = compiled_step(model, example, budget_mb=floor / MIB)
    (plan,) = fxckpt.compiled_plans(be)
    peak = measured_peak(compiled, example)
    assert peak <= floor, (floor, peak, plan.summary())
    assert abs(peak - plan.predicted_peak_bytes) <= 0.05 * peak, (floor, peak, plan.summary())
    assert plan.predicted_peak_bytes >= 0.99 * floor, (floor, plan.summary())


class _WindowBlock(nn.Module):
    """Swin's block: windowed attention over a B, H, W, C map with a cyclic shift (roll), a
    relative-position bias gathered from a table by an index buffer, LayerScale, drop path."""

    def __init__(self, d, shift, w=4, heads=4):
        super().__init__()
        self.w, self.heads, self.shift = w, heads, shift
        self.n1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.table = nn.Parameter(torch.randn((2 * w - 1) ** 2, heads) * 0.02)
        c = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        r = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0) + (w - 1)
        self.register_buffer("idx", r[..., 0] * (2 * w - 1) + r[..., 1], persistent=False)
        self.n2, self.mlp = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.g1, self.g2 = nn.Parameter(torch.full((d,), 0.1)), nn.Parameter(torch.full((d,), 0.1))

    def drop_path(self, x, p=0.2):
        return x * x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1 - p) / (1 - p)

    def forward(self, x):  # B, H, W, C
        B, H, W, C = x.shape
        w, heads = self.w, self.heads
        h = torch.roll(self.n1(x), (-self.shift, -self.shift), (1, 2))
        h = h.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        q, k, v = self.qkv(h).reshape(h.shape[0], w * w, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (C // heads) ** -0.5 + self.table[self.idx].permute(2, 0, 1)
        h = (att.softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, C)
        h = self.proj(h).view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        x = x + self.drop_path(self.g1 * torch.roll(h, (self.shift, self.shift), (1, 2)))
        return x + self.drop_path(self.g2 * self.mlp(self.n2(x)))


class _SwinLike(nn.Module):
    """A patch embedding permuted to B, H, W, C: the residual stream is a strided tensor."""

    def __init__(self, d=32):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.blocks = nn.Sequential(*[_WindowBlock(d, shift=2 * (i % 2)) for i in range(4)])
        self.head = nn.Linear(d, 10)

    def forward(self, img):
        return self.head(self.blocks(self.patch(img).permute(0, 2, 3, 1)).mean((1, 2))).square().mean()


def test_aot_eager_charges_the_copies_of_strided_operands():
    """NOTE [ Kernels that copy strided operands ]: the CPU layer norm copies its strided input
    (the Swin-like net's residual stream) into a temporary of its size, which no fake value shows.
    Uncharged, the plan at 50% recomputed a layer norm at its backward peak and the allocator
    measured 2,848,360 B for 2,799,720 B predicted and a 2,810,612 B budget."""
    torch.manual_seed(0)
    model, x = _SwinLike().train(), torch.randn(2, 3, 64, 64)
    eager_grads, _ = step(model, x)
    compiled, be, grads, _ = compiled_step(model, x, budget=0.5, compiler="aot_eager")
    assert_same(eager_grads, grads)
    (plan,) = fxckpt.compiled_plans(be)
    norms = [n.transient_bytes for n in be.graphs[0].problem.nodes if n.op == "aten.native_layer_norm"]
    assert norms == [2 * 16 * 16 * 32 * 4] * 8, norms  # each copies its 2x16x16x32 input
    peak = measured_peak(compiled, x)
    assert peak <= plan.budget_bytes, (peak, plan.summary())
    assert abs(peak - plan.predicted_peak_bytes) <= 0.05 * plan.predicted_peak_bytes, (peak, plan.summary())


def _uncounted_warnings(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if issubclass(w.category, fxckpt.UncountedMemoryWarning)]


def test_eager_history_of_a_compiled_graphs_input_is_reported():
    """NOTE [ Memory the plans do not see ], (1): a compiled block whose input eager code computed
    (tanh of a linear layer: addmm saved the 16x32 batch, tanh its 16x64 output) warns once,
    naming those bytes; the same code compiled with the block, or an input that is a leaf, does not."""
    torch.manual_seed(0)
    pre, block, x = nn.Linear(32, 64), nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)), torch.randn(16, 32)
    compiled = torch.compile(copy.deepcopy(block), backend=fxckpt.backend(budget=0.5, compiler="aot_eager"))

    def steps():
        for _ in range(2):
            compiled(torch.tanh(pre(x))).sum().backward()
    (message,) = _uncounted_warnings(steps)
    assert f"saved {(16 * 32 + 16 * 64) * 4:,} B" in message and "TanhBackward0" in message, message
    torch._dynamo.reset()
    whole = torch.compile(nn.Sequential(pre, nn.Tanh(), block), backend=fxckpt.backend(budget=0.5, compiler="aot_eager"))
    assert _uncounted_warnings(lambda: whole(x).sum().backward()) == []
    torch._dynamo.reset()
    leaf = torch.randn(16, 64, requires_grad=True)
    assert _uncounted_warnings(lambda: compiled(leaf).sum().backward()) == []


def test_a_graph_run_again_before_its_backward_is_reported():
    """NOTE [ Memory the plans do not see ], (2): a compiled block run twice before one backward
    holds two runs' saved bytes where its plan counts one: warned once, naming what a run holds;
    one run per backward is not warned."""
    torch.manual_seed(0)
    block, x, y = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)), torch.randn(16, 64), torch.randn(16, 64)
    be = fxckpt.backend(budget=0.5, compiler="aot_eager")
    compiled = torch.compile(copy.deepcopy(block), backend=be)
    (message,) = _uncounted_warnings(lambda: [(compiled(x) * compiled(y)).sum().backward() for _ in range(2)])
    (graph,) = be.graphs
    assert "ran again" in message and f"holds {graph.boundary_bytes:,} B" in message, message
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(block), backend=fxckpt.backend(budget=0.5, compiler="aot_eager"))
    assert _uncounted_warnings(lambda: [compiled(x).sum().backward() for _ in range(2)]) == []


def test_reporting_eager_history_unpacks_nothing():
    """NOTE [ Memory the plans do not see ]: the saved tensors behind a graph's input are read
    without their unpack hooks; a non-reentrant checkpoint region before the compiled graph ran
    its forward again for every saved tensor the report unpacked (BatchNorm statistics too)."""
    from torch.utils.checkpoint import checkpoint

    from fxckpt.compile.uncounted import eager_saved_bytes

    torch.manual_seed(0)
    pre, x, calls = nn.Linear(32, 64), torch.randn(16, 32), []

    def region(v):
        calls.append(1)
        return torch.tanh(pre(v))

    out = checkpoint(region, x, use_reentrant=False)
    assert eager_saved_bytes([out]) == (0, []) and len(calls) == 1  # only the placeholders: nothing held
    plain = torch.tanh(pre(x))
    assert eager_saved_bytes([plain])[0] == (16 * 32 + 16 * 64) * 4


class _JointCaught(Exception):
    pass


def inductor_joint(model, example):
    """The joint graph inductor hands its partitioner (with its arguments); compiling stops there."""
    from torch._inductor.custom_graph_pass import CustomPartitionerFn

    got = {}

    class Catch(CustomPartitionerFn):
        def __call__(self, joint, joint_inputs, *, num_fwd_outputs, static_lifetime_input_indices=None, **kwargs):
            got.update(joint=joint, num_fwd_outputs=num_fwd_outputs,
                       static_lifetime_input_indices=static_lifetime_input_indices)
            raise _JointCaught

        def uuid(self):
            return "catch"

    compiled = torch.compile(model, options={"custom_partitioner_fn": Catch(), "fx_graph_cache": False})
    with pytest.raises(Exception) as caught:
        call_model(compiled, example)
    assert got, caught.value
    return got


def saved_bytes(fw: torch.fx.GraphModule, num_fwd_outputs: int) -> int:
    """Bytes of the activations a forward graph saves for backward: each storage once, a view as
    its base (the inputs and their views excluded: they exist anyway)."""
    from fxckpt.compile.joint import _base

    (outputs,) = fw.graph.find_nodes(op="output")[0].args
    bases = {_base(a) for a in outputs[num_fwd_outputs:] if isinstance(a, torch.fx.Node)}
    return sum(b.meta["val"].untyped_storage().nbytes() for b in bases
               if b.op != "placeholder" and isinstance(b.meta.get("val"), torch.Tensor))


def test_inductor_plan_with_room_saves_no_more_than_torchs_partitioner():
    """Inductor, the pre-LN transformer with dropout at budget=1.0: fxckpt's forward saves no more
    bytes than torch's default partitioner does on the same joint graph, at no recompute cost
    (NOTE [ Free recomputations break ties by memory ]). Before, the plan recomputed nothing and
    saved every fused value backward reads: 1,756,164 B against torch's 1,312,256 B."""
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from fxckpt.compile import partition

    model, x = make_transformer()
    got = inductor_joint(model, x)
    n = got["num_fwd_outputs"]
    fw, _ = min_cut_rematerialization_partition(copy.deepcopy(got["joint"]), None, num_fwd_outputs=n,
                                                static_lifetime_input_indices=got["static_lifetime_input_indices"])
    be, plans = fxckpt.backend(budget=1.0), []
    ours, _ = partition(copy.deepcopy(got["joint"]), num_fwd_outputs=n, fusion=True,
                        static_lifetime_input_indices=got["static_lifetime_input_indices"],
                        choose=lambda problem: plans.append(be.plan(problem, None)) or plans[-1])
    (plan,) = plans
    assert saved_bytes(ours, n) <= saved_bytes(fw, n), (saved_bytes(ours, n), saved_bytes(fw, n), plan.summary())
    problem = be.graphs[0].problem
    # free replays only: every recomputed node is fused, and the FLOPs reported are still counted
    assert all(problem.cost[i] == 0 for i in problem.indices(plan.recompute)), plan.summary()
    assert plan.recompute_flops > 0 and plan.predicted_peak_bytes < plan.baseline_peak_bytes, plan.summary()


def test_inductor_plan_with_room_saves_no_more_than_torchs_partitioner_on_gpt2():
    """Inductor, tiny GPT-2 (GELU-tanh, LayerNorm, a tied embedding) at budget=1.0: fxckpt's
    forward saves no more bytes than torch's default partitioner on the same joint graph (NOTE
    [ Each graph fuses on its own ]). Before, values written in forward but computed inside
    their backward readers' kernels when replayed were charged a buffer and their FLOPs, and
    saved: GELU-tanh's `1 + tanh` and `1 - tanh^2`, the embedding gradient's zero `full`."""
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from fxckpt.compile import partition

    model, example = make_gpt2()
    got = inductor_joint(model, example)
    n, static = got["num_fwd_outputs"], got["static_lifetime_input_indices"]
    fw, _ = min_cut_rematerialization_partition(copy.deepcopy(got["joint"]), None, num_fwd_outputs=n,
                                                static_lifetime_input_indices=static)
    be, plans = fxckpt.backend(budget=1.0), []
    ours, _ = partition(copy.deepcopy(got["joint"]), num_fwd_outputs=n, fusion=True, static_lifetime_input_indices=static,
                        choose=lambda problem: plans.append(be.plan(problem, None)) or plans[-1])
    (plan,) = plans
    assert saved_bytes(ours, n) <= saved_bytes(fw, n), (saved_bytes(ours, n), saved_bytes(fw, n), plan.summary())
    problem = be.graphs[0].problem
    replayed = problem.indices(plan.recompute)
    assert all(problem.cost[i] == 0 for i in replayed), plan.summary()
    # the replays written in forward (`Buffer.inlined`), GELU-tanh's among them
    assert any(problem.nodes[i].op == "aten.tanh" for i in replayed), plan.summary()


@pytest.mark.slow
@pytest.mark.parametrize("make", [make_transformer, make_gpt2], ids=["transformer", "gpt2"])
def test_inductor_plan_with_room_holds_no_more_than_default_compile(make):
    """Inductor at budget=1.0: the allocator's peak is at most default torch.compile's, the
    prediction within 5% of it, and the gradients equal default compile's. The pre-LN
    transformer with dropout, before (every fused value saved): 1,806,412 B measured against
    default's 1,350,536 B; after, 1,334,856 B (the prediction to the byte, gradients bitwise
    default's). Tiny GPT-2 (two graphs), before NOTE [ Each graph fuses on its own ]: values
    written in forward and replayed inside backward kernels were saved (see
    `test_inductor_plan_with_room_saves_no_more_than_torchs_partitioner_on_gpt2`)."""
    model, x = make()
    x = {**x, "use_cache": False} if isinstance(x, dict) else x
    default = torch.compile(copy.deepcopy(model))
    ref_grads, _ = step(default, x)
    ref_peak = measured_peak(default, x)
    torch._dynamo.reset()
    compiled, be, grads, _ = compiled_step(model, x, budget=1.0)
    plans = fxckpt.compiled_plans(be)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    peak, predicted = measured_peak(compiled, x), be.predicted_peak_bytes()
    assert peak <= ref_peak, (peak, ref_peak, [p.summary() for p in plans])
    assert abs(peak - predicted) <= 0.05 * peak, (peak, predicted, [p.summary() for p in plans])


def test_replayed_tuple_ops_free_each_element_after_its_last_reader():
    """Every node of the CNN recomputed (solver "all"): each replayed batch norm's output dies
    after the ReLU that reads it, not with the 64-byte statistics its backward reads (NOTE [ Tuple
    elements die alone ]), and a recomputed ReLU's `detach` for backward no longer holds it to the
    forward's end (`_views_early`). Before, the plan was predicted at 0.89 MiB against the
    0.67 MiB of keeping everything, and refused."""
    model, x = make_cnn()
    ref_grads, ref_buffers = step(copy.deepcopy(model), x)
    compiled, be, grads, buffers = compiled_step(model, x, budget=1.0, compiler="aot_eager", solver="all")
    assert_same(grads, ref_grads)
    assert_same(buffers, ref_buffers)
    (plan,) = fxckpt.compiled_plans(be)
    assert len(plan.recompute) > 20
    peak = measured_peak(compiled, x)
    assert abs(peak - plan.predicted_peak_bytes) <= 0.01 * plan.predicted_peak_bytes, (peak, plan.summary())


class _CatTail(nn.Module):
    """A Linear's rows concatenated with a second input of any number of rows: under dynamic shapes
    that number is a symbol that only pointwise ops read (no matmul's FLOPs guard it)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(64, 256), nn.Linear(256, 4)

    def forward(self, x, y):
        z = torch.cat([self.fc(x), y])
        return self.out((torch.tanh(z) * torch.sigmoid(z)).mean(0))


def test_dynamic_shapes_plan_each_size():
    """`dynamic=True`: each size is planned for itself (NOTE [ A plan is for the sizes it was made
    for ]). Before, the second size crashed the partitioner (KeyError: the symbolic size the
    backward reads), and a plan made for 16 rows ran 1,024 rows at 5,902,360 B under a 1 MiB
    budget without a word; now a size the budget cannot hold is refused, naming its floor."""
    torch.manual_seed(0)
    model, x = _CatTail(), torch.randn(128, 64)
    budget = MIB
    compiled = torch.compile(copy.deepcopy(model), backend=fxckpt.backend(budget_mb=1.0, compiler="aot_eager"),
                             dynamic=True)
    for rows in (16, 32):
        y = torch.randn(rows, 256)
        ref, _ = step(copy.deepcopy(model), (x, y))
        assert_same(step(compiled, (x, y))[0], ref)
        (plan,) = fxckpt.compiled_plans(compiled)
        peak = measured_peak(compiled, (x, y))
        assert peak <= budget and abs(peak - plan.predicted_peak_bytes) <= 0.05 * peak, (rows, peak, plan.summary())
    with pytest.raises(Exception) as info:
        step(compiled, (x, torch.randn(1024, 256)))
    assert infeasible(info.value).min_feasible_bytes > 5 * MIB, info.value


def test_aot_eager_charges_the_cpu_dropout_noise():
    """SDPA with attention dropout at its aot_eager floor: AOTAutograd's `native_dropout` draws its
    noise into a float temporary of the input's size on CPU, the forward's peak here. Before, it
    was not charged: 393,216 B measured against the 385,676 B floor the error named; now the
    floor is the measured peak to the byte, gradients bitwise eager's (dropout included)."""
    from tests.models import make_sdpa_dropout

    model, x = make_sdpa_dropout()
    ref_grads, _ = step(copy.deepcopy(model), x)
    compiled, be, grads, _, _ = compiled_at_floor(model, x)
    assert_same(grads, ref_grads)
    (plan,) = fxckpt.compiled_plans(be)
    assert measured_peak(compiled, x) == plan.predicted_peak_bytes <= plan.budget_bytes, plan.summary()


class _AutocastNet(nn.Module):
    """bf16 autocast inside forward: the LayerNorm runs on a bf16 activation with fp32 weights."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.LayerNorm(256), nn.Linear(256, 256), nn.Tanh(),
                                 nn.Linear(256, 8))

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x).float()


def test_aot_eager_counts_the_real_dtypes_of_mixed_type_kernels():
    """CPU bf16 autocast, aot_eager, at the smallest feasible budget: the layer norm's statistics are
    fp32 (the eager kernel's), not the fake kernel's bf16, and its backward's scratch is probed on
    them (NOTE [ Fake dtypes of mixed-type kernels ]). Before, the floor the error named, 839,720 B,
    measured 841,768 B at the allocator; now the prediction is the measured peak to the byte."""
    torch.manual_seed(0)
    model, x = _AutocastNet().train(), torch.randn(256, 64)
    ref_grads, _ = step(copy.deepcopy(model), x)
    compiled, be, grads, _, _ = compiled_at_floor(model, x)
    assert_same(grads, ref_grads)
    (plan,) = fxckpt.compiled_plans(be)
    assert measured_peak(compiled, x) == plan.predicted_peak_bytes <= plan.budget_bytes, plan.summary()


class _BufferUpdatedAfterUse(nn.Module):
    """Adds a buffer to an activation, then updates the buffer in place (eager autograd is fine:
    the add saves no operand)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 256), nn.Linear(256, 8)
        self.register_buffer("ema", torch.ones(256))

    def forward(self, x):
        h = torch.tanh(self.fc1(x) + self.ema)
        with torch.no_grad():
            self.ema.mul_(0.5).add_(h.mean(0), alpha=0.5)
        return self.fc2(h)


def test_a_node_reading_an_input_the_graph_writes_is_not_replayed():
    """NOTE [ A replay reads an input as the graph left it ]: every node recomputed (solver "all").
    Before, the add was replayed in backward after the forward's `copy_` into the buffer, read the
    new value, and the gradients were 19.6 off, silently; now it is saved, and they are eager's."""
    torch.manual_seed(0)
    model, x = _BufferUpdatedAfterUse().train(), torch.randn(128, 64)
    ref_grads, ref_buffers = step(copy.deepcopy(model), x)
    _, be, grads, buffers = compiled_step(model, x, budget=1.0, compiler="aot_eager", solver="all")
    (plan,) = fxckpt.compiled_plans(be)
    assert "tanh" in plan.recompute and "add" not in plan.recompute, plan.summary()
    assert_same(grads, ref_grads)
    assert_same(buffers, ref_buffers)


@pytest.mark.parametrize("budget", [1.0, 0.9])
def test_inductor_plan_saves_no_more_than_torchs_partitioner_on_a_batchnorm_cnn(budget):
    """Inductor, the BatchNorm CNN (32x3x32x32) at 100% and 90% of its un-checkpointed peak:
    fxckpt's forward saves no more bytes than torch's default partitioner and no ReLU mask (its
    backward kernels compute the masks inline, as under torch's partitioner), at no more recompute
    cost than the solver's plan (NOTE [ Free recomputations break ties by memory ]). Before, the
    free replays were chosen by the lowest peak first: at 100% 8,522,144 B saved against torch's
    8,391,232 B, and a bool mask at both budgets, written by a slow masked store on CPU (the
    step 1.6x default torch.compile's, benchmarks/results/2026-12-02/compile_bench.md)."""
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from fxckpt.compile import partition
    from fxckpt.core.simulate import recompute_cost
    from fxckpt.core.solvers import SOLVERS, recompute_of
    from tests.models import TinyCNN

    torch.manual_seed(0)
    model, x = TinyCNN().train(), torch.randn(32, 3, 32, 32)
    got = inductor_joint(model, x)
    n, static = got["num_fwd_outputs"], got["static_lifetime_input_indices"]
    fw, _ = min_cut_rematerialization_partition(copy.deepcopy(got["joint"]), None, num_fwd_outputs=n,
                                                static_lifetime_input_indices=static)
    be, plans = fxckpt.backend(budget=budget), []
    ours, _ = partition(copy.deepcopy(got["joint"]), num_fwd_outputs=n, fusion=True, static_lifetime_input_indices=static,
                        choose=lambda problem: plans.append(be.plan(problem, None)) or plans[-1])
    (plan,) = plans
    problem = be.graphs[0].problem
    solver = SOLVERS["auto"](problem, plan.budget_bytes)
    assert recompute_cost(problem, problem.indices(plan.recompute)) <= recompute_cost(problem, recompute_of(solver))
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    assert saved_bytes(ours, n) <= saved_bytes(fw, n), (saved_bytes(ours, n), saved_bytes(fw, n), plan.summary())
    (outputs,) = ours.graph.find_nodes(op="output")[0].args
    masks = [a.name for a in outputs[n:] if isinstance(a, torch.fx.Node) and a.meta["val"].dtype == torch.bool]
    assert not masks, masks
