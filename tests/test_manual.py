"""fxckpt.manual: checkpoint, CheckpointedSequential, SelectiveCheckpoint.

Each tool is compared with the plain model, bitwise: outputs, gradients and normalization
buffers after one training step with dropout and batch norm active, the RNG seeded identically
before both runs.
"""

import copy
import doctest

import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint

import fxckpt.manual
from fxckpt.manual import CheckpointedSequential, SelectiveCheckpoint, checkpoint
from fxckpt.measure import measure_step

MiB = 2**20
STATS = ("running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------- helpers


def seeded(seed=0):
    torch.manual_seed(seed)


def loss_of(out):
    """Not a plain sum: the gradient of sum() through batch norm is zero."""
    return (out.float() ** 2).mean() + out.float().mean()


def run_step(call, model, *inputs, seed=1):
    """One training step of ``call(*inputs)``: its output, and the grads of model and inputs."""
    seeded(seed)
    out = call(*inputs)
    loss_of(out).backward()
    grads = [p.grad for p in model.parameters()] + [x.grad for x in inputs if x.requires_grad]
    return out, grads


def fresh_inputs(*shapes, requires_grad=True):
    seeded(123)
    return [torch.randn(*s, requires_grad=requires_grad) for s in shapes]


def assert_same_step(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert torch.equal(out_a, out_b)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        assert ga is not None and gb is not None
        assert torch.equal(ga, gb)


def assert_same_buffers(model_a, model_b):
    named_a, named_b = dict(model_a.named_buffers()), dict(model_b.named_buffers())
    assert named_a.keys() == named_b.keys()
    for name in named_a:
        assert torch.equal(named_a[name], named_b[name]), name


def mlp_bn_dropout(width=16, p=0.3):
    seeded(0)
    return nn.Sequential(
        nn.Linear(8, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(p),
        nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(p),
        nn.Linear(width, 4),
    ).train()


def counts(model):
    return [int(m.num_batches_tracked) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]


# ---------------------------------------------------------------- checkpoint


def test_checkpoint_matches_plain_with_dropout_and_batchnorm():
    plain = mlp_bn_dropout()
    ckpt = copy.deepcopy(plain)
    (x1,), (x2,) = fresh_inputs((32, 8)), fresh_inputs((32, 8))
    assert_same_step(run_step(plain, plain, x1), run_step(lambda x: checkpoint(ckpt, x), ckpt, x2))
    assert_same_buffers(plain, ckpt)
    assert counts(ckpt) == [1, 1]


def test_eager_torch_checkpoint_updates_batchnorm_twice():
    """The trap `checkpoint` fixes: torch's recomputation runs batch norm's update again."""
    plain = mlp_bn_dropout()
    eager = copy.deepcopy(plain)
    (x1,), (x2,) = fresh_inputs((32, 8)), fresh_inputs((32, 8))
    run_step(plain, plain, x1)
    run_step(lambda x: torch.utils.checkpoint.checkpoint(eager, x, use_reentrant=False), eager, x2)
    assert counts(plain) == [1, 1]
    assert counts(eager) == [2, 2]
    assert not torch.equal(plain[1].running_mean, eager[1].running_mean)


def test_dropout_comparison_is_sensitive_to_rng_replay():
    """Without RNG replay the recomputed dropout masks differ: the gradient check above can fail."""
    plain = mlp_bn_dropout(p=0.5)
    no_replay = copy.deepcopy(plain)
    (x1,), (x2,) = fresh_inputs((32, 8)), fresh_inputs((32, 8))
    _, grads_plain = run_step(plain, plain, x1)
    _, grads_no_replay = run_step(
        lambda x: torch.utils.checkpoint.checkpoint(no_replay, x, use_reentrant=False, preserve_rng_state=False),
        no_replay, x2)
    assert not all(torch.equal(a, b) for a, b in zip(grads_plain, grads_no_replay))


def norm_block(kind):
    seeded(0)
    norm = {
        "batchnorm": nn.BatchNorm1d(6),
        "batchnorm_cumulative": nn.BatchNorm1d(6, momentum=None),  # reads num_batches_tracked
        "instancenorm": nn.InstanceNorm1d(6, affine=True, track_running_stats=True),
    }[kind]
    # The norm layer last: the recomputation stops (early stop) right after its update.
    return nn.Sequential(nn.Conv1d(6, 6, 3, padding=1), nn.Dropout(0.2), norm).train()


@pytest.mark.parametrize("early_stop", [True, False])
@pytest.mark.parametrize("kind", ["batchnorm", "batchnorm_cumulative", "instancenorm"])
def test_checkpoint_norm_layers_update_once(kind, early_stop):
    plain = norm_block(kind)
    ckpt = copy.deepcopy(plain)
    (x1,), (x2,) = fresh_inputs((5, 6, 7)), fresh_inputs((5, 6, 7))
    a = run_step(plain, plain, x1)
    with torch.utils.checkpoint.set_checkpoint_early_stop(early_stop):
        b = run_step(lambda x: checkpoint(ckpt, x), ckpt, x2)
    assert_same_step(a, b)
    assert_same_buffers(plain, ckpt)
    assert counts(ckpt) == ([0] if kind == "instancenorm" else [1])  # InstanceNorm never counts


def test_checkpoint_of_a_norm_layers_bound_forward_updates_once():
    plain = nn.BatchNorm1d(6)
    ckpt = copy.deepcopy(plain)
    (x1,), (x2,) = fresh_inputs((5, 6)), fresh_inputs((5, 6))
    assert_same_step(run_step(plain, plain, x1), run_step(lambda x: checkpoint(ckpt.forward, x), ckpt, x2))
    assert_same_buffers(plain, ckpt)


def test_checkpoint_backward_twice_still_updates_once():
    plain = mlp_bn_dropout()
    ckpt = copy.deepcopy(plain)
    (x1,), (x2,) = fresh_inputs((32, 8)), fresh_inputs((32, 8))
    for model, call, x in ((plain, plain, x1), (ckpt, lambda x: checkpoint(ckpt, x), x2)):
        seeded(1)
        loss = loss_of(call(x))
        loss.backward(retain_graph=True)
        loss.backward()  # recomputes a second time
    assert_same_buffers(plain, ckpt)
    assert counts(ckpt) == [1, 1]
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_checkpoint_passes_keyword_arguments():
    seeded(0)
    lin = nn.Linear(8, 8)
    drop = nn.Dropout(0.5)

    def fn(x, *, scale, shift=None, fn="unused"):  # a keyword named like checkpoint's own parameter
        assert fn == "given"
        return drop(torch.tanh(lin(x)) * scale) + shift["b"]

    x1, s1, b1 = fresh_inputs((4, 8), (8,), (4, 8))
    x2, s2, b2 = fresh_inputs((4, 8), (8,), (4, 8))
    a = run_step(lambda x, s, b: fn(x, scale=s, shift={"b": b}, fn="given"), lin, x1, s1, b1)
    lin.zero_grad(set_to_none=True)  # a keeps the first run's gradients
    b = run_step(lambda x, s, b: checkpoint(fn, x, scale=s, shift={"b": b}, fn="given"), lin, x2, s2, b2)
    assert_same_step(a, b)


def test_checkpoint_inputs_that_do_not_require_grad():
    plain = mlp_bn_dropout()
    ckpt = copy.deepcopy(plain)
    (x1,), (x2,) = fresh_inputs((32, 8), requires_grad=False), fresh_inputs((32, 8), requires_grad=False)
    assert_same_step(run_step(plain, plain, x1), run_step(lambda x: checkpoint(ckpt, x), ckpt, x2))
    assert x2.grad is None
    assert_same_buffers(plain, ckpt)


def test_checkpoint_mixed_requires_grad_and_parameter_free_fn():
    def fn(x, y, z):  # no parameters: only the inputs that require grad get gradients
        return torch.nn.functional.dropout(torch.sin(x) * y, 0.5) + z.exp()

    x1, y1 = fresh_inputs((16, 8), (16, 8))
    x2, y2 = fresh_inputs((16, 8), (16, 8))
    (z,) = fresh_inputs((16, 8), requires_grad=False)
    a = run_step(lambda x, y: fn(x, y, z), nn.Module(), x1, y1)
    b = run_step(lambda x, y: checkpoint(fn, x, y, z), nn.Module(), x2, y2)
    assert_same_step(a, b)
    assert z.grad is None
    assert b[0].grad_fn is not None


def test_checkpoint_without_any_grad_is_a_plain_call():
    seeded(0)
    lin = nn.Linear(4, 4).requires_grad_(False)
    x = torch.randn(2, 4)
    out = checkpoint(lin, x)
    assert torch.equal(out, lin(x)) and not out.requires_grad
    with torch.no_grad():
        assert torch.equal(checkpoint(lin, x), lin(x))


def test_checkpoint_output_structures():
    seeded(0)
    lin = nn.Linear(8, 8)

    def fn(x):
        h = lin(x)
        return {"pair": (h.relu(), h.sigmoid()), "count": 3, "none": None, "list": [h * 2]}

    (x1,), (x2,) = fresh_inputs((4, 8)), fresh_inputs((4, 8))
    plain, ckpt = fn(x1), checkpoint(fn, x2)
    assert type(ckpt) is dict and list(ckpt) == ["pair", "count", "none", "list"]
    assert type(ckpt["pair"]) is tuple and len(ckpt["pair"]) == 2 and type(ckpt["list"]) is list
    assert ckpt["count"] == 3 and ckpt["none"] is None
    for a, b in zip((*plain["pair"], *plain["list"]), (*ckpt["pair"], *ckpt["list"])):
        assert torch.equal(a, b)
    total = lambda d: d["pair"][0].sum() + (d["pair"][1] ** 2).sum() + d["list"][0].mean()  # noqa: E731
    total(plain).backward()
    total(ckpt).backward()
    assert torch.equal(x1.grad, x2.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_checkpoint_replays_cuda_rng_of_keyword_only_cuda_inputs():
    """torch stashes CUDA RNG states only for devices of positional tensors; here a keyword one."""
    def fn(x, *, y):
        return x.cuda() * torch.nn.functional.dropout(y, 0.5)

    x1, x2 = torch.randn(64, 64, requires_grad=True), torch.randn(64, 64, requires_grad=True)
    with torch.no_grad():
        x2.copy_(x1)
    y1 = torch.randn(64, 64, device="cuda", requires_grad=True)
    y2 = y1.detach().clone().requires_grad_()
    torch.cuda.manual_seed(1)
    fn(x1, y=y1).square().sum().backward()
    torch.cuda.manual_seed(1)
    checkpoint(fn, x2, y=y2).square().sum().backward()
    assert torch.equal(x1.grad, x2.grad) and torch.equal(y1.grad, y2.grad)


def test_docstring_examples_run():
    result = doctest.testmod(fxckpt.manual)
    assert result.attempted >= 3 and result.failed == 0


# ---------------------------------------------------------------- CheckpointedSequential


def nine_layers():
    return list(mlp_bn_dropout())


@pytest.mark.parametrize("k", [1, 2, 4, 9])
def test_checkpointed_sequential_matches_sequential(k):
    plain = nn.Sequential(*nine_layers())
    ckpt = CheckpointedSequential(*nine_layers(), checkpoint_segments=k).train()
    (x1,), (x2,) = fresh_inputs((32, 8)), fresh_inputs((32, 8))
    assert_same_step(run_step(plain, plain, x1), run_step(ckpt, ckpt, x2))
    assert_same_buffers(plain, ckpt)
    assert counts(ckpt) == [1, 1]


def test_checkpointed_sequential_segments():
    assert CheckpointedSequential(*nine_layers(), checkpoint_segments=1).segments() == [(0, 9)]
    assert CheckpointedSequential(*nine_layers(), checkpoint_segments=3).segments() == [(0, 3), (3, 6), (6, 9)]
    assert CheckpointedSequential(*nine_layers(), checkpoint_segments=4).segments() == [(0, 3), (3, 5), (5, 7), (7, 9)]
    assert CheckpointedSequential(*nine_layers(), checkpoint_segments=9).segments() == [(i, i + 1) for i in range(9)]


def test_checkpointed_sequential_recomputes_all_but_the_last_segment():
    calls = []

    class Probe(nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i, self.lin = i, nn.Linear(4, 4)

        def forward(self, x):
            calls.append(self.i)
            return self.lin(x)

    model = CheckpointedSequential(*[Probe(i) for i in range(6)], checkpoint_segments=3)
    model(torch.randn(2, 4)).sum().backward()
    # forward 0..5, then backward recomputes segment (2, 3) before segment (0, 1)
    assert calls == [0, 1, 2, 3, 4, 5, 2, 3, 0, 1]


@pytest.mark.parametrize("k", [0, -1, 10, 2.0, True, "2", None])
def test_checkpointed_sequential_rejects_bad_segment_counts(k):
    with pytest.raises(ValueError, match="checkpoint_segments must be an int from 1 to the number of layers \\(9\\)"):
        CheckpointedSequential(*nine_layers(), checkpoint_segments=k)


def test_checkpointed_sequential_needs_layers_and_the_keyword():
    with pytest.raises(ValueError, match="at least one layer"):
        CheckpointedSequential(checkpoint_segments=1)
    with pytest.raises(TypeError):
        CheckpointedSequential(*nine_layers())


@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_checkpointed_sequential_eval_and_no_grad_are_plain(mode):
    plain = nn.Sequential(*nine_layers())
    ckpt = CheckpointedSequential(*nine_layers(), checkpoint_segments=3)
    (x,) = fresh_inputs((32, 8))
    outs = []
    for model in (plain, ckpt):
        if mode == "eval":
            model.eval()
        seeded(1)
        with torch.no_grad() if mode == "no_grad" else torch.enable_grad():
            outs.append(model(x))
    assert torch.equal(*outs)
    assert_same_buffers(plain, ckpt)


def test_checkpointed_sequential_state_dict_is_sequentials():
    plain = nn.Sequential(*nine_layers())
    ckpt = CheckpointedSequential(*nine_layers(), checkpoint_segments=3)
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    assert "0.weight" in ckpt.state_dict() and "1.running_mean" in ckpt.state_dict()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(1.0)
    ckpt.load_state_dict(plain.state_dict())
    assert_same_buffers(plain, ckpt)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), ckpt.parameters()))
    assert type(ckpt[:3]) is nn.Sequential and len(ckpt[:3]) == 3
    assert "checkpoint_segments=3" in repr(ckpt)


# ---------------------------------------------------------------- SelectiveCheckpoint


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.BatchNorm1d(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(0.3), nn.Linear(2 * d, d))
        self.calls = 0

    def forward(self, x, *, gate):
        self.calls += 1
        return x + gate * self.mlp(self.norm(x))


class Stack(nn.Module):
    """A small transformer-like model: a stem, a ModuleList of blocks, a head (a shorter Sequential)."""

    def __init__(self, d=16, n=4):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.randn(d))
        self.gate = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 3))
        self.register_buffer("scale", torch.tensor(0.5))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)

    def forward(self, x):
        h = self.embed(x) + self.pos
        gate = torch.sigmoid(self.gate)  # a keyword tensor input of each block that requires grad
        for block in self.blocks:
            h = block(h, gate=gate)
        return self.head(h) * self.scale


