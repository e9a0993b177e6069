"""Pictures of a plan: the simulated memory timeline of a training step. Matplotlib is
imported on first use (`pip install fxckpt[plot]`)."""

from __future__ import annotations

from .core.errors import MIB
from .core.plan import Plan
from .core.problem import RematProblem
from .core.simulate import simulate


def pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'fxckpt[plot]'") from e
    return plt


def simulated_timeline(problem: RematProblem, plan: Plan | None = None) -> tuple[tuple[int, str], ...]:
    """``(live activation bytes, "forward|recompute|backward <node>")`` at every simulated step,
    with the plan's recomputations (none without a plan)."""
    recompute = problem.indices(plan.recompute) if plan is not None else ()
    return simulate(problem, recompute, timeline=True).timeline


def plot_timeline(problem: RematProblem, plan: Plan | None = None, ax=None):
    """Live activation bytes at every simulated step, with and without the plan, and the budget.

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> ax = plot_timeline(random_problem(12, "chain"))
    """
    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot([b / MIB for b, _ in simulated_timeline(problem)], label="no checkpointing", lw=1)
    if plan is not None:
        ax.plot([b / MIB for b, _ in simulated_timeline(problem, plan)], label=f"{plan.solver}: recompute {len(plan.recompute)} nodes", lw=1)
        if plan.budget_bytes is not None:
            ax.axhline(plan.budget_bytes / MIB, color="k", ls="--", lw=0.8, label="budget")
    ax.set_xlabel("step (forward nodes, then recomputations and backward nodes)")
    ax.set_ylabel("live activation MiB")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def scope_groups(problem: RematProblem, max_groups: int = 60) -> tuple[int, dict[str, list[int]]]:
    """Nodes grouped by module scope, cut at the deepest level that gives at most `max_groups`
    groups: ``(depth, {scope prefix: node indices})``, groups in first-execution order. Only nodes
    that allocate are grouped (views and constants are not drawn)."""
    nodes = [i for i, n in enumerate(problem.nodes) if n.creates]
    deepest = max([len(problem.nodes[i].scope.split(".")) for i in nodes] + [1])
    best = (0, {"": nodes})
    for depth in range(1, deepest + 1):
        groups: dict[str, list[int]] = {}
        for i in nodes:
            groups.setdefault(".".join(problem.nodes[i].scope.split(".")[:depth]), []).append(i)
        if len(groups) > max_groups:
            break
        best = (depth, groups)
    return best


def plot_graph(problem: RematProblem, plan: Plan | None = None, *, max_groups: int = 60, ax=None):
    """The graph with module scopes collapsed: one circle per scope (area: bytes it allocates),
    coloured from blue (everything it holds for backward is kept) to orange (all recomputed), grey
    where it holds nothing for backward; arrows follow the data. Readable on graphs of thousands of
    nodes: scopes are cut at the deepest level with at most `max_groups` circles.

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> ax = plot_graph(random_problem(30, "chain"))
    """
    import networkx as nx
    from matplotlib.colors import LinearSegmentedColormap

    plt = pyplot()
    depth, groups = scope_groups(problem, max_groups)
    of = {i: g for g, members in groups.items() for i in members}
    decisions = {r.name: r.decision for r in plan.rows} if plan is not None else {}
    graph = nx.DiGraph()
    for g, members in groups.items():
        held = [i for i in members if decisions.get(problem.nodes[i].name, "keep") in ("keep", "recompute")]
        recomputed = [i for i in held if decisions.get(problem.nodes[i].name) == "recompute"]
        graph.add_node(g, first=members[0], nbytes=sum(problem.buffers[b].nbytes for i in members
                                                       for b in problem.nodes[i].creates),
                       share=len(recomputed) / len(held) if held and plan is not None else (0.0 if held else None))
    for i, node in enumerate(problem.nodes):
        for j in node.inputs:
            a, b = of.get(problem.source[j] if problem.source[j] is not None else j), of.get(i)
            if a is not None and b is not None and a != b:
                graph.add_edge(a, b)
    order = sorted(graph.nodes, key=lambda g: graph.nodes[g]["first"])
    columns = max(1, int(len(order) ** 0.5 * 1.6))  # a snake of rows, left to right, top to bottom
    pos = {g: (k % columns if (k // columns) % 2 == 0 else columns - 1 - k % columns, -(k // columns))
           for k, g in enumerate(order)}
    if ax is None:
        _, ax = plt.subplots(figsize=(min(18, 2 + 1.3 * columns), 1.5 + 1.2 * (len(order) // columns + 1)))
    cmap = LinearSegmentedColormap.from_list("keep-recompute", ["#1f77b4", "#ff7f0e"])
    top = max([graph.nodes[g]["nbytes"] for g in order] + [1])
    colours = ["#cccccc" if graph.nodes[g]["share"] is None else cmap(graph.nodes[g]["share"]) for g in order]
    sizes = [80 + 900 * (graph.nodes[g]["nbytes"] / top) ** 0.5 for g in order]
    nx.draw_networkx_edges(graph, pos, ax=ax, edge_color="#888888", arrows=True, arrowsize=6, width=0.6,
                           node_size=sizes, nodelist=order, connectionstyle="arc3,rad=0.15")
    nx.draw_networkx_nodes(graph, pos, nodelist=order, node_color=colours, node_size=sizes, ax=ax)
    nx.draw_networkx_labels(graph, pos, {g: g.rsplit(".", 2)[-2:] and ".".join(g.split(".")[-2:]) or "(top)"
                                         for g in order}, font_size=6, ax=ax)
    ax.set_title(f"{problem.name}: {len(problem.nodes)} nodes in {len(order)} scopes (depth {depth}); "
                 "blue kept, orange recomputed, grey nothing held", fontsize=9)
    ax.axis("off")
    return ax
