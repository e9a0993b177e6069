"""The torch-free core (`fxckpt.core`): problem, simulator, plan, solvers. Runs without torch."""

import ast
import math
import pathlib
import subprocess
import sys

import pytest

from fxckpt.core.errors import InfeasibleBudgetError
from fxckpt.core.plan import Plan
from fxckpt.core.problem import Buffer, Grad, Node, RematProblem
from fxckpt.core.simulate import needed_recipes, simulate
from fxckpt.core.solvers import SOLVERS, solve

MiB = 2**20
CORE = pathlib.Path(__file__).resolve().parents[1] / "fxckpt" / "core"
_BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this interpreter")
sys.meta_path.insert(0, _NoTorch())
"""


@pytest.mark.parametrize("path", sorted(p.relative_to(CORE).as_posix() for p in CORE.rglob("*.py")))
def test_core_modules_import_no_torch(path):
    tree = ast.parse((CORE / path).read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path} imports {names}"


def test_core_works_where_torch_cannot_be_imported():
    """Indirect imports count too: run the core in an interpreter where importing torch fails."""
    code = _BLOCK_TORCH + """
from fxckpt.core import RematProblem, random_problem, simulate, solve
from fxckpt.core.solvers import min_peak_plan
import fxckpt
p = random_problem(30, "skip", seed=3)
floor = simulate(p, min_peak_plan(p)).peak_bytes
assert floor < simulate(p).peak_bytes
assert solve(p, floor).predicted_peak_bytes <= floor
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
try:
    fxckpt.auto_checkpoint
except ImportError as e:
    assert "torch" in str(e)
else:
    raise AssertionError("fxckpt.auto_checkpoint imported without torch")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=CORE.parents[1], timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def chain(k: int, nbytes: int = MiB, flops: int = 100) -> RematProblem:
    """x0 -> x1 -> ... : node i creates buffer i and its backward saves its input (like a linear)
    and passes a gradient of its input's size to node i-1; the last node is the output."""
    nodes = []
    for i in range(k):
        nodes.append(Node(f"n{i}", "op", inputs=(i - 1,) if i else (), creates=(i,), value=(i,),
                          saves=(i - 1,) if i else (), requires_grad=True, flops=flops,
                          bwd_transient_bytes=nbytes if i else 0,
                          is_output=i == k - 1, ban="graph output" if i == k - 1 else None))
    grads = tuple(Grad(nbytes, i, i - 1) for i in range(1, k))
    return RematProblem(tuple(nodes), tuple(Buffer(f"n{i}:0", nbytes, i) for i in range(k)), grads=grads)


def test_simulate_chain_exact():
    p = chain(4)
    s = simulate(p, timeline=True)
    # forward: n0..n2 held (saved by their consumers) + n3 output = 4 MiB at the boundary.
    assert s.boundary_bytes == 4 * MiB
    # backward n3: holds 4 MiB, + the gradient of its input n2 (1 MiB); the output's own
    # gradient is the caller's (a loss scalar).
    assert s.peak_bytes == 5 * MiB and s.peak_at == "backward n3"
    assert s.recompute_flops == 0


def test_simulate_recompute_materializes_once_and_frees():
    p = chain(4)
    s = simulate(p, {1}, timeline=True)
    labels = [label for _, label in s.timeline]
    assert labels.count("recompute n1") == 1
    assert s.recompute_flops == 100
    assert s.boundary_bytes == 3 * MiB  # n1 is not held; its input n0 is (by n1's recipe and n1's backward)
    assert needed_recipes(p, frozenset({1})) == {1}


def test_recipe_inputs_are_held_and_chains_recompute():
    p = chain(5)
    s = simulate(p, {1, 2})
    assert s.recomputed == ("n1", "n2") or s.recomputed == ("n2", "n1") or set(s.recomputed) == {"n1", "n2"}
    assert s.recompute_flops == 200
    assert s.boundary_bytes == 3 * MiB  # n0, n3 and the output n4


FIXED = ("all", "sqrt", "blocks")  # strategies that ignore the budget


