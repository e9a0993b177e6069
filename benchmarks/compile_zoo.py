"""fxckpt's compile backend across the benchmark zoo, at small sizes of the real architectures.

    python benchmarks/compile_zoo.py [--models quick gpt2 llama resnet50 unet]
        [--compilers aot_eager inductor] [--fractions 0.9 0.7 0.5] [--steps 3] [--out FILE.md]

Per model: eager, `torch.compile` (inductor, no budget) and torch's budget partitioner at 0.5
are the references; then per compiler, `fxckpt.backend(budget=1.0)` gives the step's
un-checkpointed prediction P, and `budget_mb` = 90/70/50% of P and the smallest feasible budget
(each infeasible budget's error names the next to try, until one plans) are compiled and measured. Every row runs in its own
process (`--row`), so a crash inside torch's compiler (a TinyCNN run once segfaulted in torch's
own budget-0.5 partitioner) costs that row only, and each row starts from a fresh Dynamo.

Columns: the budget, fxckpt's predicted step peak, the allocator's peak (torch.profiler's CPU
allocator events, the output held until backward ends as `fxckpt.measure_step` does), whether
the allocator went over the budget, whether it is within 5% of the prediction, the largest
per-parameter relative gradient difference (largest |difference| / largest |reference|) against
default torch.compile and against eager, and the median step seconds (one thread; indicative:
the machine is shared and rows run at different times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fxckpt.benchmark.runner import _max_relative_grad_diff

MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]
EAGER_LOSS_BYTES = 8  # a loss summed eagerly outside the graphs (models without a loss of their own)


def build(name: str):
    """A small instance of the zoo model `name` (same architecture, fewer layers / smaller inputs)."""
    from fxckpt.benchmark import zoo

    torch.manual_seed(0)
    if name == "quick":
        return zoo.ZOO["quick"].build()
    if name == "gpt2":
        model, example = zoo.gpt2(2, 128, 2, batch=2, seq=64, vocab=1000)
        return model, {**example, "use_cache": False}
    if name == "llama":
        return zoo.llama(2, 128, 344, 4, 2, 64, 1000)
    if name == "resnet50":
        from transformers import ResNetForImageClassification

        model = zoo.hf_model(ResNetForImageClassification)
        return model, {"pixel_values": torch.randn(2, 3, 64, 64), "labels": torch.randint(0, 2, (2,))}
    if name == "unet":
        return zoo.unet(32, (32, 64, 64, 64))
    raise ValueError(f"unknown model {name!r}")


SIZES = {
    "quick": "QuickNet as in the zoo (6 blocks, d=64, 16x32 tokens)",
    "gpt2": "GPT-2 (transformers) 2 layers, 128 hidden, 2 heads, vocab 1000, batch 2 x seq 64, labels",
    "llama": "Llama (transformers) 2 layers, hidden 128, intermediate 344, 4 heads, vocab 1000, batch 2 x seq 64",
    "resnet50": "ResNet-50 (transformers defaults, all 50 layers), input 2x3x64x64, labels",
    "unet": "diffusers UNet2DModel, channels (32, 64, 64, 64), 2 resnets per block, attention, input 2x3x32x32",
}


def _step(model, example, seed: int = 1):
    from fxckpt.passes.capture import call_with, step_loss

    torch.manual_seed(seed)
    out = call_with(model, example)
    step_loss(out).backward()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def run_row(model_name: str, kind: str, compiler: str, spec: str, steps: int, grads_path: Path) -> dict:
    """One row, in this process: compile, a warm-up step, a profiled step, `steps` timed steps."""
    import fxckpt
    from fxckpt.benchmark import profiled_peak_bytes
    torch.set_num_threads(1)
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    base, example = build(model_name)
    row: dict = {"model": model_name, "kind": kind, "compiler": compiler, "spec": spec}
    be = None
    memory_budget = 1.0
    if kind == "eager":
        model = base
    elif kind == "default":
        model = torch.compile(base)
    elif kind == "torch":
        memory_budget = float(spec)
        model = torch.compile(base)
    else:
        if spec == "floor":  # the smallest feasible budget: each infeasible one's error names the next to try
            options = {"budget_mb": _floor(base, example, compiler) / MIB}
        elif spec.endswith("%"):
            options = {"budget": float(spec[:-1]) / 100}
        else:
            options = {"budget_mb": float(spec)}
        be = fxckpt.backend(compiler=compiler, **options)
        model = torch.compile(base, backend=be)
    t0 = time.perf_counter()
    with torch._functorch.config.patch(activation_memory_budget=memory_budget):
        for p in base.parameters():
            p.grad = None
        _step(model, example)  # compiles
        row["first_s"] = time.perf_counter() - t0
        for p in base.parameters():
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
        row["peak"] = profiled_peak_bytes(lambda: _step(model, example))
        grads = _grads(base)
        times = []
        for _ in range(steps):
            for p in base.parameters():
                p.grad.zero_()
            t0 = time.perf_counter()
            _step(model, example)
            times.append(time.perf_counter() - t0)
    row["step_s"] = statistics.median(times)
    torch.save(grads, grads_path)
    if be is not None:
        row["predicted"] = be.predicted_peak_bytes()
        row["budget"] = int(options["budget_mb"] * MIB) if "budget_mb" in options else None
        row["graphs"] = len(be.graphs)
        row["recomputed"] = sum(len(p.recompute) for p in be.plans)
        row["fixed_loss"] = EAGER_LOSS_BYTES  # allowance for an eagerly summed loss
    return row


def _floor(base, example, compiler: str, rounds: int = 8) -> int:
    """The smallest feasible budget (bytes) the errors lead to: from 1 KiB, the floor each
    infeasible budget's error names, until one plans (graphs and the pieces of a split graph
    name the floor of those planned so far: NOTE [ Parameter gradients are returned per graph ])."""
    import copy

    import fxckpt

    budget = 1024
    for _ in range(rounds):
        torch._dynamo.reset()
        try:
            _step(torch.compile(copy.deepcopy(base), backend=fxckpt.backend(budget_mb=budget / MIB, compiler=compiler)),
                  example)
        except Exception as e:  # Dynamo wraps the backend's error
            err = _infeasible(e)
            if err is None or err.min_feasible_bytes <= budget:
                raise
            budget = err.min_feasible_bytes
            continue
        torch._dynamo.reset()
        return budget
    raise RuntimeError(f"no feasible budget after {rounds} rounds (last tried {budget} B)")


def _infeasible(e: BaseException):
    """The InfeasibleBudgetError behind Dynamo's BackendCompilerFailed, or None."""
    from fxckpt.core.errors import InfeasibleBudgetError

    while e is not None and not isinstance(e, InfeasibleBudgetError):
        e = getattr(e, "inner_exception", None) or e.__cause__
    return e


