"""Annotation counts a node's FLOPs once per signature (NOTE [ FLOPs counted once per signature ]
in passes/annotate.py): the costs are those of counting every node, and a signature tells apart
everything the count could depend on."""

import sys
from pathlib import Path

import pytest
import torch

import fxckpt
import fxckpt.passes as P
from fxckpt.passes.annotate import META, annotate_with, node_flop_key
from fxckpt.passes.capture import Captured, adopt_state

from tests.models import ZOO

aten = torch.ops.aten


def _costs(gm):
    return {n.name: n.meta[META] for n in gm.graph.nodes if META in n.meta}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_memoized_costs_are_those_of_counting_every_node(name):
    model, example = ZOO[name]()  # repeated blocks, captured by torch.export: ATen ops only
    captured = P.capture(model, example)
    memo_gm, memo = annotate_with(captured)
    plain_gm, plain = annotate_with(captured, memoize=False)
    assert plain.memo is None and plain.memo_hits == 0
    assert memo.memo and memo.memo_hits > 0, "the repeated blocks should hit the cache"
    assert _costs(memo_gm) == _costs(plain_gm)
    assert sum(c.flops for c in _costs(memo_gm).values()) > 0


def test_symbolic_traced_graphs_count_under_one_counter():
    model, example = ZOO["transformer"]()  # call_module nodes and Python functions
    captured = P.capture(model, example)
    assert captured.frontend == "symbolic_trace"
    gm, runner = annotate_with(captured)
    assert runner.memo is None
    assert _costs(gm) == _costs(annotate_with(captured, memoize=False)[0])


def test_a_miss_counts_the_flops_of_its_own_shapes():
    # The same ops at two widths: each width's matrix products are counted, not the first reused.
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 16), torch.nn.GELU(),
                                torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 32), torch.nn.GELU(),
                                torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
    x = torch.randn(4, 16)
    exported = torch.export.export(model, (x,), strict=False).module()
    captured = Captured(adopt_state(torch.fx.GraphModule(exported, exported.graph), model), "export", (x,), {})
    gm, runner = annotate_with(captured)
    assert runner.memo_hits > 0
    assert _costs(gm) == _costs(annotate_with(captured, memoize=False)[0])
    assert len({c.flops for c in _costs(gm).values() if c.flops > 4 * 32 * 2}) > 1


def _key(*args, training=True, **kwargs):
    return node_flop_key(aten.mm.default, args, kwargs, training)


def test_signatures_tell_apart_what_a_count_could_depend_on():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    base = _key(a, b)
    assert base == _key(torch.randn(8, 16), torch.randn(16, 4))  # values do not matter
    different = {
        "shape": _key(torch.randn(8, 16), torch.randn(16, 5)),
        "dtype": _key(a.double(), b.double()),
        "strides": _key(torch.randn(16, 8).t(), b),
        "offset": _key(torch.randn(9, 16)[1:], b),
        "requires_grad": _key(a.requires_grad_(False), b.clone().requires_grad_(True)),
        "training": _key(a, b, training=False),
        "conj": _key(torch.randn(8, 16, dtype=torch.cfloat).conj(), torch.randn(16, 4, dtype=torch.cfloat)),
    }
    assert different["conj"] != _key(torch.randn(8, 16, dtype=torch.cfloat), torch.randn(16, 4, dtype=torch.cfloat))
    for what, key in different.items():
        assert key is not None and key != base, what
    with torch.no_grad():
        assert _key(a, b) != base
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _key(a, b) != base
    assert node_flop_key(aten.bmm.default, (a, b), {}, True) != base


def test_signatures_tell_apart_constants_and_refuse_what_they_cannot_describe():
    x = torch.randn(2, 3)
    key = lambda *args: node_flop_key(aten.native_dropout.default, args, {}, True)  # noqa: E731
    assert key(x, 0.1, True) != key(x, 0.1, False) != key(x, 0.2, False)
    assert key(x, 0.0, True) != key(x, -0.0, True)  # equal as floats, not as arguments
    assert key(x, 1, True) != key(x, 1.0, True) != key(x, True, True)
    assert node_flop_key(aten.sum.dim_IntList, (x, [0]), {}, True) != node_flop_key(aten.sum.dim_IntList, (x, [1]), {}, True)
    assert node_flop_key(aten.sum.dim_IntList, (x, [0]), {}, True) != node_flop_key(aten.sum.dim_IntList, (x, (0,)), {}, True)
    assert key(x, object(), True) is None  # an object it cannot describe: not cached
    assert node_flop_key(torch.add, (x, x), {}, True) is None  # not an ATen op


