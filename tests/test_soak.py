"""Soak: many training steps of a checkpointed module over changing and repeating input shapes.
Nothing a step creates outlives it (no leak through recipes, saved tensors or the runtime), and the
plan cache stays bounded, with the plans it drops freed.

CI runs 50 steps; the slow run (`make test-slow`) runs 1,000.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn

import fxckpt
import fxckpt.api as api
from fxckpt.measure import LiveBytesMode

HOT = (8, 12, 16)  # batch sizes the loop keeps coming back to


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 64), nn.BatchNorm1d(64),
                         nn.GELU(), nn.Linear(64, 4)).train()


def soak(steps: int, new_shape_every: int) -> None:
    model = _model()
    # Everything recomputed: the most recipes, replays and frees per step.
    ckpt = fxckpt.auto_checkpoint(model, torch.randn(HOT[0], 16), budget_mb=2**20, solver="all")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    planned, dropped = [0], []
    plan_model = api.plan_model

    def counting_plan_model(*args, **kwargs):
        planned[0] += 1
        return plan_model(*args, **kwargs)

    api.plan_model = counting_plan_model
    try:
        for step in range(steps):
            fresh = step % new_shape_every == new_shape_every - 1
            batch = 20 + step // new_shape_every if fresh else HOT[step % len(HOT)]
            x = torch.randn(batch, 16)
            before, gms = planned[0], {id(p.gm): weakref.ref(p.gm) for p in ckpt.plans.values()}
            with LiveBytesMode() as live:
                loss = ckpt(x).pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                del loss
                retained = live.current_bytes
            if planned[0] == before:  # planning keeps fake tensors with its plan: judged below
                assert retained == 0, f"step {step} (batch {batch}) left {retained} bytes alive"
            assert len(ckpt.plans) <= api.PLAN_CACHE_SIZE
            dropped += [ref for key, ref in gms.items() if key not in {id(p.gm) for p in ckpt.plans.values()}]
    finally:
        api.plan_model = plan_model
    gc.collect()
    assert all(ref() is None for ref in dropped), "a dropped plan's graph is still alive"
    distinct = len(HOT) + steps // new_shape_every
    if distinct > api.PLAN_CACHE_SIZE:
        assert dropped, "more signatures than the cache holds, none dropped"
    # The hot shapes stay cached: planning happened once per fresh shape (+ the hot ones).
    assert planned[0] <= distinct


def test_soak_short(monkeypatch):
    monkeypatch.setattr(api, "PLAN_CACHE_SIZE", 4)
    soak(steps=50, new_shape_every=10)  # 5 fresh shapes + 3 hot, a cache of 4: it must drop some


@pytest.mark.slow
def test_soak_1000_steps():
    soak(steps=1000, new_shape_every=50)  # 20 fresh shapes + 3 hot, more than the cache holds
