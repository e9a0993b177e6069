"""NOTE [ Gradients the engine sums in place ] (passes/engine_sums.py): a dispatch mode makes the
autograd engine sum every gradient out of place; fxckpt's meters and predictions follow the sums
the real engine does in place."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode

import fxckpt
from fxckpt.measure import LiveBytesMode, allocator_step_peak
from fxckpt.passes.engine_sums import EngineSums

aten = torch.ops.aten


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


# Graphs with no add in forward and leaves without .grad (AccumulateGrad takes its gradient):
# every add of backward is one of the engine's sums.
STEPS = {
    "two slices": lambda x: (lambda h: (h[:, :4] * h[:, 4:].sigmoid()).sum())(x * 1),
    "a scan of selects": lambda x: (lambda h: h[:, 0] * h[:, 1].tanh() * h[:, 2].exp() * h[:, 3])(x * 1).sum(),
    "a product with itself": lambda x: (lambda h: (h * h).sum())(x.exp()),
    "one gradient passed on twice": lambda x: (lambda h: torch.stack([h.exp(), h * 3, h.sum(1, keepdim=True) * h]).sum())(x * 1),
    "a custom Function's gradient": lambda x: (lambda h: (_Double.apply(h) * h.tanh()).sum())(x * 1),
    "a retained gradient": lambda x: (lambda h: (h.retain_grad(), (h * h.exp()).sum())[1])(x * 1),
}


class _Verdicts(TorchDispatchMode):
    def __init__(self, sums):
        super().__init__()
        self.sums, self.verdicts = sums, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        after = self.sums._after_formula
        summed = self.sums.summed_into(func, args)
        if after and func is aten.add.Tensor:
            self.verdicts.append(summed is not None)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", STEPS)
def test_the_sums_done_in_place_are_the_real_engines(name):
    x = torch.randn(16, 8, requires_grad=True)
    loss = STEPS[name](x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("backward"):
            loss.backward()
    start = next(e for e in prof.events() if e.name == "backward").time_range.start
    real = [e.name == "aten::add_" for e in sorted(prof.events(), key=lambda e: e.time_range.start)
            if e.name in ("aten::add", "aten::add_") and e.time_range.start >= start]

    x.grad = None
    sums = EngineSums()
    with _Verdicts(sums) as mode:
        loss = STEPS[name](x)
        with sums.following(loss):
            loss.backward()
    assert real and mode.verdicts == real


class _Slices(nn.Module):
    def __init__(self, d=256):
        super().__init__()
        self.a, self.b = nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, x):
        h = self.a(x)
        u, v = h[:, :h.shape[1] // 2], h[:, h.shape[1] // 2:]
        return self.b(torch.tanh(u) * torch.sigmoid(v))


def test_a_sum_done_in_place_is_predicted_and_measured_so():
    # Both slices' gradients meet at the projection: the engine sums them in place, at the
    # step's peak. Predicted and the dry run were 3,670,024 B for 3,407,880 B at the allocator (+7.7%).
    torch.manual_seed(0)
    model, x = _Slices(), torch.randn(512, 256)
    ckpt = fxckpt.auto_checkpoint(copy.deepcopy(model), x, budget=1.0)
    allocated = allocator_step_peak(ckpt, x).peak_bytes
    assert ckpt.plan.predicted_peak_bytes == ckpt.plan.dry_run_peak_bytes == allocated



BACKWARDS = {
    "Tensor.backward": lambda loss, params: loss.backward(),
    "autograd.backward": lambda loss, params: torch.autograd.backward([loss]),
    "autograd.grad": lambda loss, params: torch.autograd.grad(loss, params),
}


@pytest.mark.parametrize("backward", BACKWARDS)
def test_live_bytes_mode_follows_every_backward_by_itself(backward):
    # Entered as a mode, the meter follows each backward started inside it: no new storage is
    # counted at the engine's sum of the two slices' gradients (a 512x512 one before).
    torch.manual_seed(0)
    model, x = _Slices(), torch.randn(512, 256)
    with LiveBytesMode(record_timeline=True) as live:
        BACKWARDS[backward](model(x).sum(), list(model.parameters()))
    (at,) = [i for i, (_, op) in enumerate(live.timeline) if op == "aten.add.Tensor"]
    assert not [a for a in live.allocations if a.born == at]