def _mode_dispatches(fn) -> int:
    """Calls of fxckpt's own dispatch modes (`__torch_dispatch__` in fxckpt's code) while `fn` runs."""
    root = str(Path(fxckpt.__file__).parent.parent)
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        code = frame.f_code
        if event == "call" and code.co_name == "__torch_dispatch__" and code.co_filename.startswith(root) \
                and ".venv" not in code.co_filename:
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_fake_steps_book_ops_inside_the_fake_mode():
    # NOTE [ Observers inside the fake mode ]: the dry run's meter and annotation's backward trace
    # (and its recorder, on nodes whose FLOPs are not counted afresh) book ops from inside the fake
    # mode, with no dispatch mode of their own above it; the plan and its costs are unchanged
    # (tests above; the dry run's peak below is a LiveBytesMode's above the fake mode).
    from fxckpt.api import dry_run_peak
    from fxckpt.measure import LiveBytesMode
    from fxckpt.passes.capture import step_loss
    from fxckpt.passes.fake_step import FakeStep, op_scratch

    model, example = ZOO["gpt2"]()
    captured = P.capture(model, example)
    memo_dispatches = _mode_dispatches(lambda: annotate_with(captured))
    plain_dispatches = _mode_dispatches(lambda: annotate_with(captured, memoize=False))
    plan = fxckpt.auto_checkpoint(model, example, budget=0.5)
    gm, args, kwargs = plan.graph_module, captured.args, captured.kwargs
    got = []
    dry_dispatches = _mode_dispatches(lambda: got.append(dry_run_peak(gm, args, kwargs)))
    # before: 1,671 in the dry run, and 1,357 in annotation either way (every op passed a mode)
    assert dry_dispatches == 0
    assert 0 < memo_dispatches < plain_dispatches  # 256 < 496: the backward and memoized nodes pass none
    with FakeStep(gm, args, kwargs) as step:
        step.leaves()
        with LiveBytesMode(scratch=op_scratch) as live:
            with gm.fxckpt_runtime.active():
                out = gm(*step.args, **step.kwargs)
            step.loss(step_loss)(out).backward()
            del out
    assert got == [live.peak_bytes] == [plan.plan.dry_run_peak_bytes] and live.peak_bytes > 0


def test_tensors_of_an_op_are_pytrees_leaves_without_pytree(monkeypatch):
    # NOTE [ Tensors of an op's arguments ]: the same tensors, in the same order, as pytree's
    # leaves, for every kind of tree; the fake steps' ops are walked without pytree.
    from collections import OrderedDict, namedtuple

    import torch.utils._pytree as pytree
    from fxckpt.api import dry_run_peak
    from fxckpt.passes.ops import tensors_of

    x, y = torch.ones(2), torch.zeros(3)
    pair = namedtuple("pair", "a b")
    trees = [x, (x, 1, None, [y, 2.0]), {"b": y, "a": [x, torch.float32]}, ((x,), {"out": [y, x]}),
             (torch.Size([2, 3]), x), pair(y, x), OrderedDict(b=x, a=y), (x, torch.fx.immutable_collections.immutable_list([y])),
             ([x, "s", torch.device("cpu")], {"k": (y, torch.strided)})]
    for tree in trees:
        assert [id(t) for t in tensors_of(tree)] == [id(t) for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]
    model, example = ZOO["gpt2"]()
    plan = fxckpt.auto_checkpoint(model, example, budget=0.5)
    captured = P.capture(model, example)
    walks = 0
    leaves = pytree.tree_leaves

    def counted(*args, **kwargs):
        nonlocal walks
        walks += 1
        return leaves(*args, **kwargs)

    monkeypatch.setattr(pytree, "tree_leaves", counted)
    assert dry_run_peak(plan.graph_module, captured.args, captured.kwargs) == plan.plan.dry_run_peak_bytes
    assert walks == 0  # before: 1,383 (the meter's and op_scratch's walks of the ops)
