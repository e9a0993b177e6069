"""Plans you can read: reasons in numbers, the Jupyter view with its timeline, the graph picture."""

import pytest

from fxckpt.core.plan import Plan, make_plan
from fxckpt.core.problem import Buffer, Node, RematProblem

MiB = 2**20


def chain(n, scope=lambda i: "", flops=1000):
    """n nodes in a chain, each allocating 1 MiB that its consumer saves for backward."""
    nodes = tuple(Node(f"n{i}", "op", inputs=(i - 1,) if i else (), scope=scope(i), creates=(i,), value=(i,),
                       saves=(i - 1,) if i else (), flops=flops, requires_grad=True, is_output=i == n - 1)
                  for i in range(n))
    return RematProblem(nodes, tuple(Buffer(f"n{i}", MiB, i) for i in range(n)))


def test_reasons_are_in_numbers():
    p = chain(4)
    plan = make_plan(p, {1}, solver="test", budget_bytes=4 * MiB, solve_seconds=0.0)
    rows = {r.name: r for r in plan.rows}
    assert rows["n1"].decision == "recompute" and rows["n1"].at_peak_bytes == MiB
    assert rows["n1"].reason.startswith("frees 1.00 MiB at the un-checkpointed peak (") and "0.00 MFLOPs" in rows["n1"].reason
    kept = [r for r in plan.rows if r.decision == "keep"]
    assert kept and all(f"({plan.peak_at})" in r.reason for r in kept)
    for r in kept:
        assert r.reason.startswith("1.00 MiB live at the peak" if r.at_peak_bytes else "not live at the peak")
    assert all("cheaper to keep" not in r.reason for r in plan.rows)
    spare = 4 * MiB - plan.predicted_peak_bytes
    assert any(f"with {spare / MiB:.2f} MiB to spare" in r.reason for r in kept if r.at_peak_bytes)


def test_html_has_summary_timeline_and_table():
    plan = make_plan(chain(6), {1, 2}, solver="test", budget_bytes=5 * MiB, solve_seconds=0.0)
    page = plan._repr_html_()
    assert page.startswith(f"<p>{plan.summary()}</p><svg")
    assert page.count("<polyline") == 2 and "stroke-dasharray" in page  # this plan, no checkpointing, the budget
    assert page.count("<tr") == 1 + sum(r.decision != "free" for r in plan.rows)
    assert max(plan.timeline) == plan.predicted_peak_bytes and max(plan.baseline_timeline) == plan.baseline_peak_bytes
    assert Plan.from_json(plan.to_json()) == plan


def test_long_timelines_keep_their_peak():
    plan = make_plan(chain(900), set(range(1, 899, 2)), solver="test", budget_bytes=None, solve_seconds=0.0)
    assert len(plan.timeline) == 400 and max(plan.timeline) == plan.predicted_peak_bytes


def test_graph_picture_collapses_scopes():
    pytest.importorskip("matplotlib")
    from fxckpt.viz import plot_graph, scope_groups

    p = chain(500, scope=lambda i: f"layers.{i // 50}.op{i % 10}")
    assert scope_groups(p)[0] == 2 and list(scope_groups(p)[1]) == [f"layers.{k}" for k in range(10)]
    plan = make_plan(p, set(range(50)), solver="test", budget_bytes=None, solve_seconds=0.0)
    ax = plot_graph(p, plan)
    colours = ax.collections[0].get_facecolors()
    assert len(colours) == 10
    assert [round(c, 3) for c in colours[0][:3]] == [1.0, 0.498, 0.055]  # all recomputed: orange
    assert [round(c, 3) for c in colours[1][:3]] == [0.122, 0.467, 0.706]  # all kept: blue
