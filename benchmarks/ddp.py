"""A small GPT-2 under DistributedDataParallel: per-rank activation peak and step time for no
checkpointing, Hugging Face per-layer checkpointing and fxckpt; then FSDP2 (root `fully_shard`)
with fxckpt, and the largest batch per rank under a budget.

    torchrun --standalone --nproc-per-node 2 benchmarks/ddp.py [--layers 4] [--batch 4] [--seq 128]

Any backend torchrun sets up works: gloo on CPU, NCCL where each rank has a GPU (the peak is then
the allocator's). Every rank prints its own rows; rank 0 also the largest gradient difference
from DDP of the unmodified model after one step (0 means bitwise equal).
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import fxckpt
from fxckpt.benchmark.zoo import gpt2
from fxckpt.measure import measure_step, step_loss

MiB = 2**20


def _grads_after_step(net, params, example, seed):
    for p in params:
        p.grad = None
    torch.manual_seed(seed)
    step_loss(net(**example)).backward()
    return [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4, help="per rank")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    model, example = gpt2(args.layers, args.hidden, 4, args.batch, args.seq, args.vocab)
    model.to(device)
    g = torch.Generator().manual_seed(rank)  # each rank its own data
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def hf_per_layer():
        m = copy.deepcopy(model)
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return m, m

    def fxckpt_at(**budget):
        m = copy.deepcopy(model)
        return fxckpt.auto_checkpoint(m, example, **budget), m

    peaks = {}
    def fxckpt_at_hf():  # HF per-layer's memory without DDP, or fxckpt's floor if that is above it
        return fxckpt_at(budget_mb=max(peaks["HF per-layer"], fxckpt.min_feasible_budget(model, example)) / MiB)

    rows = [("none", lambda: (copy.deepcopy(model),) * 2), ("HF per-layer", hf_per_layer),
            ("fxckpt 50%", lambda: fxckpt_at(budget=0.5)), ("fxckpt at HF", fxckpt_at_hf)]
    reference = None
    lines = []
    for label, make in rows:
        net, params_of = make()
        alone = measure_step(net, example, repeats=1).peak_bytes  # DDP adds buffers of its own
        peaks[label] = alone
        ddp = DDP(net, device_ids=[device.index] if cuda else None)
        m = measure_step(ddp, example, repeats=args.repeats)
        grads = _grads_after_step(ddp, list(params_of.parameters()), example, seed=rank)
        reference = reference or grads
        diff = max((a - b).abs().max().item() for a, b in zip(reference, grads))
        plan = f"  plan {net.plan.predicted_peak_bytes / MiB:.1f} MiB" if hasattr(net, "plan") else ""
        lines.append(f"rank {rank} DDP  {label:<13} peak {m.peak_mib:8.1f} MiB (without DDP {alone / MiB:6.1f})  "
                     f"step {m.seconds * 1e3:8.1f} ms  "
                     f"max |dgrad| vs none {diff:.3g}{plan}")
        del ddp

    # FSDP2: fully_shard on the checkpointed module (the order that works for a whole-model plan)
    from torch.distributed.fsdp import fully_shard
    m = copy.deepcopy(model)
    ckpt = fully_shard(fxckpt.auto_checkpoint(m, example, budget=0.5))
    meas = measure_step(ckpt, example, repeats=args.repeats)
    lines.append(f"rank {rank} FSDP2 fxckpt 50%  peak {meas.peak_mib:8.1f} MiB  step {meas.seconds * 1e3:8.1f} ms  "
                 f"(the peak includes the all-gathered parameters, {sum(p.numel() * p.element_size() for p in model.parameters()) / MiB:.1f} MiB)")
    budget_mb = 2 * ckpt.plan.predicted_peak_bytes / MiB
    batch, _ = fxckpt.max_batch_size(fully_shard(copy.deepcopy(model)), example, budget_mb=budget_mb)
    lines.append(f"rank {rank} FSDP2 max_batch_size under {budget_mb:.1f} MiB of activations: {batch} per rank")

    for r in range(world):  # one rank at a time, so the rows do not interleave
        if r == rank:
            if rank == 0:
                print(f"GPT-2 {args.layers} layers x {args.hidden}, batch {args.batch} x seq {args.seq} per rank, "
                      f"{world} ranks, {dist.get_backend()}, torch {torch.__version__}", flush=True)
            print("\n".join(lines), flush=True)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