@pytest.mark.parametrize("method", sorted(SOLVERS))
@pytest.mark.parametrize("case", ["empty", "empty_budget_0", "one", "above_peak", "budget_0", "zero_bytes",
                                  "nothing_recomputable"])
def test_edge_cases_every_solver(method, case):
    if case.startswith("empty"):
        p = RematProblem()
    elif case == "one":
        p = chain(1)
    elif case == "zero_bytes":
        p = chain(4, nbytes=0)
    elif case == "nothing_recomputable":
        base = chain(4)
        p = RematProblem(tuple(Node(**{**n.__dict__, "ban": "test"}) for n in base.nodes), base.buffers, base.grads)
    else:
        p = chain(6)
    peak = simulate(p).peak_bytes
    budget = 0 if case.endswith("budget_0") else peak
    if case == "budget_0":  # nothing fits: the error names the smallest feasible budget
        with pytest.raises(InfeasibleBudgetError) as e:
            solve(p, budget, method=method)
        assert 0 < e.value.min_feasible_bytes <= peak
        return
    if method in FIXED and case == "above_peak":
        return
    plan = solve(p, budget, method=method)
    assert plan.predicted_peak_bytes == simulate(p, p.indices(plan.recompute)).peak_bytes <= budget
    if method not in FIXED:  # at or above the un-checkpointed peak: the empty plan
        assert plan.recompute == frozenset() and plan.recompute_flops == 0


@pytest.mark.parametrize("bad", [-1, float("nan"), None, "1"])
def test_bad_budgets(bad):
    with pytest.raises(ValueError):
        solve(chain(3), bad)


def test_infeasible_names_smallest_feasible_budget():
    p = chain(8)
    with pytest.raises(InfeasibleBudgetError) as e:
        solve(p, MiB)
    floor = e.value.min_feasible_bytes
    assert floor > MiB and f"peak {floor:,} bytes; use budget_mb >= {floor / MiB}" in str(e.value)
    plan = solve(p, floor)  # the named budget is feasible
    assert plan.predicted_peak_bytes <= floor


def test_greedy_meets_budget_and_is_monotone():
    p = chain(12)
    base = simulate(p).peak_bytes
    costs = []
    for frac in (1.0, 0.9, 0.8, 0.7):
        try:
            plan = solve(p, int(frac * base))
        except InfeasibleBudgetError:
            break
        assert plan.predicted_peak_bytes <= frac * base
        costs.append(plan.recompute_flops)
    assert len(costs) >= 3 and costs == sorted(costs)


def test_plan_json_round_trip_and_table():
    p = chain(6)
    plan = solve(p, int(0.8 * simulate(p).peak_bytes))
    again = Plan.from_json(plan.to_json())
    assert again == plan
    text = str(plan)
    assert "recompute" in text and plan.solver in text
    assert "<table>" in plan._repr_html_()
    assert math.isclose(plan.predicted_peak_mib, plan.predicted_peak_bytes / MiB)


def test_timeline_plot_draws_both_curves_and_the_budget():
    pytest.importorskip("matplotlib")
    from fxckpt.viz import plot_timeline

    p = chain(8)
    plan = solve(p, int(0.8 * simulate(p).peak_bytes))
    ax = plot_timeline(p, plan)
    assert len(ax.lines) == 3
    assert max(ax.lines[1].get_ydata()) <= plan.budget_bytes / MiB


def test_simulator_interface_for_solvers():
    """The public interface the ILP and the chain DP build on: per-problem facts cached on the
    problem (not by id), and every step's live bytes and buffers, whose maximum is the peak."""
    from fxckpt.core.simulate import step_facts, step_marks
    from fxckpt.core.synthetic import random_problem

    p = random_problem(25, "skip", seed=1)
    assert step_facts(p) is step_facts(p)
    assert step_facts(random_problem(25, "skip", seed=1)) is not step_facts(p)  # equal problem, own facts
    plan = frozenset(p.candidates()[::3])
    marks = step_marks(p, plan)
    assert max(m.live_bytes for m in marks) == simulate(p, plan).peak_bytes
    assert [m.kind for m in marks].count("recompute") == len(simulate(p, plan).recomputed)
    facts = step_facts(p)
    for m in marks:
        assert m.live_bytes >= sum(facts.nbytes[b] for b in m.live_buffers)


