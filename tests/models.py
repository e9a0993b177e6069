"""A zoo of TINY models for correctness tests.

Each factory ``make_<name>()`` returns ``(model, example_input)``:

* ``model`` is in ``train()`` mode, built under ``torch.manual_seed`` so that two
  calls give identical weights and inputs;
* ``example_input`` is a Tensor (call ``model(x)``), a tuple (``model(*x)``) or a
  dict of kwargs (``model(**x)``); :func:`call_model` does the dispatch.

Every model runs forward + backward on the CPU in well under a second. All but
``gpt2`` trace with ``torch.fx.symbolic_trace`` (Hugging Face's GPT-2 does not).
Models with dropout (``transformer``, ``gpt2``) need the RNG re-seeded before each
run to compare two runs.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxckpt.benchmark.zoo import hf_model  # the benchmark zoo's seeded Hugging Face builder

Example = Any  # torch.Tensor | tuple | dict[str, Any]


# ---------------------------------------------------------------- helpers


def clone_model(model: nn.Module) -> nn.Module:
    """An independent copy (same weights, same tying, same requires_grad)."""
    return copy.deepcopy(model)


def call_model(model: Callable, example: Example):
    """Call ``model`` with ``example`` as a Tensor, positional tuple or kwargs dict."""
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, (tuple, list)):
        return model(*example)
    return model(example)


def scalar_loss(output) -> torch.Tensor:
    """A scalar to call ``backward()`` on, for any zoo model's output."""
    loss = getattr(output, "loss", None)  # Hugging Face ModelOutput
    if loss is not None:
        return loss
    if isinstance(output, dict):
        output = output["loss"] if "loss" in output else next(iter(output.values()))
    if isinstance(output, (tuple, list)):
        output = output[0]
    out = output.float()
    # A fixed, position-dependent weighting: unlike mean(out**2) alone it does not
    # go flat behind a LayerNorm, so every parameter gets a non-trivial gradient.
    w = torch.linspace(-1.0, 1.0, out.numel(), device=out.device).view(out.shape)
    return (out * w).sum() + out.pow(2).mean()


# ---------------------------------------------------------------- mlp


def make_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.GELU(),
        nn.Linear(64, 16),
    )
    x = torch.randn(256, 32)
    return model.train(), x


# ---------------------------------------------------------------- transformer


class SelfAttention(nn.Module):
    """Hand-written causal multi-head self-attention."""

    def __init__(self, d: int, n_heads: int, p: float = 0.1):
        super().__init__()
        assert d % n_heads == 0
        self.n_heads = n_heads
        self.head_dim = d // n_heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.attn_drop = nn.Dropout(p)

    def forward(self, x):
        b, t, d = x.size(0), x.size(1), x.size(2)
        h, hd = self.n_heads, self.head_dim
        q = self.q(x).view(b, t, h, hd).transpose(1, 2)  # (b, h, t, hd)
        k = self.k(x).view(b, t, h, hd).transpose(1, 2)
        v = self.v(x).view(b, t, h, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        # Causal mask built from the scores' own shape (slicing a buffer with a
        # traced length would break torch.fx.symbolic_trace).
        future = torch.ones_like(scores, dtype=torch.bool).triu(diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
        probs = self.attn_drop(F.softmax(scores, dim=-1))
        y = (probs @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, d: int, n_heads: int, p: float = 0.1):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_heads, p=p)
        self.drop1 = nn.Dropout(p)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * d, d)
        self.drop2 = nn.Dropout(p)

    def forward(self, x):
        x = x + self.drop1(self.attn(self.ln1(x)))
        x = x + self.drop2(self.fc2(self.act(self.fc1(self.ln2(x)))))
        return x


class TinyTransformer(nn.Module):
    def __init__(self, d: int = 32, n_heads: int = 4, n_layers: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList([Block(d, n_heads) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, d)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def make_transformer():
    torch.manual_seed(0)
    model = TinyTransformer(d=32, n_heads=4, n_layers=3)
    x = torch.randn(4, 32, 32)
    return model.train(), x


# ---------------------------------------------------------------- cnn


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )
        else:
            self.down = nn.Identity()

    def forward(self, x):
        identity = self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in-place add
        return self.relu(out)


class TinyCNN(nn.Module):
    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
        )
        self.layer1 = ResBlock(8, 8)
        self.layer2 = ResBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_cnn():
    torch.manual_seed(0)
    model = TinyCNN()
    x = torch.randn(8, 3, 16, 16)
    return model.train(), x


