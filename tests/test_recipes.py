"""fxckpt.recipes: each recipe trains bitwise like its unmodified model (outputs, gradients,
BatchNorm statistics, dropout), holds less, and plans under a budget when given one."""

import copy
import doctest

import pytest
import torch

import fxckpt
import fxckpt.recipes
from fxckpt.api import CheckpointedModule
from fxckpt.measure import measure_step, step_loss
from fxckpt.recipes import (MixedPrecisionCheckpointing, ResNetCheckpointing, TransformerCheckpointing,
                            UNetCheckpointing)


def step(model, x, seed=1):
    torch.manual_seed(seed)
    out = model(x)
    (out.float() ** 2).mean().backward()  # not a plain sum: its gradient through BatchNorm is zero
    return out


def assert_trains_like(wrapped, plain, x):
    """One step of each from the same weights and RNG: equal outputs, gradients and buffers."""
    out_w, out_p = step(wrapped, x), step(plain, x)
    assert torch.equal(out_w, out_p)
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        assert torch.equal(p.grad, q.grad), name
    for (name, a), b in zip(plain.named_buffers(), wrapped.buffers()):
        assert torch.equal(a, b), name


def manual_and_plain(model):
    torch.manual_seed(0)
    return model, copy.deepcopy(model.module)


@pytest.mark.parametrize("block_type, layers, stages, expected", [
    ("basic", [1, 2], [2], ("layer2.0", "layer2.1")),
    ("bottleneck", [1, 1, 1], [1, 3], ("layer1.0", "layer3.0")),
])
def test_resnet(block_type, layers, stages, expected):
    model, plain = manual_and_plain(ResNetCheckpointing.create_checkpointed_resnet(
        block_type, layers, stages, num_classes=5, width=8))
    assert model.checkpoint_layers == expected
    x = torch.randn(2, 3, 16, 16)
    assert_trains_like(model, plain, x)
    assert measure_step(model, x, warmup=False).peak_bytes < measure_step(plain, x, warmup=False).peak_bytes


def test_transformer_with_dropout():
    model, plain = manual_and_plain(TransformerCheckpointing.create_checkpointed_transformer(
        4, 32, 2, num_heads=4, dropout=0.2))
    assert model.checkpoint_layers == ("blocks.0", "blocks.2")
    x = torch.randn(2, 16, 32)
    assert_trains_like(model, plain, x)
    assert measure_step(model, x, warmup=False).peak_bytes < measure_step(plain, x, warmup=False).peak_bytes


def test_unet():
    model, plain = manual_and_plain(UNetCheckpointing.create_checkpointed_unet([4, 8, 16], True, False))
    assert model.checkpoint_layers == ("downs.0", "downs.1", "downs.2")
    x = torch.randn(2, 3, 16, 16)
    assert_trains_like(model, plain, x)
    assert measure_step(model, x, warmup=False).peak_bytes < measure_step(plain, x, warmup=False).peak_bytes
    assert UNetCheckpointing.create_checkpointed_unet([4], False, True).checkpoint_layers == ("decoders.0",)


def test_budget_plans_with_the_solver():
    x = torch.randn(2, 16, 32)
    torch.manual_seed(0)
    model = TransformerCheckpointing.create_checkpointed_transformer(2, 32, num_heads=4, budget=0.6, example_input=x)
    assert isinstance(model, CheckpointedModule)
    assert model.plan.predicted_peak_bytes <= model.plan.budget_bytes < model.plan.baseline_peak_bytes
    assert measure_step(model, x, warmup=False).peak_bytes == model.plan.dry_run_peak_bytes
    assert_trains_like(model, copy.deepcopy(model._model), x)
    resnet = ResNetCheckpointing.create_checkpointed_resnet("basic", [1], num_classes=3, width=8, budget_mb=0.25,
                                                            example_input=torch.randn(2, 3, 16, 16), solver="greedy")
    assert resnet.plan.budget_bytes == 2**18 >= resnet.plan.predicted_peak_bytes
    assert resnet.plan.solver == "greedy"


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="'basic' or 'bottleneck'"):
        ResNetCheckpointing.create_checkpointed_resnet("wide")
    with pytest.raises(ValueError, match=r"stage numbers 1\.\.2"):
        ResNetCheckpointing.create_checkpointed_resnet("basic", [1, 1], [0, 3], width=8)
    with pytest.raises(ValueError, match="example_input"):
        UNetCheckpointing.create_checkpointed_unet([4], budget_mb=10)
    with pytest.raises(ValueError, match="not both"):
        UNetCheckpointing.create_checkpointed_unet([4], budget_mb=10, budget=0.5, example_input=torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        TransformerCheckpointing.create_checkpointed_transformer(2, 30, num_heads=4)


@pytest.mark.parametrize("kind", ["plain", "recipe", "auto"])
def test_mixed_precision_gradients_equal_autocast_without_checkpointing(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32)
    recipe = TransformerCheckpointing.create_checkpointed_transformer(3, 32, 1, num_heads=4, dropout=0.1)
    plain = copy.deepcopy(recipe.module)
    model = {"plain": recipe.module, "recipe": recipe}.get(kind)
    if kind == "auto":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model = fxckpt.auto_checkpoint(recipe.module, x, budget=0.8, solver="greedy")
    torch.manual_seed(1)
    out, loss = MixedPrecisionCheckpointing.checkpoint_with_mixed_precision(model, x)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_out = plain(x)
        ref_loss = step_loss(ref_out)
    ref_loss.backward()
    assert torch.equal(out, ref_out) and torch.equal(loss, ref_loss.detach())
    for (name, p), q in zip(plain.named_parameters(), recipe.module.parameters()):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_precision_cuda_fp16_with_grad_scaler():
    torch.manual_seed(0)
    recipe = TransformerCheckpointing.create_checkpointed_transformer(2, 64, 1, num_heads=4, dropout=0.1).cuda()
    plain = copy.deepcopy(recipe.module)
    x = torch.randn(2, 16, 64, device="cuda")
    scalers = [torch.amp.GradScaler("cuda", init_scale=1024.0) for _ in range(2)]
    torch.manual_seed(1)
    out, loss = MixedPrecisionCheckpointing.checkpoint_with_mixed_precision(recipe, x, scaler=scalers[0])
    torch.manual_seed(1)
    with torch.autocast("cuda", dtype=torch.float16):
        ref = step_loss(plain(x))
    scalers[1].scale(ref).backward()
    assert torch.equal(loss, ref.detach())
    for (name, p), q in zip(plain.named_parameters(), recipe.module.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_doctests():
    assert doctest.testmod(fxckpt.recipes).failed == 0
