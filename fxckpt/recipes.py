"""Architecture recipes: ResNet, transformer and U-Net models built checkpointed, and a mixed-precision
training step.

Each ``create_checkpointed_*`` builds the model (random weights) and checkpoints it either by hand,
the blocks a flag names running under `fxckpt.checkpoint` through `fxckpt.SelectiveCheckpoint`
(dropout and BatchNorm stay exact), or, given ``budget_mb=`` / ``budget=`` and an example input,
with `fxckpt.auto_checkpoint`, which chooses what to recompute under that byte budget.

NOTE [ Checkpoint blocks, not stages ]
Recomputing a region rematerializes everything its backward saved at once, so checkpointing a
whole ResNet stage (or a whole encoder) as one region lowers the forward's memory but not the
peak inside that stage's backward. The recipes checkpoint each block of a chosen stage on its own:
the stage then holds only its blocks' inputs, and backward rebuilds one block at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .manual import SelectiveCheckpoint, block_stack, checkpoint

__all__ = ["MixedPrecisionCheckpointing", "ResNetCheckpointing", "TransformerCheckpointing", "UNetCheckpointing"]


def _finish(model: nn.Module, layers: Sequence[str], budget_mb, budget, example_input, solver: str) -> nn.Module:
    """Hand-picked `layers` under `SelectiveCheckpoint`, or, with a budget, `auto_checkpoint`."""
    if budget_mb is not None or budget is not None:
        if budget_mb is not None and budget is not None:
            raise ValueError("pass budget_mb= (MiB) or budget= (a fraction of the un-checkpointed peak), not both")
        if example_input is None:
            raise ValueError("planning under a budget needs example_input= (the input of one training step)")
        from .api import auto_checkpoint

        if budget is not None:
            return auto_checkpoint(model, example_input, budget=budget, solver=solver)
        return auto_checkpoint(model, example_input, budget_mb, solver=solver)
    return SelectiveCheckpoint(model, list(layers)) if layers else model


# ---------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _shortcut(c_in, width, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _shortcut(c_in, out, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """torchvision's ResNet layout (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``)."""

    def __init__(self, block: type, layers: Sequence[int], num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c_in = width
        for i, n in enumerate(layers):
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, width * 2**i, 2 if i > 0 and j == 0 else 1))
                c_in = width * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNetCheckpointing:
    """ResNets (torchvision's layout, written here) with chosen stages checkpointed block by block."""

    @staticmethod
    def create_checkpointed_resnet(block_type: str = "basic", layers: Sequence[int] = (2, 2, 2, 2),
                                   checkpoint_stages: Sequence[int] = (1, 2), *, num_classes: int = 1000,
                                   width: int = 64, budget_mb: float | None = None, budget: float | None = None,
                                   example_input: Any = None, solver: str = "auto") -> nn.Module:
        """Build a ResNet and checkpoint every block of the stages ``checkpoint_stages``.

        Args:
            block_type: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101/152).
            layers: blocks per stage, e.g. ``[3, 4, 6, 3]`` with ``"bottleneck"`` is ResNet-50.
            checkpoint_stages: stage numbers as torchvision names them (``1`` is ``layer1``).
            num_classes, width: the classifier's outputs and the first stage's width.
            budget_mb, budget: instead of ``checkpoint_stages``, plan with `fxckpt.auto_checkpoint`
                under this budget (MiB, or a fraction of the un-checkpointed peak).
            example_input: the input of one training step; needed with a budget.
            solver: the solver for a budget.

        Returns:
            A `SelectiveCheckpoint` over the model (or the model itself when no stage is chosen), or
            with a budget a `CheckpointedModule`; both share the model's parameters.

        Raises:
            ValueError: an unknown block type, a stage number out of range, or a budget without an
                example input.

        Example:
            >>> model = ResNetCheckpointing.create_checkpointed_resnet("basic", [1, 1], [1], num_classes=10, width=8)
            >>> model.checkpoint_layers
            ('layer1.0',)
            >>> model(torch.randn(2, 3, 32, 32)).shape
            torch.Size([2, 10])
        """
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block_type not in blocks:
            raise ValueError(f"block_type must be 'basic' or 'bottleneck', got {block_type!r}")
        model = ResNet(blocks[block_type], list(layers), num_classes, width)
        bad = [s for s in checkpoint_stages if not (isinstance(s, int) and 1 <= s <= len(layers))]
        if bad and budget_mb is None and budget is None:  # a budget replaces the hand-picked stages
            raise ValueError(f"checkpoint_stages are stage numbers 1..{len(layers)} (1 is layer1), got {bad}")
        names = [f"layer{s}.{j}" for s in sorted(set(checkpoint_stages) - set(bad)) for j in range(layers[s - 1])]
        return _finish(model, names, budget_mb, budget, example_input, solver)


