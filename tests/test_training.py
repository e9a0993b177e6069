"""fxckpt.training: checkpointed gradient accumulation ends with the parameters of plain gradient
accumulation on the unmodified model, bitwise (dropout active, AdamW)."""

import copy
import doctest

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxckpt.training
from fxckpt.manual import CheckpointedSequential, SelectiveCheckpoint
from fxckpt.recipes import TransformerCheckpointing
from fxckpt.training import memory_efficient_gradient_accumulation


def plain_accumulation(model, data, loss_fn, optimizer, steps):
    losses = []
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(data, 1):
        loss = loss_fn(model(x), y)
        (loss / steps).backward()
        losses.append(loss.item())
        if i % steps == 0 or i == len(data):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return losses


def check(model, data, loss_fn, steps, **kwargs):
    plain = copy.deepcopy(model)
    torch.manual_seed(7)
    result = memory_efficient_gradient_accumulation(model, data, loss_fn, torch.optim.AdamW(model.parameters(), lr=1e-2),
                                                    accumulation_steps=steps, **kwargs)
    torch.manual_seed(7)
    expected = plain_accumulation(plain, data, loss_fn, torch.optim.AdamW(plain.parameters(), lr=1e-2), steps)
    assert list(result.micro_losses) == expected
    for (name, p), q in zip(plain.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
    groups = [expected[i:i + steps] for i in range(0, len(expected), steps)]
    assert list(result.losses) == [sum(g) / steps for g in groups]
    assert result.peak_bytes > 0
    return result


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.2), nn.Linear(64, 64), nn.GELU(),
                         nn.Dropout(0.2), nn.Linear(64, 1))


def test_sequential_segments_equal_plain_accumulation():
    data = [(torch.randn(32, 16), torch.randn(32, 1)) for _ in range(7)]  # two full steps and a short one
    result = check(mlp(), data, F.mse_loss, 3, checkpoint_segments=2)
    assert len(result.losses) == 3
    assert isinstance(result.model, CheckpointedSequential) and result.model.segments() == [(0, 4), (4, 7)]


def test_block_stack_and_budget_equal_plain_accumulation():
    torch.manual_seed(0)
    model = TransformerCheckpointing.create_checkpointed_transformer(4, 32, 0, num_heads=4, dropout=0.1)
    data = [(torch.randn(2, 8, 32), torch.randn(2, 8, 32)) for _ in range(4)]
    result = check(model, data, F.mse_loss, 2, checkpoint_segments=2)
    assert isinstance(result.model, SelectiveCheckpoint) and result.model.checkpoint_layers == ("blocks.0", "blocks.1")
    result = check(model, data, F.mse_loss, 2, budget_mb=0.1)
    assert result.model.plan.budget_bytes == int(0.1 * 2**20) >= result.model.plan.predicted_peak_bytes


def test_checkpointing_lowers_the_peak():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(256, 256), nn.GELU())])
    data = [(torch.randn(256, 256), torch.randn(256, 256)) for _ in range(2)]
    peaks = [memory_efficient_gradient_accumulation(model, data, F.mse_loss, torch.optim.SGD(model.parameters(), lr=0),
                                                    accumulation_steps=2, checkpoint_segments=k).peak_bytes
             for k in (1, 3)]
    assert peaks[1] < peaks[0]


def test_bad_arguments_are_explained():
    model, opt = mlp(), torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="accumulation_steps must be an int >= 1"):
        memory_efficient_gradient_accumulation(model, [], F.mse_loss, opt, accumulation_steps=0)
    with pytest.raises(ValueError, match="no .inputs, targets. micro-batch"):
        memory_efficient_gradient_accumulation(model, [], F.mse_loss, opt)
    with pytest.raises(ValueError, match="budget_mb="):
        memory_efficient_gradient_accumulation(nn.Linear(2, 2), [(torch.randn(1, 2), torch.randn(1, 2))], F.mse_loss, opt)


def test_doctests():
    assert doctest.testmod(fxckpt.training).failed == 0
