"""The passes' contracts: each takes an artifact and returns a new one, leaving its input as it was;
node names and costs survive every pass; rewritten graphs lint."""

import pytest
import torch

import fxckpt.passes as P
from fxckpt.core import simulate, solve
from fxckpt.core.solvers import min_peak_plan
from fxckpt.passes.annotate import META

from tests.models import ZOO


def _pipeline(name):
    model, example = ZOO[name]()
    captured = P.capture(model, example)
    gm = P.annotate(captured)
    problem = P.to_problem(gm)
    plan = solve(problem, simulate(problem, min_peak_plan(problem)).peak_bytes)  # at the floor
    return captured, gm, plan, P.rewrite(gm, plan)


@pytest.mark.parametrize("name", ["mlp", "gpt2"])
def test_passes_return_new_artifacts_and_keep_costs(name):
    captured, gm, plan, rewritten = _pipeline(name)
    assert gm is not captured.gm and rewritten is not gm
    assert not any(META in n.meta for n in captured.gm.graph.nodes), "annotate changed the captured graph"
    costs = {n.name: n.meta[META] for n in gm.graph.nodes if META in n.meta}
    assert costs and plan.recompute
    survived = {n.name: n.meta[META] for n in rewritten.graph.nodes if META in n.meta}
    assert survived == costs  # same names, same NodeCost records
    rewritten.graph.lint()
    assert dict(rewritten.named_parameters()).keys() == dict(captured.gm.named_parameters()).keys()


def test_pass_preconditions_are_checked():
    model, example = ZOO["mlp"]()
    captured = P.capture(model, example)
    with pytest.raises(TypeError, match="Captured"):
        P.annotate(captured.gm)
    with pytest.raises(ValueError, match="annotate"):
        P.to_problem(captured.gm)
    gm = P.annotate(captured)
    plan = solve(P.to_problem(gm), 2**40)
    with pytest.raises(KeyError, match="not in problem"):
        P.rewrite(gm, type(plan)(**{**plan.__dict__, "recompute": frozenset({"no_such_node"})}))
