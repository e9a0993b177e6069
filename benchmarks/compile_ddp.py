"""fxckpt's compile backend under DistributedDataParallel: 2 ranks, gloo on 127.0.0.1, CPU.

    python benchmarks/compile_ddp.py [--compiler aot_eager|inductor]

`torch.compile(DDP(model), backend=fxckpt.backend(budget=0.5))` against eager DDP of the unmodified
model (a 2-block transformer with dropout, per-rank data and seeds): prints each rank's largest
gradient difference after one step and how many nodes each compiled graph's plan recomputes.
Not a CI test: compiling takes about a minute per rank on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def _worker(rank: int, port: int, compiler: str) -> None:
    import fxckpt
    import models

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = models.TinyTransformer(d=32, n_heads=4, n_layers=2).train()
        other = copy.deepcopy(model)
        x = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(rank))
        backend = fxckpt.backend(budget=0.5, compiler=compiler)
        for net in (DDP(model), torch.compile(DDP(other), backend=backend)):
            torch.manual_seed(rank)
            models.scalar_loss(net(x)).backward()
        diff = max((p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), other.parameters()))
        recomputed = [len(plan.recompute) for plan in fxckpt.compiled_plans(backend)]
        print(f"rank {rank}: compile ({compiler}) under DDP, max |dgrad| vs eager DDP {diff:.3g}, "
              f"nodes recomputed per compiled graph {recomputed}", flush=True)
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--compiler", default="aot_eager", choices=["aot_eager", "inductor"])
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, args.compiler), nprocs=2)


if __name__ == "__main__":
    main()
