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


def _annotated_saved_bytes(gm) -> int:
    """Bytes of every activation buffer some node saves for backward, each counted once."""
    costs = [n.meta[META] for n in gm.graph.nodes if META in n.meta]
    sizes = {name: nbytes for c in costs for name, nbytes in c.creates}
    return sum(sizes[b] for b in {b for c in costs for b in c.saves})


def _real_saved_bytes(model, x) -> int:
    """Bytes of the distinct storages a real forward saves for backward, parameters and input aside."""
    state = {p.untyped_storage()._cdata for p in model.parameters()} | {x.untyped_storage()._cdata}
    saved = {}

    def pack(t):
        if t.untyped_storage()._cdata not in state:
            saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(saved.values())


@pytest.mark.parametrize("mkldnn", [True, False], ids=["mkldnn", "native"])
def test_annotation_sees_what_a_real_lstm_saves(mkldnn):
    """On CPU the LSTM runs oneDNN (aten.mkldnn_rnn_layer), whose backward saves a workspace its
    fake kernel returns empty (389,120 bytes here): annotation charged nothing for it, and the
    zoo's rnn measured 0.552 MiB at a floor planned at 0.375 MiB."""
    torch.manual_seed(0)
    model = torch.nn.LSTM(32, 32, batch_first=True).train()
    x = torch.randn(8, 24, 32)
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        gm = P.annotate(P.capture(model, x))
        assert _annotated_saved_bytes(gm) == _real_saved_bytes(model, x)


def test_export_records_no_stack_traces_and_leaves_torch_config_as_it_was():
    """NOTE [ Export without stack traces ]: the per-node stack was a fifth of capture's time."""

    class ShapeBranch(torch.nn.Module):  # a Python branch on a shape: symbolic_trace fails, export takes it
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(x) * 2 if x.shape[0] > 1 else self.lin(x)

    before = torch.fx.config.do_not_emit_stack_traces
    cap = P.capture(ShapeBranch(), torch.randn(4, 8))
    assert cap.frontend == "export"
    assert [n.name for n in cap.gm.graph.nodes if n.meta.get("stack_trace")] == []
    assert torch.fx.config.do_not_emit_stack_traces == before
