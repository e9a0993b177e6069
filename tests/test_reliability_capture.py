"""Capture and mode reliability (issue #10): what the user's model does must decide what the
checkpointed module does. Every model here is tiny; each test failed before its fix."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxckpt

from tests.models import scalar_loss


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(model, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    loss = scalar_loss(model(*args, **kwargs))
    loss.backward()
    return loss


def assert_same_step(ckpt, model, ref, *args, **kwargs):
    """One training step of `ckpt` (wrapping `model`) and of `ref` (an untouched copy): same
    loss and bitwise-equal gradients."""
    loss = _step(ckpt, *args, **kwargs)
    ref_loss = _step(ref, *args, **kwargs)
    assert torch.equal(loss, ref_loss)
    got, want = _grads(model), _grads(ref)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), f"gradient of {name} differs by {(got[name] - want[name]).abs().max()}"


class _Exported(nn.Module):
    """A branch on a shape: symbolic_trace cannot follow it, so capture takes torch.export."""

    def forward(self, x):
        if x.shape[0] > 0:
            x = x * 1.0
        return self.body(x)


# ---------------------------------------------------------------- 2, 5: train/eval mode


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)

    def body(self, x):
        return self.b(F.dropout(torch.relu(self.a(x)), 0.5, self.training))

    def forward(self, x):
        return self.body(x)


class ExportedDropout(_Exported, FunctionalDropout):
    pass


@pytest.mark.parametrize("cls", [FunctionalDropout, ExportedDropout])
def test_planned_in_eval_trains_with_dropout(cls):
    torch.manual_seed(0)
    model, x = cls(), torch.randn(8, 16)
    ref = copy.deepcopy(model)
    model.eval()
    ckpt = fxckpt.auto_checkpoint(model, x, budget=0.9)
    assert not model.training, "planning leaves the model's mode as it was"
    ckpt.train()
    assert_same_step(ckpt, model, ref, x)


def test_eval_on_the_original_switches_the_wrapper():
    torch.manual_seed(0)
    model, x = ExportedDropout(), torch.randn(8, 16)
    ckpt = fxckpt.auto_checkpoint(model, x, budget=0.9)
    model.eval()
    assert not ckpt.training
    torch.manual_seed(0)
    assert torch.equal(ckpt(x), model(x))  # no dropout: the original's eval forward
    ckpt.train()
    assert model.training and all(m.training for m in model.modules())


class ExportedDropoutModule(_Exported):
    def __init__(self):
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(16, 32), nn.Dropout(0.5), nn.Linear(32, 4)

    def body(self, x):
        return self.b(self.drop(self.a(x)))


def test_submodule_mode_is_part_of_the_signature():
    torch.manual_seed(0)
    model, x = ExportedDropoutModule(), torch.randn(8, 16)
    ckpt = fxckpt.auto_checkpoint(model, x, budget=1.0)
    ref = copy.deepcopy(model)
    model.drop.eval(), ref.drop.eval()  # a mode change the root's flag does not show
    assert_same_step(ckpt, model, ref, x)
    assert len(ckpt.plans) == 2
