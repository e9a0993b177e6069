"""Planning does no work that cannot change its answer (issue 9: planning under 2 s for GPT-2
small). Each test counts the work a cut removed; the plans themselves are held by the other tests."""

import gc

import fxckpt

from tests.models import ZOO


def test_no_garbage_collection_while_planning(monkeypatch):
    # NOTE [ No garbage collection while planning ]: before, 246 collections here
    import fxckpt.api as api

    model, example = ZOO["gpt2"]()
    runs, planning = [], []
    plan = api._plan

    def planned(*args):
        planning.append(True)
        try:
            return plan(*args)
        finally:
            planning.pop()

    monkeypatch.setattr(api, "_plan", planned)
    callback = lambda phase, info: runs.append(info["generation"]) if phase == "start" and planning else None  # noqa: E731
    gc.callbacks.append(callback)
    try:
        fxckpt.auto_checkpoint(model, example, budget=0.5)
    finally:
        gc.callbacks.remove(callback)
    assert runs == [] and gc.isenabled()
    gc.disable()  # a caller's choice is left as it was
    try:
        fxckpt.auto_checkpoint(model, example, budget=0.5)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_projected_model_builds_each_key_once(monkeypatch):
    # NOTE [ Rows of the projected model without early replays ]: before, a key per buffer and
    # step where it is bounded (565 here), now one per distinct list of bounds (36)
    from fxckpt.core.simulate import simulate
    from fxckpt.core.solvers import ilp
    from fxckpt.core.synthetic import repeated_blocks

    problem = repeated_blocks(6, size=6, seed=3)
    budget = int(0.5 * simulate(problem).peak_bytes)
    built, key = [], ilp._bounds_key
    monkeypatch.setattr(ilp, "_bounds_key", lambda cs, early, k: built.append(tuple(cs)) or key(cs, early, k))
    m, _ = ilp._bound_model(problem, budget, cached=False)
    assert m.rows and built
    assert len(built) == len(set(built))


def test_fake_step_answers_device_queries_first(monkeypatch):
    # NOTE [ Device queries in a fake step ]: torch's handler answers them before `_run`; the
    # devices are what the fake tensors carry, inside ops (meta) and outside
    import torch

    from fxckpt.passes.fake_step import _FakeMode
    from fxckpt.passes.ops import DEVICE_QUERY

    ran = []
    run = _FakeMode._run
    monkeypatch.setattr(_FakeMode, "_run", lambda self, func, *a: ran.append(func) or run(self, func, *a))
    with _FakeMode() as mode:
        x = torch.empty(3, 4)
        y = (x * 2).sum(0)
        assert DEVICE_QUERY(y) == torch.device("cpu") == y.device
    assert ran and DEVICE_QUERY not in ran
    assert mode.from_tensor(torch.empty(2)).device == torch.device("cpu")


def test_annotated_module_generates_no_code():
    # NOTE [ The annotated graph's code ]: annotation and the plan never run its code; it is
    # generated on first use, and then runs as the model does
    import torch

    import fxckpt.passes as P
    from fxckpt.passes.capture import split_input

    model, example = ZOO["gpt2"]()
    args, kwargs = split_input(example)
    captured = P.capture(model, args, kwargs)
    assert captured.frontend == "export"
    gm = P.annotate(captured)
    assert type(gm)._needs_recompile()  # no code yet
    assert "def forward" in gm.code
    with torch.no_grad():
        outputs = [torch.manual_seed(0) and m(*captured.args, **captured.kwargs) for m in (gm, captured.gm)]  # dropout
    torch.testing.assert_close(*outputs)
