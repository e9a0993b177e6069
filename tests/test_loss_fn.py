"""The plan covers the step the user runs: `loss_fn` puts the loss's own tensors in the plan."""

import torch
import torch.nn.functional as F

import fxckpt
from tests.models import clone_model, make_tied

MIB = 2**20


def _ce(ids):
    return lambda out: F.cross_entropy(out.flatten(0, 1), ids.flatten())


def test_cross_entropy_step_stays_under_the_budget():
    model, ids = make_tied()
    loss_fn = _ce(ids)
    full = fxckpt.measure_step(model, ids, loss_fn=loss_fn).peak_bytes
    budget_mb = 0.8 * full / MIB  # the floor with this loss is ~75%
    c = fxckpt.auto_checkpoint(clone_model(model), ids, budget_mb=budget_mb, loss_fn=loss_fn)
    measured = fxckpt.measure_step(c, ids, loss_fn=loss_fn).peak_bytes
    assert measured <= budget_mb * MIB
    assert measured == c.plan.dry_run_peak_bytes
    assert c.plan.predicted_peak_bytes == measured
    # Planned for the default loss (a sum, whose gradient allocates nothing), the same budget
    # does not hold for a cross-entropy step.
    plain = fxckpt.auto_checkpoint(clone_model(model), ids, budget_mb=budget_mb)
    assert fxckpt.measure_step(plain, ids, loss_fn=loss_fn).peak_bytes > budget_mb * MIB


def _self_ce(out):
    """A loss that works at every shape: its targets come from the output."""
    return F.cross_entropy(out.flatten(0, 1), out.detach().argmax(-1).flatten())


def test_loss_fn_gradients_equal_the_model_and_survive_replanning():
    model, ids = make_tied()
    ref = clone_model(model)
    c = fxckpt.auto_checkpoint(model, ids, budget=0.8, loss_fn=_self_ce)
    assert c.plan.recompute
    for m in (ref, c):
        _self_ce(m(ids)).backward()
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        assert torch.equal(p.grad, q.grad), name
    short = ids[:, :32]
    full_plan = c.plan
    assert fxckpt.measure_step(c, short, loss_fn=_self_ce).peak_bytes == c.plan.dry_run_peak_bytes
    assert c.plan is not full_plan and len(c.plans) == 2  # planned again, with the same loss
