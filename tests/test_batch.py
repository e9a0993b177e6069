"""The largest batch under a budget, verified by measurement; the peak as a formula in the batch."""

import pytest
import sympy
import torch

import fxckpt
from fxckpt.batch import with_batch
from fxckpt.measure import measure_step
from tests.models import ZOO

MiB = 2**20


def test_max_batch_size_fits_when_measured_and_the_next_does_not():
    model, example = ZOO["transformer"]()
    budget_mb = 2.0
    batch, ckpt = fxckpt.max_batch_size(model, example, budget_mb=budget_mb)
    assert batch >= 2
    big = with_batch(example, batch)
    assert measure_step(ckpt, big).peak_bytes <= budget_mb * MiB
    with pytest.raises(fxckpt.InfeasibleBudgetError):
        fxckpt.auto_checkpoint(model, with_batch(example, batch + 1), budget_mb=budget_mb)


def test_peak_formula_predicts_other_batches_exactly():
    model, example = ZOO["mlp"]()
    formula = fxckpt.peak_formula(model, example, batches=(2, 4))
    (B,) = formula.free_symbols
    for batch in (8, 24):
        plan = fxckpt.auto_checkpoint(model, with_batch(example, batch), budget=1.0).plan
        assert formula.subs(B, batch) == plan.predicted_peak_bytes
    assert isinstance(formula, sympy.Expr)


def test_with_batch_repeats_rows_and_keeps_other_tensors():
    x = {"ids": torch.arange(6).view(3, 2), "scale": torch.ones(5)}
    y = with_batch(x, 7)
    assert y["ids"].shape == (7, 2) and (y["ids"][3] == x["ids"][0]).all()
    assert y["scale"] is x["scale"]
