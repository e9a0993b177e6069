"""1-GPU NCCL smoke run of fxckpt under DistributedDataParallel (where a GPU is lent).

    python benchmarks/gpu_check_ddp.py     # also run at the end of benchmarks/gpu_check.py on CUDA

A process group of one rank on NCCL (127.0.0.1, a free port), a small GPT-2 from its config on
cuda:0: one step of DDP(model) and of DDP(fxckpt.auto_checkpoint(copy, budget=0.5)) from the same
RNG state. Prints both allocator peaks (`max_memory_allocated` above what was allocated before the
step), the plan's prediction and the largest gradient difference; exits 1 if gradients differ.
"""

from __future__ import annotations

import copy
import socket
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import fxckpt
from fxckpt.benchmark.zoo import gpt2
from fxckpt.measure import measure_step, step_loss

MiB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    if not torch.cuda.is_available() or not dist.is_nccl_available():
        print("gpu_check_ddp: needs CUDA and NCCL; skipped")
        return 0
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model, example = gpt2(4, 256, 4, 8, 256, 8192)
        model.cuda()
        example = {k: v.cuda() for k, v in example.items()}
        ckpt = fxckpt.auto_checkpoint(copy.deepcopy(model), example, budget=0.5)
        grads, peaks = [], []
        for net in (model, ckpt):
            ddp = DDP(net, device_ids=[0])
            peaks.append(measure_step(ddp, example).peak_mib)
            net.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            step_loss(ddp(**example)).backward()
            grads.append([p.grad for p in net.parameters()])
        diff = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
        print(f"DDP on 1 GPU (NCCL): none {peaks[0]:.1f} MiB, fxckpt 50% {peaks[1]:.1f} MiB "
              f"(plan {ckpt.plan.predicted_peak_bytes / MiB:.1f} MiB of activations), max |dgrad| {diff:.3g}")
        return 0 if diff == 0 else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
