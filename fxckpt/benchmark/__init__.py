"""The benchmark harness: compare activation-checkpointing strategies on one model, measured the
same way for each. It sits on top of the library; nothing in ``fxckpt`` or ``fxckpt.passes``
imports it.

`compare_strategies` runs one training step (forward + backward of the model's loss, see
`fxckpt.measure.step_loss`) of a model under each strategy and reports, per strategy, the
measured activation peak, the FLOPs and wall time it adds over no checkpointing, its planning or
compile time, and the largest gradient difference from no checkpointing.

Strategies (the names are the table's):

* ``"none"``: the model as built.
* ``"hf per-layer"``: the model's own per-layer checkpointing: Hugging Face
  ``activation_checkpointing_enable()`` (or ``gradient_checkpointing_enable()`` on older
  transformers) where ``model.supports_gradient_checkpointing``; diffusers
  ``enable_gradient_checkpointing()`` where ``model._supports_gradient_checkpointing``; else
  status ``"not supported"``.
* ``"sqrt segments"``, ``"every-2"``, ``"every-3"``: layer-level checkpointing of the model's
  repeated blocks (`fxckpt.manual.find_blocks`). With ``n`` blocks numbered in registration order:

  - ``every-k`` checkpoints each block ``i`` with ``i % k == 0`` on its own (blocks 0, k, 2k,
    ...), through `fxckpt.manual.SelectiveCheckpoint`: a checkpointed block keeps only its
    inputs and recomputes its insides in backward.
  - ``sqrt segments`` groups the blocks, in the order the forward calls them, into segments of
    ``round(sqrt(n))`` consecutive blocks and checkpoints every segment but the last as one
    unit (`SegmentCheckpoint`): a segment keeps only its first block's inputs and backward
    recomputes the whole segment (Chen et al. 2016; torch's ``checkpoint_sequential``). A
    segment only spans blocks that the model calls back to back, each on the previous one's
    output and with the same other arguments (checked in a probe forward and again at run
    time); elsewhere segments end early.

* ``"compile budget 0.5"``, ``"compile budget 0.1"``: ``torch.compile`` (inductor) with
  ``torch._functorch.config.activation_memory_budget`` set to that value, so the min-cut
  partitioner recomputes in backward until the saved activations fit that fraction. The
  compile time is reported separately (first step minus a normal step); a failure is recorded
  with its exception class name as the status.
* ``"fxckpt N%"`` (``N`` from ``budgets``): `fxckpt.auto_checkpoint` at that fraction of the
  un-checkpointed activation peak; ``"fxckpt min"``: at the smallest feasible budget (a plan at
  a tiny budget raises `InfeasibleBudgetError` naming it); ``"fxckpt @ X"``: at strategy X's
  measured peak, for an equal-memory comparison with X (``"fxckpt @ *"``: every measured X).

How it is measured (the same for every strategy of a model):

* Activation peak: ``torch.profiler`` with ``profile_memory=True`` records every allocation
  and free of the CPU allocator during one step, including the buffers that inductor-compiled
  code allocates; the peak is the largest running sum of those events. Parameters, inputs and
  gradients are excluded as in `fxckpt.measure.measure_step`: every ``.grad`` exists (zeroed)
  before the step. `fxckpt.measure.LiveBytesMode` (a dispatch mode) cannot be used on
  compiled modules: Dynamo runs the original eager code while a dispatch mode is active, so
  it would measure the uncompiled model. It is still run on the eager rows named in
  ``live_check`` as a cross-check; the profiler additionally sees memory an op allocates
  only internally.
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one step for eager strategies
  (recomputation included); for compiled strategies (where the mode would again run eager
  code) the same counting rules applied to the forward and backward graphs that inductor
  compiles, added up each time a compiled graph runs. Both count the CPU flash-attention
  kernels too (`EXTRA_FLOP_RULES`), which ``FlopCounterMode`` alone skips.
* Wall time: median of ``iterations`` steps after a warm-up, with no profiler or mode. Each timed
  step is followed by a timed step of "none" (on a copy kept for the whole comparison), and the
  overhead is relative to the median of those: on a shared machine, load from other processes
  then hits both sides alike.
* A check of the profiler (on "none" and the compiled rows, `forward_memory_check`): after a
  forward, the bytes still allocated must equal the storages saved for backward plus the outputs.
* Gradients: one step with ``torch.manual_seed(seed)`` per strategy, compared with "none"'s.

Every strategy gets a deep copy of one freshly built model (one seed) and the same inputs; the
caller's RNG state is restored afterwards.

Modules: `zoo` (the benchmark models), `flops` (FLOP rules, compiled-graph FLOPs), `meters`
(profiled memory, the forward check), `segments` (repeated blocks, segment checkpointing),
`strategies` (the registry), `runner` (`compare_strategies`), `results` (`StrategyResult`),
`report` (tables).
"""

from __future__ import annotations

from ..manual import find_blocks  # the library's block finder, re-exported for the harness's users
from .flops import EXTRA_FLOP_RULES, CountingInductor, graph_flops
from .meters import ProfiledMemory, forward_memory_check, profiled_memory, profiled_peak_bytes
from .report import print_comparison_table, to_markdown
from .results import ZERO_GRADS, StrategyResult
from .runner import compare_strategies
from .segments import SegmentCheckpoint, SegmentError
from .strategies import DEFAULT_BUDGETS, STRATEGIES, register_family, register_strategy
from .zoo import ZOO, ZooModel

__all__ = [
    "DEFAULT_BUDGETS", "EXTRA_FLOP_RULES", "STRATEGIES", "ZERO_GRADS", "ZOO", "CountingInductor", "ProfiledMemory",
    "SegmentCheckpoint", "SegmentError", "StrategyResult", "ZooModel", "compare_strategies", "find_blocks",
    "forward_memory_check", "graph_flops", "print_comparison_table", "profiled_memory", "profiled_peak_bytes",
    "register_family", "register_strategy", "to_markdown",
]