def make_stack():
    seeded(0)
    return Stack().train()


def test_selective_checkpoint_on_sequential_by_index_and_name():
    plain = mlp_bn_dropout()
    by_index = SelectiveCheckpoint(copy.deepcopy(plain), checkpoint_layers=[1, 4, -1])
    by_name = SelectiveCheckpoint(copy.deepcopy(plain), checkpoint_layers=["1", "4", "8"])
    assert by_index.checkpoint_layers == by_name.checkpoint_layers == ("1", "4", "8")
    (x0,), (x1,), (x2,) = fresh_inputs((32, 8)), fresh_inputs((32, 8)), fresh_inputs((32, 8))
    a = run_step(plain, plain, x0)
    assert_same_step(a, run_step(by_index, by_index, x1))
    assert_same_step(a, run_step(by_name, by_name, x2))
    assert_same_buffers(plain, by_index)
    assert_same_buffers(plain, by_name)
    assert counts(by_index) == [1, 1]


@pytest.mark.parametrize("layers", [[0, 2], ["blocks.0", "blocks.2"], [1, "blocks.3.mlp", "head"]])
def test_selective_checkpoint_on_module_list_model(layers):
    plain = make_stack()
    model = make_stack()
    wrapped = SelectiveCheckpoint(model, checkpoint_layers=layers)
    (x1,), (x2,) = fresh_inputs((32, 8)), fresh_inputs((32, 8))
    assert_same_step(run_step(plain, plain, x1), run_step(wrapped, wrapped, x2))
    assert_same_buffers(plain, model)
    assert counts(model) == [1] * 4
    # the checkpointed blocks ran twice (forward, recomputation); the others once
    whole_blocks = {int(n.split(".")[1]) for n in wrapped.checkpoint_layers if n.count(".") == 1 and n.startswith("blocks.")}
    assert [b.calls for b in model.blocks] == [2 if i in whole_blocks else 1 for i in range(4)]
    # and the model is left as it was
    assert all("forward" not in vars(m) for m in model.modules())


