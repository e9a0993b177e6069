"""Regressions of issue #10's runtime, annotation and error findings: each test failed before
its fix."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import fxckpt

from tests.models import ZOO, call_model, clone_model, scalar_loss


def _train_both(model, example, **plan_kwargs):
    """(checkpointed model, reference model) after one identical training step each."""
    ref = clone_model(model)
    ref_example = copy.deepcopy(example)
    ckpt = fxckpt.auto_checkpoint(model, example, **plan_kwargs)
    for m, x in ((ckpt, example), (ref, ref_example)):
        torch.manual_seed(0)
        scalar_loss(call_model(m, x)).backward()
    return ckpt, ref


def _assert_same_grads(model, ref):
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), f"gradient of {name} differs by {(p.grad - q.grad).abs().max()}"


# ---------------------------------------------------------------- 3: in-place writes through views
# (T5 at budget 0.5, whose shift_right writes through views, is a case of tests/test_zoo_sweep.py)


class InplaceThroughViews(nn.Module):
    """Writes into one column of a buffer through a view, then reads the whole buffer: a
    replay must read the buffer (rows x columns), not the view the last writer returned (one
    column, which broadcasts against the weight and would give wrong values silently)."""

    def __init__(self, d: int = 4, chain: bool = True):
        super().__init__()
        self.chain = chain
        self.lin = nn.Linear(d, d)
        self.w = nn.Parameter(torch.randn(d, d))

    def forward(self, x):
        h = self.lin(x) + 1.0  # add saves nothing: the writes below are legal for autograd
        h[:, 0].mul_(2.0)
        if self.chain:  # a view taken after a write, written again
            h[:, 1:].copy_(h[:, 1:] * 3.0)
            h[:, 1].fill_(0.5)
        y = h * self.w  # reads all of h, as written
        return torch.sin(y)  # saves y


@pytest.mark.parametrize("chain", [False, True], ids=["silently-wrong", "chained-views"])
def test_in_place_writes_through_views_replay_on_the_written_buffer(chain):
    torch.manual_seed(0)
    model, x = InplaceThroughViews(chain=chain).train(), torch.randn(4, 4)
    ckpt, ref = _train_both(model, x, budget=1.0, solver="all")
    assert "add" in ckpt.plan.recompute  # the written buffer is replayed, and its readers with it
    _assert_same_grads(model, ref)


class CopyFromLaterWritten(nn.Module):
    """One buffer is written from another that is itself written in place later: replaying the
    first write must not see the second buffer's later contents."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.lin, self.lin2 = nn.Linear(d, d), nn.Linear(d, d)
        self.w = nn.Parameter(torch.randn(d, d))

    def forward(self, x):
        p = self.lin(x) + 1.0
        a = self.lin2(x) + 1.0
        p[:, 0].copy_(a[:, 0])
        a.mul_(3.0)
        return torch.sin(p * self.w) + torch.cos(a * self.w)


def test_a_write_from_a_buffer_written_later_is_not_replayed():
    torch.manual_seed(0)
    model, x = CopyFromLaterWritten().train(), torch.randn(4, 4)
    ckpt, ref = _train_both(model, x, budget=1.0, solver="all")
    _assert_same_grads(model, ref)



# ---------------------------------------------------------------- 6, 7: autocast


def test_autocast_plans_and_trains_a_hugging_face_model():
    """GPT-2 planned outside autocast, then called under it: planned again under the caller's
    autocast (torch.export records the dtypes it sees), same gradients as the model's own."""
    pytest.importorskip("transformers")
    model, example = ZOO["gpt2"]()
    ref = clone_model(model)
    ckpt = fxckpt.auto_checkpoint(model, example, budget=0.5)
    for m in (ckpt, ref):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = call_model(m, example)
        scalar_loss(out).backward()
    assert len(ckpt.plans) == 2 and ckpt.plan.recompute
    plan = ckpt.plan
    assert plan.dry_run_peak_bytes <= plan.budget_bytes
    assert abs(plan.dry_run_peak_bytes - plan.predicted_peak_bytes) <= 0.01 * plan.predicted_peak_bytes
    _assert_same_grads(model, ref)


class _TanhInPlace(nn.Module):
    """tanh_ saves the result it wrote into its input's storage; `add` saves nothing."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        h = self.a(x) * 2
        h.tanh_()
        return self.b(h + 1)


def test_an_in_place_op_saving_its_result_gets_the_written_contents():
    # NOTE [ An in-place op saving its own result ]: recomputing only `mul`, tanh_'s backward was
    # given mul's replay (the contents before tanh_ wrote them): gradients off by up to 333.9.
    from fxckpt import passes
    from fxckpt.core.plan import make_plan
    from fxckpt.passes.to_problem import to_problem

    torch.manual_seed(0)
    model, x = _TanhInPlace(), torch.randn(8, 16)
    ref = clone_model(model)
    gm = passes.annotate(passes.capture(model, x))
    problem = to_problem(gm)
    plan = make_plan(problem, problem.indices({"mul"}), solver="test", budget_bytes=None, solve_seconds=0.0)
    new_gm = passes.rewrite(gm, plan)
    with new_gm.fxckpt_runtime.active():
        out = new_gm(x)
    out.sum().backward()
    ref(x).sum().backward()
    assert new_gm.fxckpt_runtime.replays == {"mul": 1, "tanh_": 1}
    for (name, p), q in zip(new_gm.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), name