# ---------------------------------------------------------------- transformer


class TransformerBlock(nn.Module):
    """Pre-LayerNorm causal self-attention + MLP block (GPT-2's)."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.num_heads)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = self.dropout(scores.masked_fill(causal, float("-inf")).softmax(-1))
        x = x + self.dropout(self.proj((attn @ v).transpose(1, 2).reshape(b, t, d)))
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class Transformer(nn.Module):
    """A stack of `TransformerBlock` (``blocks``) and a final LayerNorm, on ``(batch, seq, d_model)``."""

    def __init__(self, num_layers: int, d_model: int, num_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(d_model, num_heads, d_ff, dropout) for _ in range(num_layers))
        self.ln = nn.LayerNorm(d_model)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.ln(x)


class TransformerCheckpointing:
    """Transformer stacks with every n-th block checkpointed."""

    @staticmethod
    def create_checkpointed_transformer(num_layers: int = 12, d_model: int = 768, checkpoint_every_n: int = 2, *,
                                        num_heads: int = 12, d_ff: int | None = None, dropout: float = 0.1,
                                        budget_mb: float | None = None, budget: float | None = None,
                                        example_input: Any = None, solver: str = "auto") -> nn.Module:
        """Build a pre-LayerNorm causal transformer and checkpoint blocks 0, n, 2n, ...

        The model maps ``(batch, seq, d_model)`` to the same shape.

        Args:
            num_layers, d_model, num_heads, d_ff, dropout: its shape (``d_ff`` default ``4 * d_model``).
            checkpoint_every_n: checkpoint the blocks whose index is a multiple of it (1: every
                block, as Hugging Face's gradient checkpointing does; 0: none).
            budget_mb, budget, example_input, solver: plan under a budget instead (see
                `ResNetCheckpointing.create_checkpointed_resnet`).

        Example:
            >>> model = TransformerCheckpointing.create_checkpointed_transformer(4, 32, 2, num_heads=4)
            >>> model.checkpoint_layers
            ('blocks.0', 'blocks.2')
        """
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads})")
        if isinstance(checkpoint_every_n, bool) or not isinstance(checkpoint_every_n, int) or checkpoint_every_n < 0:
            raise ValueError(f"checkpoint_every_n must be an int >= 0, got {checkpoint_every_n!r}")
        model = Transformer(num_layers, d_model, num_heads, d_ff or 4 * d_model, dropout)
        names = [f"blocks.{i}" for i in range(0, num_layers, checkpoint_every_n)] if checkpoint_every_n else []
        return _finish(model, names, budget_mb, budget, example_input, solver)


# ---------------------------------------------------------------- U-Net


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class UNet(nn.Module):
    """The U-Net of Ronneberger et al. (same-padded): ``downs`` (encoder), ``bottleneck``,
    ``ups`` (transposed convolutions) and ``decoders``, skip connections by concatenation."""

    def __init__(self, features: Sequence[int], in_channels: int = 3, out_channels: int = 1):
        super().__init__()
        self.downs = nn.ModuleList()
        c = in_channels
        for f in features:
            self.downs.append(_double_conv(c, f))
            c = f
        self.bottleneck = _double_conv(c, 2 * c)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for f in reversed(features):
            self.ups.append(nn.ConvTranspose2d(2 * f, f, 2, 2))
            self.decoders.append(_double_conv(2 * f, f))
        self.head = nn.Conv2d(features[0], out_channels, 1)

    def forward(self, x):
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([skip, up(x)], 1))
        return self.head(x)


class UNetCheckpointing:
    """U-Nets with the encoder's and/or the decoder's blocks checkpointed."""

    @staticmethod
    def create_checkpointed_unet(features: Sequence[int] = (64, 128, 256, 512), checkpoint_encoder: bool = True,
                                 checkpoint_decoder: bool = False, *, in_channels: int = 3, out_channels: int = 1,
                                 budget_mb: float | None = None, budget: float | None = None,
                                 example_input: Any = None, solver: str = "auto") -> nn.Module:
        """Build a U-Net and checkpoint each encoder block and/or each decoder block.

        Inputs are ``(batch, in_channels, H, W)`` with H and W multiples of ``2 ** len(features)``.

        Args:
            features: channels of each encoder level (the bottleneck has twice the last).
            checkpoint_encoder, checkpoint_decoder: which blocks run under `fxckpt.checkpoint`.
            budget_mb, budget, example_input, solver: plan under a budget instead (see
                `ResNetCheckpointing.create_checkpointed_resnet`).

        Example:
            >>> model = UNetCheckpointing.create_checkpointed_unet([4, 8], True, True)
            >>> model.checkpoint_layers
            ('downs.0', 'downs.1', 'decoders.0', 'decoders.1')
            >>> model(torch.randn(1, 3, 16, 16)).shape
            torch.Size([1, 1, 16, 16])
        """
        if not features:
            raise ValueError("features needs at least one level, e.g. [64, 128, 256, 512]")
        model = UNet(list(features), in_channels, out_channels)
        names = ([f"downs.{i}" for i in range(len(features))] if checkpoint_encoder else []) + \
                ([f"decoders.{i}" for i in range(len(features))] if checkpoint_decoder else [])
        return _finish(model, names, budget_mb, budget, example_input, solver)


# ---------------------------------------------------------------- mixed precision


def _is_checkpointed(model: nn.Module) -> bool:
    from .api import CheckpointedModule
    from .manual import CheckpointedSequential

    return isinstance(model, (CheckpointedModule, SelectiveCheckpoint, CheckpointedSequential))


class MixedPrecisionCheckpointing:
    """A training step under autocast with activation checkpointing: bf16 on CPU, fp16 with a
    ``GradScaler`` on CUDA."""

    @staticmethod
    def checkpoint_with_mixed_precision(model: nn.Module, input: Any, use_amp: bool = True, *, loss_fn=None,
                                        scaler: torch.amp.GradScaler | None = None):
        """Forward and backward of one step under ``torch.autocast``, checkpointed.

        A model fxckpt already checkpoints (`auto_checkpoint`'s `CheckpointedModule`,
        `SelectiveCheckpoint`, `CheckpointedSequential`, a recipe's model) runs as it is; for
        another, every block of its largest ``nn.Sequential`` / ``nn.ModuleList`` runs under
        `fxckpt.checkpoint` (the whole model, if it has none). The recomputation replays the
        forward's autocast state, so gradients equal those of the same model under autocast
        without checkpointing.

        On CUDA the autocast dtype is float16: pass your ``torch.amp.GradScaler("cuda")`` as
        ``scaler`` and the loss is scaled by it before backward (then ``scaler.step(optimizer)``,
        ``scaler.update()``); without one the backward is unscaled, and small float16 gradients
        may underflow. On the CPU it is bfloat16, which needs no scaling.

        Args:
            model: the module to step.
            input: a tensor, a tuple of positional arguments or a dict of keyword arguments.
            use_amp: False runs in full precision (checkpointed all the same).
            loss_fn: maps the output to a scalar loss (default `fxckpt.measure.step_loss`).
            scaler: the ``GradScaler`` to scale the loss with on CUDA.

        Returns:
            ``(output, loss)``, the loss unscaled.

        Example:
            >>> model = TransformerCheckpointing.create_checkpointed_transformer(2, 32, 1, num_heads=4)
            >>> out, loss = MixedPrecisionCheckpointing.checkpoint_with_mixed_precision(model, torch.randn(2, 8, 32))
            >>> out.dtype, model.module.blocks[0].fc1.weight.grad.dtype
            (torch.float32, torch.float32)
        """
        from .measure import step_loss
        from .passes.capture import split_input

        args, kwargs = split_input(input)
        tensors = [t for t in (*args, *kwargs.values(), *model.parameters()) if isinstance(t, torch.Tensor)]
        device = next((t.device.type for t in tensors if t.device.type == "cuda"), "cpu")
        if not _is_checkpointed(model):
            found = block_stack(model)
            if found is not None and len(found[1]):
                model = SelectiveCheckpoint(model, list(range(len(found[1]))))
            else:
                whole = model
                model = lambda *a, **k: checkpoint(whole, *a, **k)  # noqa: E731
        dtype = torch.float16 if device == "cuda" else torch.bfloat16
        with torch.autocast(device, dtype=dtype, enabled=use_amp):
            output = model(*args, **kwargs)
            loss = (loss_fn or step_loss)(output)
        if scaler is not None and device == "cuda" and use_amp:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        return output, loss.detach()
