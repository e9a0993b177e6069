"""The compile backend on one device: gradients against eager and budget -> predicted vs measured
peak, recompute FLOPs and step time against torch.compile's default and its memory budget 0.5.

    python benchmarks/gpu_check.py --device cuda                 # GPT-2 small (12 x 768), batch 2 x 256
    python benchmarks/gpu_check.py --device cpu --layers 2 --hidden 256 --seq 128 --compiler aot_eager

Peak: CUDA `torch.cuda.max_memory_allocated` above what was allocated before the step; CPU the
profiler's allocator events (`fxckpt.benchmark.profiled_peak_bytes`). Gradients: largest absolute
difference to eager (`aot_eager` must give 0: dropout draws the same numbers; inductor draws its
own, so there the reference is torch.compile's default, whose seeds are the same).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import fxckpt
from fxckpt.benchmark import profiled_peak_bytes
from fxckpt.core.errors import InfeasibleBudgetError

MIB = 2**20


def gpt2(layers: int, hidden: int, seq: int, batch: int, device: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=hidden, n_head=max(1, hidden // 64), n_positions=max(seq, 64))
    model = GPT2LMHeadModel(config).to(device).train()
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    return model, {"input_ids": ids, "labels": ids, "use_cache": False}


def cnn(device: str):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.models import TinyCNN

    torch.manual_seed(0)
    return TinyCNN().to(device).train(), {"x": torch.randn(64, 3, 64, 64, device=device)}


def loss_of(out):
    return out.loss if hasattr(out, "loss") else out.sum()


def run_step(model, example, seed=1):
    """One step, the output referenced until backward finishes (as `fxckpt.measure_step` and the
    prediction assume: GPT-2's logits are 49 MiB of the step at 2x256, seq 128)."""
    torch.manual_seed(seed)
    out = model(**example)
    loss_of(out).backward()


def grads(model, example):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    run_step(model, example)
    return [p.grad.clone() for p in model.parameters()]


def peak(model, example, device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run_step(model, example)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return profiled_peak_bytes(lambda: run_step(model, example))


def step_seconds(model, example, device: str, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_step(model, example)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(label, model, example, device, ref, be=None):
    plans = fxckpt.compiled_plans(be) if be is not None else None
    g = grads(model, example)  # compiles
    diff = max((a - b).abs().max().item() for a, b in zip(g, ref))
    p = peak(model, example, device)
    pred = f"{be.predicted_peak_bytes() / MIB:9.2f}" if plans else f"{'':>9}"
    flops = f"{sum(x.recompute_flops for x in plans) / 1e9:8.3f}" if plans else f"{'':>8}"
    print(f"{label:<28} {pred} {p / MIB:9.2f} {flops} {diff:10.3g} {step_seconds(model, example, device) * 1e3:9.1f}",
          flush=True)
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="gpt2", choices=("gpt2", "cnn"))
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--compiler", default="inductor", choices=("inductor", "aot_eager"))
    ap.add_argument("--budgets", default="0.9,0.7,0.5")
    args = ap.parse_args()
    base, example = gpt2(args.layers, args.hidden, args.seq, args.batch, args.device) if args.model == "gpt2" \
        else cnn(args.device)
    eager = grads(copy.deepcopy(base), example)
    print(f"{args.model} on {args.device}, compiler {args.compiler}")
    print(f"{'strategy':<28} {'pred MiB':>9} {'meas MiB':>9} {'rec GFLOP':>8} {'grad diff':>10} {'step ms':>9}")
    ref = eager
    if args.compiler == "inductor":
        torch._dynamo.reset()
        m = torch.compile(copy.deepcopy(base))
        row("torch.compile default", m, example, args.device, eager)
        ref = grads(m, example)  # same seeds as ours: the reference for dropout
        torch._dynamo.reset()
        with torch._functorch.config.patch(activation_memory_budget=0.5):
            row("torch.compile budget 0.5", torch.compile(copy.deepcopy(base)), example, args.device, ref)
    for b in [float(x) for x in args.budgets.split(",")] + [None]:
        torch._dynamo.reset()
        if b is None:  # the smallest feasible budget: each graph's InfeasibleBudgetError names a higher floor
            budget_mb = 0.01
            for _ in range(8):
                try:
                    torch._dynamo.reset()
                    fxckpt_run(base, example, args, ref, budget_mb=budget_mb, label="fxckpt compile floor")
                    break
                except Exception as e:
                    err = e
                    while err is not None and not isinstance(err, InfeasibleBudgetError):
                        err = getattr(err, "inner_exception", None) or err.__cause__
                    if err is None:
                        raise
                    budget_mb = err.min_feasible_bytes / MIB + 1e-3
            continue
        fxckpt_run(base, example, args, ref, budget=b, label=f"fxckpt compile {100 * b:.0f}%")


def fxckpt_run(base, example, args, ref, label, **budget):
    be = fxckpt.backend(compiler=args.compiler, **budget)
    m = torch.compile(copy.deepcopy(base), backend=be)
    grads(m, example)  # compile first so that the plans exist
    row(f"{label} ({budget.get('budget_mb', 0):.1f} MiB)" if "budget_mb" in budget else label, m, example,
        args.device, ref, be)


if __name__ == "__main__":
    main()
    if torch.cuda.is_available():  # then the eager runtime under DDP on one GPU, NCCL (a smoke run)
        import gpu_check_ddp
        raise SystemExit(gpu_check_ddp.main())
