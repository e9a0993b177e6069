"""fxckpt under DistributedDataParallel and FSDP2, on a real process group: 2 processes, gloo, on
loopback (127.0.0.1, a free port), CPU.

Starting processes costs seconds each, so one launch runs every configuration (`_CASES`, in
order: the FSDP cases shard models the DDP cases used) and writes each rank's rows to a file;
the tests read them. Each row compares a checkpointed model with the unmodified one wrapped the
same way, same weights, same per-rank data, same per-rank dropout seeds: the largest gradient
difference must be 0 (bitwise), and DDP's gradients must be the same on both ranks (it synced).
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import models

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")

WORLD = 2
LAUNCH_TIMEOUT_S = 300  # the whole launch; ~40 s on 2 quiet cores
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)  # a rank that fails cannot hang the other


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- models and one training step


def _transformer():
    """2 pre-LN blocks with dropout (the zoo's block); input (4, 16, 32)."""
    torch.manual_seed(0)
    return models.TinyTransformer(d=32, n_heads=4, n_layers=2).train(), torch.randn(4, 16, 32)


class _Spare(nn.Module):
    """An MLP with dropout and a parameter forward never uses (DDP needs find_unused_parameters)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 16))
        self.unused = nn.Linear(16, 16)

    def forward(self, x):
        return self.body(x)


def _spare():
    torch.manual_seed(0)
    return _Spare().train(), torch.randn(32, 16)


def _rank_input(example, rank: int):
    """Different data on each rank (so that DDP's averaging matters), same in both runs."""
    g = torch.Generator().manual_seed(100 + rank)
    if isinstance(example, dict):  # GPT-2: fresh token ids
        ids = torch.randint(0, 128, example["input_ids"].shape, generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return torch.randn(example.shape, generator=g)


def _backward(model, example, rank: int, seed: int) -> None:
    torch.manual_seed(1000 * seed + rank)  # dropout: the same stream per rank in both runs
    models.scalar_loss(models.call_model(model, example)).backward()


def _grads(model) -> list[torch.Tensor]:
    # FSDP2 gradients are DTensors: compare this rank's shards
    return [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in model.parameters()]


def _max_diff(a, b) -> float:
    def diff(x, y):
        if x is None or y is None:  # a parameter forward never used: no gradient in either
            return 0.0 if x is None and y is None else float("inf")
        return (x - y).abs().max().item()
    return max(diff(x, y) for x, y in zip(_grads(a), _grads(b), strict=True))


def _rank_spread(model) -> float:
    """Largest difference of a gradient between ranks (0 once DDP has averaged them)."""
    flat = torch.cat([g.flatten() for g in _grads(model) if g is not None])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    return max((g - gathered[0]).abs().max().item() for g in gathered)


# ---------------------------------------------------------------- the cases


class _Pair:
    """The unmodified model and an `auto_checkpoint`-ed copy, planned once, reset per case."""

    def __init__(self, make, budget: float):
        import fxckpt

        self.base, self.example = make()
        self.copy = copy.deepcopy(self.base)
        self.ckpt = fxckpt.auto_checkpoint(self.copy, self.example, budget=budget)
        assert self.ckpt.plan.recompute, "the plan must recompute something for the comparison to mean anything"
        self.initial = copy.deepcopy(self.base.state_dict())

    def reset(self):
        for m in (self.base, self.copy):
            m.load_state_dict(self.initial)
            m.zero_grad(set_to_none=True)


def _ddp_steps(pair: _Pair, rank: int, steps: int = 2, accumulate: int = 1, **ddp_kwargs) -> dict:
    """`steps` optimizer steps of DDP(unmodified) and DDP(checkpointed), each over `accumulate`
    micro-batches (all but the last under `no_sync()`); the gradients compared before each step."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    pair.reset()
    nets = [DDP(pair.base, **ddp_kwargs), DDP(pair.ckpt, **ddp_kwargs)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (pair.base, pair.copy)]
    diff = spread = 0.0
    for step in range(steps):
        for net in nets:
            for micro in range(accumulate):
                sync = micro == accumulate - 1
                with (torch.enable_grad() if sync else net.no_sync()):
                    _backward(net, _rank_input(pair.example, rank + 10 * micro), rank, step * accumulate + micro)
        diff = max(diff, _max_diff(pair.base, pair.copy))
        spread = max(spread, _rank_spread(pair.copy))
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    del nets
    return {"diff": diff, "spread": spread}


def _fsdp_steps(base, ckpt_params_owner, ckpt, example, rank: int, steps: int = 2) -> dict:
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (base, ckpt_params_owner)]
    diff = 0.0
    for step in range(steps):
        for net in (base, ckpt):
            _backward(net, _rank_input(example, rank), rank, step)
        diff = max(diff, _max_diff(base, ckpt_params_owner))
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {"diff": diff}


def _run_cases(rank: int) -> dict:
    import fxckpt
    from torch.distributed.fsdp import fully_shard

    rows = {}

    def case(name, fn):
        try:
            rows[name] = fn()
        except Exception as e:  # recorded: one failing configuration must not hide the others
            rows[name] = f"{type(e).__name__}: {e}"

    tf, gpt2, spare = _Pair(_transformer, 0.6), _Pair(models.make_gpt2, 0.6), _Pair(_spare, 0.9)
    case("ddp transformer", lambda: _ddp_steps(tf, rank))
    case("ddp transformer find_unused_parameters", lambda: _ddp_steps(tf, rank, find_unused_parameters=True))
    case("ddp transformer static_graph", lambda: _ddp_steps(tf, rank, steps=3, static_graph=True))
    case("ddp transformer no_sync", lambda: _ddp_steps(tf, rank, accumulate=3))
    case("ddp unused parameter find_unused_parameters", lambda: _ddp_steps(spare, rank, find_unused_parameters=True))
    case("ddp unused parameter static_graph", lambda: _ddp_steps(spare, rank, steps=3, static_graph=True))
    case("ddp gpt2", lambda: _ddp_steps(gpt2, rank))
    case("ddp gpt2 find_unused_parameters", lambda: _ddp_steps(gpt2, rank, find_unused_parameters=True))
    case("ddp gpt2 static_graph", lambda: _ddp_steps(gpt2, rank, steps=3, static_graph=True))
    case("ddp gpt2 no_sync", lambda: _ddp_steps(gpt2, rank, accumulate=2))

    def root_after():  # auto_checkpoint, then fully_shard the CheckpointedModule
        tf.reset()
        fully_shard(tf.base)
        fully_shard(tf.ckpt)
        return _fsdp_steps(tf.base, tf.copy, tf.ckpt, tf.example, rank)

    def root_before():  # fully_shard the model, then auto_checkpoint it
        base, x = _transformer()
        other = copy.deepcopy(base)
        fully_shard(base)
        fully_shard(other)
        ckpt = fxckpt.auto_checkpoint(other, x, budget=0.6)
        return _fsdp_steps(base, other, ckpt, x, rank)

    def blocks():  # per-block: auto_checkpoint each block, shard each, then the root
        base, x = _transformer()
        other = copy.deepcopy(base)
        for i, block in enumerate(other.blocks):
            example = x if i == 0 else x.detach().requires_grad_()  # later blocks get activations
            other.blocks[i] = fxckpt.auto_checkpoint(block, example, budget=0.8)
        for net in (base, other):
            for block in net.blocks:
                fully_shard(block)
            fully_shard(net)
        return _fsdp_steps(base, other, other, x, rank)

    def blocks_then_model():  # blocks sharded, then the whole model planned: refused
        base, x = _transformer()
        for block in base.blocks:
            fully_shard(block)
        fully_shard(base)
        fxckpt.auto_checkpoint(base, x, budget=0.6)

    def model_then_blocks():  # planned, then blocks sharded: refused at the next call
        fully_shard(gpt2.copy.transformer.h[0])
        _backward(gpt2.ckpt, gpt2.example, rank, 0)

    def max_batch():  # per-rank batch search on a root-sharded model: as on the unsharded one
        base, x = _spare()
        unsharded = fxckpt.max_batch_size(copy.deepcopy(base), x, budget_mb=0.25)[0]
        sharded = fxckpt.max_batch_size(fully_shard(base), x, budget_mb=0.25)[0]
        return {"unsharded": unsharded, "sharded": sharded}

    case("fsdp root, fully_shard after auto_checkpoint", root_after)
    case("fsdp root, fully_shard before auto_checkpoint", root_before)
    case("fsdp blocks and root, blocks checkpointed", blocks)
    case("fsdp blocks, then auto_checkpoint of the model", blocks_then_model)
    case("fsdp blocks, after auto_checkpoint of the model", model_then_blocks)
    case("fsdp max_batch_size", max_batch)
    return rows


def _worker(rank: int, port: int, out_dir: str) -> None:
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # 2 ranks on 2 cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        rows = _run_cases(rank)
    finally:
        dist.destroy_process_group()
    torch.save(rows, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Every case's row on each rank: {name: dict of figures, or the error text}."""
    out = tmp_path_factory.mktemp("distributed")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2-process launch did not finish within {LAUNCH_TIMEOUT_S} s")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


DDP_CASES = [
    "ddp transformer", "ddp transformer find_unused_parameters", "ddp transformer static_graph",
    "ddp transformer no_sync", "ddp unused parameter find_unused_parameters", "ddp unused parameter static_graph",
    "ddp gpt2", "ddp gpt2 find_unused_parameters", "ddp gpt2 static_graph", "ddp gpt2 no_sync",
]
FSDP_CASES = [
    "fsdp root, fully_shard after auto_checkpoint", "fsdp root, fully_shard before auto_checkpoint",
    "fsdp blocks and root, blocks checkpointed",
]


@pytest.mark.parametrize("name", DDP_CASES)
def test_ddp_gradients_bitwise_equal(rows, name):
    for rank, got in enumerate(rows):
        assert isinstance(got[name], dict), f"rank {rank}: {got[name]}"
        assert got[name]["diff"] == 0.0, f"rank {rank}: gradients differ from DDP of the unmodified model"
        assert got[name]["spread"] == 0.0, f"rank {rank}: DDP did not average the gradients"


@pytest.mark.parametrize("name", FSDP_CASES)
def test_fsdp2_gradients_bitwise_equal(rows, name):
    for rank, got in enumerate(rows):
        assert isinstance(got[name], dict), f"rank {rank}: {got[name]}"
        assert got[name]["diff"] == 0.0, f"rank {rank}: gradient shards differ from FSDP2 of the unmodified model"


@pytest.mark.parametrize("name", ["fsdp blocks, then auto_checkpoint of the model",
                                  "fsdp blocks, after auto_checkpoint of the model"])
def test_fsdp2_sharded_blocks_inside_the_graph_are_refused(rows, name):
    for got in rows:
        assert isinstance(got[name], str) and got[name].startswith("ShardingError: fully_shard was applied to submodules")
        assert "auto_checkpoint each block" in got[name]  # says which order works


def test_fsdp2_max_batch_size_per_rank(rows):
    for rank, got in enumerate(rows):
        row = got["fsdp max_batch_size"]
        assert isinstance(row, dict), f"rank {rank}: {row}"
        assert row["sharded"] == row["unsharded"] > 1
