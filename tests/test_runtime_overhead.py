"""A plan that recomputes nothing runs the captured graph alone: no saved-tensor hooks, no recipes,
no runtime calls in the graph (issue 9: the captured graph with nothing recomputed must cost what
the original module costs). Asserted on what runs, never on time."""

import pytest
import torch
from models import call_model, make_gpt2, make_mlp, scalar_loss
from torch.utils._python_dispatch import TorchDispatchMode

import fxckpt


class _HookWatch(TorchDispatchMode):
    """Counts the ops that run while a saved-tensor hook is installed."""

    def __init__(self):
        super().__init__()
        self.ops = self.hooked = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.hooked += torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
        return func(*args, **(kwargs or {}))


def _watched_step(ckpt, example) -> _HookWatch:
    with _HookWatch() as watch:
        scalar_loss(call_model(ckpt, example)).backward()
    return watch


@pytest.mark.parametrize("make, budget", [(make_mlp, {"budget": 1.0}), (make_mlp, {"budget_mb": 10_000}),
                                          (make_gpt2, {"budget": 1.0})],
                         ids=["symbolic_trace-peak", "symbolic_trace-above-peak", "export-peak"])
def test_a_budget_at_the_peak_installs_no_hooks(make, budget):
    model, example = make()
    ckpt = fxckpt.auto_checkpoint(model, example, **budget)
    assert not ckpt.plan.recompute
    gm = ckpt.graph_module
    assert gm.fxckpt_runtime.specs == {}
    assert [n.format_node() for n in gm.graph.nodes if n.op == "call_method"] == []  # no hooks_on/begin/record
    watch = _watched_step(ckpt, example)
    assert watch.ops > 0 and watch.hooked == 0


def test_the_hook_watch_sees_hooks_where_a_plan_recomputes():
    """The check above can fail: a plan that recomputes runs ops under the pack hook."""
    model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(64, 64), torch.nn.GELU())])
    example = torch.randn(32, 64)
    ckpt = fxckpt.auto_checkpoint(model, example, budget=0.8)
    assert ckpt.plan.recompute
    assert _watched_step(ckpt, example).hooked > 0