def test_selective_checkpoint_indices_refer_to_the_largest_block_stack():
    assert SelectiveCheckpoint(make_stack(), checkpoint_layers=[1, -1]).checkpoint_layers == ("blocks.1", "blocks.3")
    assert SelectiveCheckpoint(make_stack(), checkpoint_layers=2).checkpoint_layers == ("blocks.2",)
    # duplicates (by index and by name) are checkpointed once
    assert SelectiveCheckpoint(make_stack(), checkpoint_layers=[2, "blocks.2"]).checkpoint_layers == ("blocks.2",)


def test_selective_checkpoint_errors_list_the_valid_choices():
    with pytest.raises(ValueError, match=r"index 4 is out of range for 'blocks' \(ModuleList of 4 layers\): "
                                         r"valid indices are 0\.\.3 \(or -4\.\.-1\)"):
        SelectiveCheckpoint(make_stack(), checkpoint_layers=[0, 4])
    with pytest.raises(ValueError, match=r"index -10 is out of range for the model"):
        SelectiveCheckpoint(mlp_bn_dropout(), checkpoint_layers=[-10])
    with pytest.raises(ValueError, match=r"no submodule 'blocks.7': 'blocks' has no child '7'; "
                                         r"its children are \['0', '1', '2', '3'\]"):
        SelectiveCheckpoint(make_stack(), checkpoint_layers=["blocks.7"])
    with pytest.raises(ValueError, match=r"the model \(Stack\) has no child 'layers'; "
                                         r"its children are \['embed', 'blocks', 'head'\]"):
        SelectiveCheckpoint(make_stack(), checkpoint_layers=["layers.0"])
    with pytest.raises(ValueError, match=r"\['blocks.1.mlp'\] are inside 'blocks.1'"):
        SelectiveCheckpoint(make_stack(), checkpoint_layers=[1, "blocks.1.mlp"])
    with pytest.raises(ValueError, match="no nn.Sequential or nn.ModuleList"):
        SelectiveCheckpoint(nn.Linear(2, 2), checkpoint_layers=[0])
    with pytest.raises(TypeError, match="ints or dotted submodule names"):
        SelectiveCheckpoint(make_stack(), checkpoint_layers=[1.0])


