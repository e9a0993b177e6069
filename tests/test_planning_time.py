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