# ---------------------------------------------------------------- unet


def _cbr(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    def __init__(self, c_in: int = 3, n_classes: int = 2):
        super().__init__()
        self.enc1 = _cbr(c_in, 8)  # 16x16
        self.enc2 = _cbr(8, 16)  # 8x8
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _cbr(16, 32)  # 4x4
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2)  # -> 8x8
        self.dec2 = _cbr(32, 16)  # cat(up2, enc2)
        self.up1 = nn.Sequential(  # -> 16x16
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(16, 8, 1),
        )
        self.dec1 = _cbr(16, 8)  # cat(up1, enc1)
        self.head = nn.Conv2d(8, n_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


def make_unet():
    torch.manual_seed(0)
    model = TinyUNet()
    x = torch.randn(4, 3, 32, 32)
    return model.train(), x


# ---------------------------------------------------------------- gpt2 (Hugging Face)


def make_gpt2():
    """Tiny GPT2LMHeadModel, random weights, default dropout (0.1).

    Not traceable by ``torch.fx.symbolic_trace``; the input is a kwargs dict and
    the output a ``CausalLMOutputWithCrossAttentions`` whose ``.loss`` is set.
    """
    from transformers import GPT2LMHeadModel

    model = hf_model(GPT2LMHeadModel, n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                eos_token_id=0)
    input_ids = torch.randint(0, model.config.vocab_size, (4, 32))
    return model, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


# ---------------------------------------------------------------- tied


class TiedLM(nn.Module):
    """Tiny LM whose output projection shares its weight with the embedding."""

    def __init__(self, vocab: int = 64, d: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, d)
        self.act = nn.GELU()
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.act(self.fc(h))
        return self.head(self.ln(h))


def make_tied():
    torch.manual_seed(0)
    model = TiedLM()
    ids = torch.randint(0, 64, (16, 64))
    return model.train(), ids


# ---------------------------------------------------------------- frozen


def make_frozen():
    """MLP whose first Linear is frozen; the input itself requires grad."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Linear(32, 4),
    )
    for p in model[0].parameters():
        p.requires_grad_(False)
    x = torch.randn(512, 16).requires_grad_()
    return model.train(), x


# ---------------------------------------------------------------- inplace_views


class InplaceViews(nn.Module):
    """In-place ops and views on intermediates, then a Linear."""

    def __init__(self, d_in: int = 16, d: int = 32, seq: int = 6, n_out: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d)
        self.fc2 = nn.Linear((seq // 2) * d, n_out)

    def forward(self, x):  # x: (b, seq, d_in)
        h = self.fc1(x)  # (b, seq, d)
        h.relu_()  # in-place on an intermediate
        half = h.size(1) // 2
        a = h[:, :half, :]  # slicing (views)
        b = h[:, half:, :]
        y = a * 2.0
        z = torch.tanh(b)
        y += z  # in-place add of two intermediates
        t = y.transpose(1, 2)  # (b, d, half), non-contiguous view
        u = t.reshape(t.size(0), -1)  # copy
        v = y.view(y.size(0), -1)  # view of contiguous y
        return self.fc2(u + v)


def make_inplace_views():
    torch.manual_seed(0)
    model = InplaceViews()
    x = torch.randn(64, 6, 16)
    return model.train(), x


# ---------------------------------------------------------------- Hugging Face (bert, llama, vit, resnet)


def make_bert():
    """Tiny Hugging Face BertForSequenceClassification called with keywords and labels."""
    from transformers import BertForSequenceClassification

    model = hf_model(BertForSequenceClassification, vocab_size=128, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=128, max_position_embeddings=64, num_labels=3)
    input_ids = torch.randint(0, model.config.vocab_size, (4, 32))
    return model, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": torch.tensor([0, 1, 2, 1])}


def make_llama():
    """Tiny Llama-style decoder (RMSNorm, rotary embeddings, SwiGLU), keywords and labels."""
    from transformers import LlamaForCausalLM

    model = hf_model(LlamaForCausalLM, vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    input_ids = torch.randint(0, model.config.vocab_size, (4, 32))
    return model, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def make_vit():
    """Tiny Hugging Face ViT image classifier, positional pixel_values."""
    from transformers import ViTForImageClassification

    model = hf_model(ViTForImageClassification, image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=128, num_labels=5, hidden_dropout_prob=0.1)
    return model, (torch.randn(4, 3, 32, 32),)


def make_resnet():
    """Tiny Hugging Face ResNet (bottleneck blocks, BatchNorm, in-place ReLU)."""
    from transformers import ResNetForImageClassification

    model = hf_model(ResNetForImageClassification, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                layer_type="bottleneck", num_labels=5)
    return model, {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}



# ---------------------------------------------------------------- wider zoo (issue 10's sweep)
# Tiny on purpose: each step runs in well under a second on a CPU core.


def make_moe():
    """Tiny Mixtral (sparse mixture of experts, top-2 routing, grouped-query attention)."""
    from transformers import MixtralForCausalLM

    model = hf_model(MixtralForCausalLM, vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                max_position_embeddings=64)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16))
    return model, {"input_ids": input_ids, "labels": input_ids.clone()}


def make_t5():
    """Tiny T5 encoder-decoder (relative position bias, dropout), labels shift into decoder inputs."""
    from transformers import T5ForConditionalGeneration

    model = hf_model(T5ForConditionalGeneration, vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                num_decoder_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    input_ids = torch.randint(1, model.config.vocab_size, (2, 16))
    labels = torch.randint(1, model.config.vocab_size, (2, 8))
    return model, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def make_bart():
    """Tiny BART encoder-decoder (learned positions, dropout); decoder inputs of another length."""
    from transformers import BartForConditionalGeneration

    model = hf_model(BartForConditionalGeneration, vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 16))
    labels = torch.randint(3, model.config.vocab_size, (2, 8))
    return model, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


class Recurrent(nn.Module):
    """Embedding, an LSTM and a GRU (both leaves for symbolic_trace), a Linear head."""

    def __init__(self, vocab: int = 64, d: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, d, batch_first=True)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        h, _ = self.lstm(self.emb(ids))
        h, _ = self.gru(torch.tanh(h))
        return self.head(h)


def make_rnn():
    torch.manual_seed(0)
    model = Recurrent()
    return model.train(), torch.randint(0, 64, (8, 24))


class TorchEncoder(nn.Module):
    """`nn.TransformerEncoder` (dropout, a padding mask) between a Linear in and a Linear out."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.proj = nn.Linear(16, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        return self.head(self.encoder(self.proj(x)))


def make_torch_encoder():
    torch.manual_seed(0)
    model = TorchEncoder()
    return model.train(), torch.randn(4, 16, 16)


class SdpaDropout(nn.Module):
    """`F.scaled_dot_product_attention` with attention dropout and a causal mask, twice."""

    def __init__(self, d: int = 32, n_heads: int = 4, n_layers: int = 2):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.ModuleList([nn.Linear(d, 3 * d) for _ in range(n_layers)])
        self.out = nn.ModuleList([nn.Linear(d, d) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        b, t, d = x.shape
        for qkv, out in zip(self.qkv, self.out):
            q, k, v = qkv(self.norm(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True)
            x = x + out(y.transpose(1, 2).reshape(b, t, d))
        return x


def make_sdpa_dropout():
    torch.manual_seed(0)
    model = SdpaDropout()
    return model.train(), torch.randn(4, 32, 32)


class RoundSTE(torch.autograd.Function):
    """Straight-through rounding: forward rounds, backward passes the gradient unchanged."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class CustomFunction(nn.Module):
    """A custom autograd Function between two Linears: its backward is not round's (zero)."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(d, 64)
        self.fc2 = nn.Linear(64, d)

    def forward(self, x):
        h = RoundSTE.apply(4.0 * torch.tanh(self.fc1(x)))
        return self.fc2(F.gelu(h))


def make_custom_function():
    torch.manual_seed(0)
    model = CustomFunction()
    return model.train(), torch.randn(64, 32)


class MaskInplace(nn.Module):
    """Masks built from activations and updated in place (`&=`, `masked_fill_`, `mul_`)."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)
        self.fc3 = nn.Linear(d, 8)

    def forward(self, x):
        h = self.fc1(x)
        mask = h > 0
        mask &= x.abs() < 1.5  # in-place on a bool mask
        g = self.fc2(h)
        g.masked_fill_(mask, -1.0)  # in-place on an activation under the mask
        keep = (~mask).float()
        keep.mul_(0.5)  # in-place on a float mask
        return self.fc3(torch.sigmoid(g) * h + keep)


def make_mask_inplace():
    torch.manual_seed(0)
    model = MaskInplace()
    return model.train(), torch.randn(128, 32)


class StructuredOutputs(nn.Module):
    """Two inputs, a dict output holding a tensor and a tuple of tensors."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.mix = nn.Linear(2 * d, d)

    def forward(self, x, y):
        ha, hb = F.silu(self.a(x)), torch.tanh(self.b(y))
        m = self.mix(torch.cat([ha, hb], dim=-1))
        return {"out": m, "parts": (ha * hb, m.relu())}


def make_structured_outputs():
    torch.manual_seed(0)
    model = StructuredOutputs()
    return model.train(), (torch.randn(64, 32), torch.randn(64, 32))


class KwargsModel(nn.Module):
    """Non-tensor keyword arguments (a float, a string, a bool) that change the computation."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(d, 64)
        self.fc2 = nn.Linear(64, d)

    def forward(self, x, scale: float = 1.0, activation: str = "gelu", residual: bool = False):
        h = self.fc1(x) * scale
        h = torch.tanh(h) if activation == "tanh" else F.gelu(h)
        y = self.fc2(h)
        return y + x if residual else y


def make_kwargs():
    torch.manual_seed(0)
    model = KwargsModel()
    return model.train(), {"x": torch.randn(64, 32), "scale": 0.5, "activation": "tanh", "residual": True}


class FrozenBackbone(nn.Module):
    """A frozen convolutional backbone (BatchNorm still training) under a trainable head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(_cbr(3, 8), _cbr(8, 8), nn.MaxPool2d(2), _cbr(8, 16))
        self.backbone.requires_grad_(False)
        self.head = nn.Sequential(_cbr(16, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.backbone(x))


def make_frozen_backbone():
    torch.manual_seed(0)
    model = FrozenBackbone()
    return model.train(), torch.randn(4, 3, 16, 16)


class OwnCheckpoint(nn.Module):
    """Three residual MLP blocks, each already under (non-reentrant) `torch.utils.checkpoint`."""

    def __init__(self, d: int = 64, n_blocks: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(n_blocks)])

    def forward(self, x):
        for block in self.blocks:
            x = x + torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return x


def make_own_checkpoint():
    torch.manual_seed(0)
    model = OwnCheckpoint()
    return model.train(), torch.randn(64, 64)


# ---------------------------------------------------------------- registry


ZOO: dict[str, Callable[[], tuple[nn.Module, Example]]] = {
    "mlp": make_mlp,
    "transformer": make_transformer,
    "cnn": make_cnn,
    "unet": make_unet,
    "gpt2": make_gpt2,
    "bert": make_bert,
    "llama": make_llama,
    "vit": make_vit,
    "resnet": make_resnet,
    "tied": make_tied,
    "frozen": make_frozen,
    "inplace_views": make_inplace_views,
}

# Names whose model is NOT traceable by torch.fx.symbolic_trace.
NOT_SYMBOLIC_TRACEABLE = frozenset({"gpt2", "bert", "llama", "vit", "resnet"})
SYMBOLIC_TRACEABLE = tuple(n for n in ZOO if n not in NOT_SYMBOLIC_TRACEABLE)

# The models issue 10's sweep adds (benchmarks/zoo_sweep.py, tests/test_zoo_sweep.py). Kept apart from
# ZOO, whose every entry the end-to-end tests hold to bitwise equality at several budgets.
WIDER: dict[str, Callable[[], tuple[nn.Module, Example]]] = {
    "moe": make_moe,
    "t5": make_t5,
    "bart": make_bart,
    "rnn": make_rnn,
    "torch_encoder": make_torch_encoder,
    "sdpa_dropout": make_sdpa_dropout,
    "custom_function": make_custom_function,
    "mask_inplace": make_mask_inplace,
    "structured_outputs": make_structured_outputs,
    "kwargs": make_kwargs,
    "frozen_backbone": make_frozen_backbone,
    "own_checkpoint": make_own_checkpoint,
}

# Every architecture of the sweep: decoder-only (gpt2, llama with grouped-query attention, moe),
# encoder-only (bert), encoder-decoder (t5, bart), vision (vit, resnet, cnn, unet), recurrent (rnn),
# nn.TransformerEncoder, SDPA with dropout, a custom autograd Function, in-place ops on masks and
# views, tuple and dict outputs, non-tensor kwargs, frozen parts, tied weights, own checkpointing.
SWEEP_ZOO = {**ZOO, **WIDER}