def test_selective_checkpoint_state_dict_keys_and_loading():
    plain = make_stack()
    wrapped = SelectiveCheckpoint(make_stack(), checkpoint_layers=[0, 3])
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    assert "pos" in wrapped.state_dict() and "scale" in wrapped.state_dict() and "scratch" not in wrapped.state_dict()
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in plain.named_parameters()]
    with torch.no_grad():
        for t in [*plain.parameters(), plain.scale]:
            t.add_(1.0)
    wrapped.load_state_dict(plain.state_dict())  # strict
    for (n, a), (_, b) in zip(plain.state_dict().items(), wrapped.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(wrapped.module.pos, plain.pos)
    # nested inside another module, the keys are the plain model's under the parent's prefix
    parent_plain, parent_wrapped = nn.ModuleDict({"net": plain}), nn.ModuleDict({"net": wrapped})
    assert list(parent_wrapped.state_dict()) == list(parent_plain.state_dict())
    parent_wrapped.load_state_dict(parent_plain.state_dict())


def test_selective_checkpoint_eval_no_grad_and_conversions_act_on_the_model():
    plain = make_stack()
    model = make_stack()
    wrapped = SelectiveCheckpoint(model, checkpoint_layers=[1])
    wrapped.eval()
    assert not model.training and not model.blocks[1].training
    (x,) = fresh_inputs((32, 8))
    assert torch.equal(wrapped(x), plain.eval()(x))
    wrapped.train()
    assert model.training
    with torch.no_grad():
        seeded(1)
        out_wrapped = wrapped(x)
        seeded(1)
        out_plain = plain.train()(x)
    assert torch.equal(out_wrapped, out_plain)
    assert model.blocks[1].calls == 2  # once per call: no recomputation without grad
    wrapped.double()
    assert model.pos.dtype == model.blocks[0].mlp[0].weight.dtype == model.scale.dtype == torch.float64
    assert "checkpoint_layers=['blocks.1']" in repr(wrapped)


# ---------------------------------------------------------------- memory


def eight_blocks():
    seeded(0)
    return [m for _ in range(8) for m in (nn.Linear(512, 512), nn.ReLU())]


def test_checkpointed_sequential_lowers_the_measured_activation_peak():
    # Every activation is 512 x 512 float32 = exactly 1 MiB. Let r_i be block i's ReLU output.
    # Plain: each Linear saves its input and each ReLU its output, so at the end of the forward
    # r_1..r_8 are kept (r_8 is the output) = 8 MiB; Linear outputs die after their ReLU.
    # CheckpointedSequential(k=4): segments of 4 layers = 2 blocks; non-reentrant checkpoint
    # keeps only the inputs of the 3 checkpointed segments (x, which existed before the step and
    # is not counted, r_2, r_4) and the last, plain segment keeps its input r_6 plus r_7, r_8:
    # 5 MiB. Both peaks come at the start of backward, when the last block's backward adds the
    # same transients (the ReLU's input gradient, the Linear's input and weight gradients, and
    # a bias gradient); later segments' recomputations rebuild at most 2 blocks next to fewer
    # kept tensors. So the peak falls by the 8 - 5 = 3 kept MiB.
    x = torch.randn(512, 512)
    plain_peak = measure_step(nn.Sequential(*eight_blocks()), x).peak_bytes
    ckpt_peak = measure_step(CheckpointedSequential(*eight_blocks(), checkpoint_segments=4), x).peak_bytes
    measured = f"nn.Sequential {plain_peak / MiB:.4f} MiB, CheckpointedSequential(k=4) {ckpt_peak / MiB:.4f} MiB"
    assert plain_peak >= 8 * MiB, measured
    assert plain_peak - ckpt_peak >= 3 * MiB, measured
