"""The benchmark models: ``ZOO`` maps a name to a `ZooModel` whose ``build()`` gives ``(model,
example_input)``, seeded and in train mode.

The builders of the Hugging Face models take their shape as arguments (`gpt2`, `llama`), so the
tutorial's ``compare_strategies(num_layers=..., hidden_size=...)`` call, the demo, the scripts in
``benchmarks/`` and the tests can build the same model at any size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ZOO", "QuickNet", "ZooModel", "gpt2", "hf_model", "llama", "transformer", "unet"]


@dataclass(frozen=True)
class ZooModel:
    """A benchmark model: ``build()`` returns ``(model, example_input)``, seeded, in train mode."""

    build: Callable[[], tuple[nn.Module, Any]]
    description: str
    threads: int | None = None  # torch threads while it runs (None: leave as is)


class _QuickBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.drop = nn.Dropout(0.1)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(self.drop(nn.functional.gelu(self.up(self.norm(x)))))


class QuickNet(nn.Module):
    """A tiny residual MLP stack (6 blocks with dropout) with a cross-entropy loss."""

    def __init__(self, d: int = 64, blocks: int = 6, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.blocks = nn.ModuleList(_QuickBlock(d) for _ in range(blocks))
        self.head = nn.Linear(d, classes)

    def forward(self, x, labels):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return nn.functional.cross_entropy(self.head(h).flatten(0, -2), labels.flatten())


def _quick():
    torch.manual_seed(0)
    model = QuickNet().train()
    return model, {"x": torch.randn(16, 32, 64), "labels": torch.randint(0, 10, (16, 32))}


def hf_model(model_class, **config) -> nn.Module:
    """A Hugging Face model in training mode, ``model_class(model_class.config_class(**config))``,
    its random weights drawn after ``torch.manual_seed(0)``: the benchmark models and the tests'
    tiny ones are built by it.

    Example:
        >>> from transformers import GPT2LMHeadModel
        >>> model = hf_model(GPT2LMHeadModel, n_layer=1, n_embd=32, n_head=2, vocab_size=64)
        >>> model.training, model.config.n_layer
        (True, 1)
    """
    torch.manual_seed(0)
    return model_class(model_class.config_class(**config)).train()


def gpt2(layers: int, hidden: int, heads: int, batch: int, seq: int, vocab: int):
    """A Hugging Face ``GPT2LMHeadModel`` from its config (random weights, seed 0, train mode)
    and a batch of random token ids with an attention mask and labels.

    Example:
        >>> model, example = gpt2(2, 64, 4, batch=2, seq=16, vocab=128)
        >>> sorted(example), tuple(example["input_ids"].shape)
        (['attention_mask', 'input_ids', 'labels'], (2, 16))
    """
    from transformers import GPT2LMHeadModel

    model = hf_model(GPT2LMHeadModel, n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab,
                     n_positions=max(seq, 64))
    ids = torch.randint(0, vocab, (batch, seq))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def transformer(num_layers: int, hidden_size: int, batch_size: int, sequence_length: int, vocab_size: int = 50257):
    """The model of the tutorial's ``compare_strategies(num_layers=..., hidden_size=...,
    batch_size=..., sequence_length=...)`` call: GPT-2 (`gpt2`) of that shape, one head per 64
    hidden units as in GPT-2's own configurations, called with ``use_cache=False``.

    Example:
        >>> model, example = transformer(num_layers=2, hidden_size=64, batch_size=2, sequence_length=16, vocab_size=128)
        >>> model.config.n_head, example["use_cache"]
        (1, False)
    """
    if hidden_size % 64 and hidden_size >= 64:
        raise ValueError(f"hidden_size must be a multiple of 64 (one attention head per 64 units), got {hidden_size}")
    model, example = gpt2(num_layers, hidden_size, max(1, hidden_size // 64), batch_size, sequence_length, vocab_size)
    return model, {**example, "use_cache": False}


def llama(layers: int, hidden: int, intermediate: int, heads: int, batch: int, seq: int, vocab: int):
    """A Hugging Face ``LlamaForCausalLM`` from its config (random weights, seed 0, train mode),
    random token ids as input and labels, ``use_cache=False``."""
    from transformers import LlamaForCausalLM

    model = hf_model(LlamaForCausalLM, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
                     num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                     max_position_embeddings=seq)
    ids = torch.randint(0, vocab, (batch, seq))
    return model, {"input_ids": ids, "labels": ids, "use_cache": False}


def _gpt2_small():
    model, example = gpt2(12, 768, 12, 2, 256, 50257)
    return model, {**example, "use_cache": False}


def _resnet50():
    from transformers import ResNetForImageClassification

    model = hf_model(ResNetForImageClassification)
    return model, {"pixel_values": torch.randn(4, 3, 224, 224), "labels": torch.randint(0, model.config.num_labels, (4,))}


def unet(size: int = 64, channels: tuple[int, ...] = (64, 128, 256, 256)):
    """The zoo's diffusers U-Net (attention at the third level) on a 2 x 3 x size x size batch."""
    from diffusers import UNet2DModel  # an ImportError is the row's status: "diffusers not installed"

    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=channels,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ).train()
    return model, {"sample": torch.randn(2, 3, size, size), "timestep": torch.tensor([10, 500])}


ZOO: dict[str, ZooModel] = {
    # One thread: its ops are tiny, and on a shared machine two threads stall on OpenMP barriers.
    "quick": ZooModel(_quick, "QuickNet: 6 residual MLP blocks (d=64, dropout 0.1), batch 16 x 32 tokens, "
                      "cross-entropy; 1 thread", threads=1),
    "gpt2-small": ZooModel(_gpt2_small, "GPT-2 small (transformers, random weights): 12 layers, 768 hidden, 12 heads, "
                           "vocab 50257, batch 2 x seq 256, labels, use_cache=False"),
    "llama": ZooModel(lambda: llama(8, 512, 1376, 8, 2, 256, 32000),
                      "Llama (transformers LlamaConfig, random weights): 8 layers, hidden 512, intermediate 1376, "
                      "8 heads, vocab 32000, batch 2 x seq 256, labels, use_cache=False"),
    "resnet50": ZooModel(_resnet50, "ResNet-50 (transformers ResNetConfig defaults, ResNetForImageClassification, "
                         "2 labels), input 4x3x224x224, labels"),
    "unet": ZooModel(unet, "diffusers UNet2DModel, channels (64, 128, 256, 256), 2 resnets per block, attention at "
                     "16x16, input 2x3x64x64 with timesteps [10, 500], loss = sum of the output"),
}
