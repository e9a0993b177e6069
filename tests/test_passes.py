"""The passes' contracts: each takes an artifact and returns a new one, leaving its input as it was;
node names and costs survive every pass; rewritten graphs lint."""

import pytest
import torch

import fxckpt
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


class _DropoutAttention(torch.nn.Module):
    """SDPA with dropout on the CPU: its math path, five autograd nodes under one fx node."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(32, 32)

    def forward(self, x):
        q = self.qkv(x).view(2, -1, 2, 16).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.1).transpose(1, 2).flatten(2)


def test_a_node_saving_through_several_autograd_nodes_frees_each_as_it_finishes():
    """NOTE [ The pack hook holds nothing ]: annotation's pack hook kept every tensor the SDPA
    node saved alive through its whole backward, where autograd frees each as its own autograd
    node finishes: at 199 tokens the plan predicted 6,845,608 B, the dry run and the allocator
    5,680,264 B. Now the plan's prediction is the dry run's and the allocator's."""
    from fxckpt.measure import allocator_step_peak

    torch.manual_seed(0)
    model, x = _DropoutAttention(), torch.randn(2, 96, 32)
    ckpt = fxckpt.auto_checkpoint(model, x, budget=1.0)
    plan = ckpt.plan
    assert plan.predicted_peak_bytes == plan.dry_run_peak_bytes
    assert allocator_step_peak(ckpt, x).peak_bytes == plan.predicted_peak_bytes


class _TwoDropoutAttentions(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _DropoutAttention(), _DropoutAttention(), torch.nn.Linear(32, 32)

    def forward(self, x):
        h = x + self.a(x)
        return self.out(h + self.b(torch.tanh(h)))


def test_a_replayed_node_holds_what_it_saved_to_the_end_of_its_backward():
    """NOTE [ Replayed saves are freed together ]: what a replay rebuilds is held by its recipe
    through the node's whole backward; charged the transient of autograd's own frees, the plan
    that recomputes the attention predicted 816,072 B where the dry run and the allocator
    measured 884,744 B."""
    from fxckpt.measure import allocator_step_peak

    torch.manual_seed(0)
    model, x = _TwoDropoutAttentions(), torch.randn(2, 96, 32)
    ckpt = fxckpt.auto_checkpoint(model, x, budget=0.7)
    plan = ckpt.plan
    assert any(name.startswith("scaled_dot_product_attention") for name in plan.recompute)
    assert plan.predicted_peak_bytes == plan.dry_run_peak_bytes
    assert allocator_step_peak(ckpt, x).peak_bytes == plan.predicted_peak_bytes <= plan.budget_bytes
