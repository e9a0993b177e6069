"""`Plan`: what a solver decided, why, and what the simulator predicts for it."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field

from .problem import RematProblem
from .simulate import simulate

MIB = 2**20


@dataclass(frozen=True)
class PlanRow:
    name: str
    op: str
    decision: str  # "recompute", "keep" (held for backward), "free" (not held), "output"
    nbytes: int
    flops: int
    reason: str
    seconds: float | None = None  # estimated time of one run, where the problem carries times


@dataclass(frozen=True)
class Plan:
    """Which activations to recompute, and the simulator's prediction for that choice.

    Attributes:
        recompute: names of the nodes recomputed in backward instead of held.
        budget_bytes: the activation budget solved for (None: no budget).
        predicted_peak_bytes: simulated activation peak of a training step with this plan.
        baseline_peak_bytes: simulated peak with nothing recomputed.
        recompute_flops: FLOPs spent recomputing (matmuls counted by FlopCounterMode,
            other ops one per output element).
        forward_flops: FLOPs of one forward under the same convention.
        recompute_seconds, forward_seconds: the same in estimated seconds (roofline of FLOPs and
            bytes at the device's measured rates, plus per-op overhead; `fxckpt.core.timing`),
            None when the problem carries no times. Solvers minimize these when present.
        solver, solve_seconds, optimality_gap: who decided, how long it took, and the
            relative gap to a proven optimum where one is known.
        dry_run_peak_bytes: the peak of the rewritten step run on fake tensors (no real
            compute), when `auto_checkpoint` verified the plan; it must fit the budget too.
        rows: one row per activation node, with the reason for its decision.
    """

    recompute: frozenset[str]
    budget_bytes: int | None
    predicted_peak_bytes: int
    baseline_peak_bytes: int
    recompute_flops: int
    forward_flops: int
    solver: str
    solve_seconds: float
    rows: tuple[PlanRow, ...] = field(repr=False)
    peak_at: str = ""
    optimality_gap: float | None = None
    dry_run_peak_bytes: int | None = None  # the rewritten step run on fake tensors, when verified
    recompute_seconds: float | None = None
    forward_seconds: float | None = None

    @property
    def predicted_peak_mib(self) -> float:
        return self.predicted_peak_bytes / MIB

    @property
    def recompute_overhead(self) -> float:
        """Recompute FLOPs relative to a training step's (forward + 2x forward for backward)."""
        return self.recompute_flops / max(1, 3 * self.forward_flops)

    def summary(self) -> str:
        budget = "none" if self.budget_bytes is None else f"{self.budget_bytes / MIB:.2f} MiB"
        return (
            f"fxckpt plan ({self.solver}, {self.solve_seconds:.3f} s): budget {budget}, predicted peak "
            f"{self.predicted_peak_bytes / MIB:.2f} MiB (no checkpointing: {self.baseline_peak_bytes / MIB:.2f} MiB), "
            f"recompute {len(self.recompute)} nodes, +{100 * self.recompute_overhead:.1f}% FLOPs"
            + ("" if self.recompute_seconds is None else
               f", est. {1e3 * self.recompute_seconds:.2f} ms (forward est. {1e3 * self.forward_seconds:.2f} ms)")
            + f"; peak at {self.peak_at}"
            + ("" if self.optimality_gap is None else
               "; proven optimal" if self.optimality_gap <= 1e-4 else f"; within {100 * self.optimality_gap:.1f}% of optimal")
            + ("" if self.dry_run_peak_bytes is None else f"; dry run {self.dry_run_peak_bytes / MIB:.2f} MiB")
        )

    def __str__(self) -> str:
        shown = [r for r in self.rows if r.decision != "free"]
        width = max([len(r.name) for r in shown] + [4])
        lines = [self.summary(), f"{'node':<{width}}  {'decision':<9}  {'MiB':>9}  {'MFLOPs':>10}  reason"]
        for r in shown:
            lines.append(f"{r.name:<{width}}  {r.decision:<9}  {r.nbytes / MIB:>9.3f}  {r.flops / 1e6:>10.2f}  {r.reason}")
        hidden = len(self.rows) - len(shown)
        if hidden:
            lines.append(f"({hidden} nodes not held for backward are not shown)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("node", "op", "decision", "MiB", "MFLOPs", "reason"))
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in
                             (r.name, r.op, r.decision, f"{r.nbytes / MIB:.3f}", f"{r.flops / 1e6:.2f}", r.reason)) + "</tr>"
            for r in self.rows if r.decision != "free"
        )
        return f"<p>{html.escape(self.summary())}</p><table><tr>{head}</tr>{body}</table>"

    def to_json(self) -> str:
        d = asdict(self)
        d["recompute"] = sorted(self.recompute)
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        d["recompute"] = frozenset(d["recompute"])
        d["rows"] = tuple(PlanRow(**r) for r in d["rows"])
        return cls(**d)


def make_plan(problem: RematProblem, recompute, *, solver: str, budget_bytes: int | None,
              solve_seconds: float, baseline_peak_bytes: int | None = None,
              optimality_gap: float | None = None) -> Plan:
    """Build a `Plan` for node indices `recompute`; its figures come from `simulate`."""
    R = frozenset(recompute)
    sim = simulate(problem, R)
    if baseline_peak_bytes is None:
        baseline_peak_bytes = sim.peak_bytes if not R else simulate(problem).peak_bytes
    held: set[int] = set()
    for node in problem.nodes:
        if node.requires_grad:
            held.update(problem.buffers[b].producer for b in node.saves)
    rows = []
    for i, node in enumerate(problem.nodes):
        if not node.creates:
            continue
        nbytes = sum(problem.buffers[b].nbytes for b in node.creates)
        if i in R:
            decision, reason = "recompute", "recomputed in backward from kept inputs"
        elif node.is_output:
            decision, reason = "output", "returned to the caller"
        elif i in held:
            decision = "keep"
            reason = node.ban or ("user policy: must save" if node.prefer == "save" else "cheaper to keep within the budget")
        else:
            decision, reason = "free", "not saved for backward: freed after its last forward use"
        rows.append(PlanRow(node.name, node.op, decision, nbytes, node.flops, reason, node.seconds))
    return Plan(
        recompute=problem.names(R), budget_bytes=budget_bytes, predicted_peak_bytes=sim.peak_bytes,
        baseline_peak_bytes=baseline_peak_bytes, recompute_flops=sim.recompute_flops,
        forward_flops=sum(n.flops for n in problem.nodes), solver=solver,
        solve_seconds=solve_seconds, rows=tuple(rows), peak_at=sim.peak_at, optimality_gap=optimality_gap,
        recompute_seconds=sim.recompute_seconds,
        forward_seconds=sum(n.seconds or 0.0 for n in problem.nodes) if problem.timed else None,
    )