@pytest.mark.parametrize("shape,seed", [("skip", 0), ("diamond", 1), ("fanout", 2)])
def test_quiet_runs_count_what_recorded_runs_mark(shape, seed):
    # a run without marks or timeline skips steps below its peak (simulate._forward): its peak,
    # cost and capped answers are those of the run that marks every step, transients included
    import random

    from fxckpt.core.simulate import step_marks
    from fxckpt.core.synthetic import random_problem
    import dataclasses
    p = random_problem(40, shape, seed)
    rng = random.Random(seed)
    p = dataclasses.replace(p, nodes=tuple(dataclasses.replace(n, transient_bytes=rng.choice((0, 0, 0, 2**26)),
                                                               bwd_transient_bytes=rng.choice((0, 2**20))) for n in p.nodes))
    for k in (0, 3, 8, 15):
        R = frozenset(rng.sample(p.candidates(), k))
        sim = simulate(p, R)
        assert sim.peak_bytes == max(m.live_bytes for m in step_marks(p, R)) == simulate(p, R, timeline=True).peak_bytes
        assert sim.recompute_cost == simulate(p, R, timeline=True).recompute_cost
        cap = int(0.8 * sim.peak_bytes)
        assert simulate(p, R, cap=cap).peak_bytes >= cap and simulate(p, R, cap=sim.peak_bytes + 1).peak_bytes == sim.peak_bytes


def test_step_facts_carry_each_nodes_numbers():
    # NOTE [ The simulator's loops ]: the tuples the loops read are the nodes' own numbers, in
    # forward and backward order (the quiet and recorded runs above check the loops themselves)
    import dataclasses
    import random

    from fxckpt.core.simulate import step_facts
    from fxckpt.core.synthetic import random_problem

    rng = random.Random(5)
    p = random_problem(30, "diamond", seed=5)
    p = dataclasses.replace(p, nodes=tuple(dataclasses.replace(
        n, transient_bytes=rng.randrange(99), recipe_bytes=rng.randrange(99), extra_saved_bytes=rng.randrange(99),
        bwd_unpack_bytes=rng.randrange(99), bwd_transient_bytes=rng.randrange(99),
        bwd_replay_transient_bytes=rng.randrange(99)) for n in p.nodes))
    st = step_facts(p)
    assert st.forward_steps == tuple((n.creates, n.recipe_bytes, n.extra_saved_bytes if n.requires_grad else 0,
                                      n.transient_bytes) for n in p.nodes)
    assert [s[0] for s in st.backward_steps] == list(p.backward_order)
    for c, saves, producers, unpack, transient, replay, grown, extra in st.backward_steps:
        n = p.nodes[c]
        assert saves == st.saves[c] and producers == {p.buffers[b].producer for b in saves}
        assert (unpack, transient, replay, extra) == (n.bwd_unpack_bytes, n.bwd_transient_bytes,
                                                      n.bwd_replay_transient_bytes, n.extra_saved_bytes)
        assert grown == st.born[c] - st.dying[c]


def test_a_run_finds_what_each_recipe_holds_once(monkeypatch):
    # Solvers simulate thousands of plans: a run computes the buffers each needed recipe holds
    # once (in forward) and lets them go from that, rather than asking again when it releases it.
    import sys

    from fxckpt.core.simulate import needed_recipes
    from fxckpt.core.synthetic import random_problem

    run_class = sys.modules["fxckpt.core.simulate"]._Run
    calls = []
    original = run_class._held_inputs
    monkeypatch.setattr(run_class, "_held_inputs", lambda self, q: calls.append(q) or original(self, q))
    p = random_problem(40, "skip", seed=3)
    R = frozenset(p.candidates()[::2])
    assert needed_recipes(p, R)
    simulate(p, R)
    assert sorted(calls) == sorted(needed_recipes(p, R))