def _error_text(e: BaseException) -> str:
    """An infeasible budget as the floor it names; any other error as its type and first line."""
    err = _infeasible(e)
    if err is not None:
        return f"infeasible: smallest feasible {err.min_feasible_bytes / MIB:.3f} MiB"
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def _child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--row", *args]
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["(no stderr)"])[-1][:300]
        why = f"signal {-out.returncode}" if out.returncode < 0 else f"exit {out.returncode}"
        return {"error": f"{why}: {tail}"}
    return json.loads(lines[-1][4:])


def _fmt_mib(b):
    return "" if b is None else f"{b / MIB:.3f}"


def table(model: str, rows: list[dict]) -> str:
    lines = [f"### {model}: {SIZES[model]}\n",
             "| row | budget MiB | predicted MiB | allocator MiB | over budget? | within 5% of pred? | "
             "grad rel vs default compile | grad rel vs eager | s/step | first step s | recomputed |",
             "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = {"eager": "eager (no compile)", "default": "torch.compile (no budget)",
                 "torch": f"torch.compile budget {r['spec']}"}.get(r["kind"], f"fxckpt compile {r['spec']} ({r['compiler']})")
        if "error" in r:
            lines.append(f"| {label} | | | | | | | | | | FAILED: {r['error']} |")
            continue
        budget, pred, peak = r.get("budget"), r.get("predicted"), r["peak"]
        over = "" if budget is None else ("**OVER**" if peak > budget + r.get("fixed_loss", 0) else "no")
        close = "" if pred is None else ("yes" if abs(peak - pred) <= 0.05 * pred else f"**no** ({100 * (peak / pred - 1):+.1f}%)")
        rel = lambda k: "" if k not in r else f"{r[k]:.2g}"  # noqa: E731
        lines.append(f"| {label} | {_fmt_mib(budget)} | {_fmt_mib(pred)} | {_fmt_mib(peak)} | {over} | {close} | "
                     f"{rel('rel_vs_default')} | {rel('rel_vs_eager')} | {r['step_s']:.3f} | {r['first_s']:.1f} | "
                     f"{r.get('recomputed', '')} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--compilers", nargs="+", default=["aot_eager", "inductor"], choices=["aot_eager", "inductor"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.9, 0.7, 0.5])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per row")
    ap.add_argument("--out", help="write the markdown tables here")
    ap.add_argument("--work", default=None, help="folder for rows.jsonl and the gradients (default: a temporary one)")
    ap.add_argument("--report", metavar="ROWS_JSONL", help="only write the tables of rows measured before")
    ap.add_argument("--row", nargs=6, metavar=("MODEL", "KIND", "COMPILER", "SPEC", "STEPS", "GRADS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        model, kind, compiler, spec, steps, grads = args.row
        try:
            row = run_row(model, kind, compiler, spec, int(steps), Path(grads))
        except Exception as e:  # reported as the row's error (a crash is reported by the parent)
            row = {"error": _error_text(e)}
        print("ROW " + json.dumps(row), flush=True)
        return
    if args.report:
        text = report([json.loads(line) for line in Path(args.report).read_text().splitlines() if line.strip()])
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []

        def row(model, kind, compiler="", spec="-", label=None):
            grads = work / f"grads-{len(list(work.glob('grads-*.pt')))}.pt"
            r = {**_child([model, kind, compiler or "-", spec, str(args.steps), str(grads)], args.timeout),
                 "model": model, "kind": kind, "compiler": compiler, "spec": label or spec, "grads": str(grads)}
            print(json.dumps(r), flush=True)
            with open(work / "rows.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            rows.append(r)
            return r

        def fxckpt_rows(model, compiler):
            full = row(model, "fxckpt", compiler, "100%", label="100% (P)")
            if "predicted" in full:
                for f in args.fractions:
                    row(model, "fxckpt", compiler, f"{f * full['predicted'] / MIB:.6f}", label=f"{100 * f:.0f}%")
            row(model, "fxckpt", compiler, "floor")

        # aot_eager first (seconds per compile), then inductor (minutes per compile on 2 shared cores)
        for model in args.models:
            row(model, "eager")
            if "aot_eager" in args.compilers:
                fxckpt_rows(model, "aot_eager")
        for model in args.models:
            row(model, "default")
            row(model, "torch", spec="0.5")
            if "inductor" in args.compilers:
                fxckpt_rows(model, "inductor")
        text = report(rows)
        print(text, flush=True)
        if args.out:
            Path(args.out).write_text(text)


def report(rows: list[dict]) -> str:
    """Every model's table, the gradients compared with its eager and default-compile rows."""
    for r in rows:
        refs = {k["kind"]: k for k in rows if k["model"] == r["model"] and k["kind"] in ("eager", "default")}
        for kind, ref in refs.items():
            if ref is not r and "error" not in r and "error" not in ref and "grads" in r and "grads" in ref:
                r[f"rel_vs_{kind}"] = _max_relative_grad_diff(torch.load(r["grads"]), torch.load(ref["grads"]))
    models = list(dict.fromkeys(r["model"] for r in rows))
    return "\n".join(table(m, [r for r in rows if r["model"] == m]) for m in models)


if __name__ == "__main__":
    main()
