"""`Plan`: what a solver decided, why, and what the simulator predicts for it."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field

from .errors import MIB
from .problem import RematProblem
from .simulate import simulate


@dataclass(frozen=True)
class PlanRow:
    name: str
    op: str
    decision: str  # "recompute", "keep" (held for backward), "free" (not held), "output"
    nbytes: int
    flops: int
    reason: str
    seconds: float | None = None  # estimated time of one run, where the problem carries times
    at_peak_bytes: int = 0  # of its bytes, those live at the peak the reason names


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
    # simulated live bytes over the step (at most _POINTS values, each the max of its stretch)
    timeline: tuple[int, ...] = field(default=(), repr=False)
    baseline_timeline: tuple[int, ...] = field(default=(), repr=False)

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
        """Jupyter: the summary, the predicted timeline (inline SVG) and the decision table."""
        head = "".join(f"<th>{h}</th>" for h in ("node", "op", "decision", "MiB", "MiB at peak", "MFLOPs", "reason"))
        colours = {"recompute": "#fde3c8", "keep": "#d6e6f7"}
        body = "".join(
            f'<tr style="background:{colours.get(r.decision, "none")}">' + "".join(
                f"<td>{html.escape(str(v))}</td>" for v in
                (r.name, r.op, r.decision, f"{r.nbytes / MIB:.3f}", f"{r.at_peak_bytes / MIB:.3f}", f"{r.flops / 1e6:.2f}",
                 r.reason)) + "</tr>"
            for r in self.rows if r.decision != "free"
        )
        hidden = sum(r.decision == "free" for r in self.rows)
        note = f"<p>({hidden} nodes not held for backward are not shown)</p>" if hidden else ""
        return (f"<p>{html.escape(self.summary())}</p>{self.timeline_svg()}"
                f"<table><tr>{head}</tr>{body}</table>{note}")

    def timeline_svg(self, width: int = 640, height: int = 180) -> str:
        """The predicted live bytes over the step (blue), without checkpointing (grey) and the
        budget (dashed), as an inline SVG; empty when the plan carries no timeline."""
        if not self.timeline:
            return ""
        top = max([*self.baseline_timeline, *self.timeline, self.budget_bytes or 0, 1]) * 1.05
        pad, w, h = 40, width - 50, height - 30

        def line(values, colour):
            n = max(1, len(values) - 1)
            points = " ".join(f"{pad + w * i / n:.1f},{10 + h * (1 - v / top):.1f}" for i, v in enumerate(values))
            return f'<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{points}"/>'

        parts = [line(self.baseline_timeline, "#999999"), line(self.timeline, "#1f77b4")]
        if self.budget_bytes is not None:
            y = 10 + h * (1 - self.budget_bytes / top)
            parts.append(f'<line x1="{pad}" x2="{pad + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="black" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="2" y="14" font-size="10">{top / MIB:.1f} MiB</text>'
                     f'<text x="2" y="{10 + h}" font-size="10">0</text>'
                     f'<text x="{pad}" y="{height - 4}" font-size="10">forward, then backward: blue this plan, '
                     f'grey no checkpointing, dashed the budget; peak at {html.escape(self.peak_at)}</text>')
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{"".join(parts)}</svg>'

    def to_json(self) -> str:
        d = asdict(self)
        d["recompute"] = sorted(self.recompute)
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        d["recompute"] = frozenset(d["recompute"])
        d["rows"] = tuple(PlanRow(**r) for r in d["rows"])
        for key in ("timeline", "baseline_timeline"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


_POINTS = 400  # timeline values a plan keeps for its picture


def _downsample(values, n: int = _POINTS) -> tuple[int, ...]:
    """At most `n` values, each the max of its stretch (the peak survives)."""
    if len(values) <= n:
        return tuple(values)
    step = len(values) / n
    return tuple(max(values[int(i * step):max(int(i * step) + 1, int((i + 1) * step))]) for i in range(n))


def size(nbytes: int) -> str:
    """Bytes in the unit that reads best: ``"512 B"``, ``"3.5 KiB"``, ``"1.25 MiB"``."""
    if abs(nbytes) < 1024:
        return f"{nbytes} B"
    return f"{nbytes / 1024:.1f} KiB" if abs(nbytes) < MIB else f"{nbytes / MIB:.2f} MiB"


def _reason(node, decision: str, at_peak: int, peak_at: str, fits: str | None) -> str:
    """Why, in numbers: bytes at the peak, what recomputing costs, where the peak sits."""
    cost = f"{node.flops / 1e6:.2f} MFLOPs" + ("" if node.seconds is None else f" (est. {1e6 * node.seconds:.0f} us)")
    if decision == "recompute":
        where = f"frees {size(at_peak)} at the un-checkpointed peak" if at_peak else \
            "not live at the un-checkpointed peak itself"
        return f"{where} ({peak_at}); recomputing costs {cost}"
    if at_peak == 0:
        why = f"not live at the peak ({peak_at}): recomputing it would not lower the peak"
    else:
        why = f"{size(at_peak)} live at the peak ({peak_at}); " + (fits or "no budget asked")
    prefix = node.ban or ("user policy: must save" if node.prefer == "save" else None)
    return f"{prefix}; {why}" if prefix else f"{why}; recomputing would cost {cost}"


def _bytes_at(problem: RematProblem, i: int, live) -> int:
    return sum(problem.buffers[b].nbytes for b in problem.nodes[i].creates if b in live)


def make_plan(problem: RematProblem, recompute, *, solver: str, budget_bytes: int | None,
              solve_seconds: float, baseline_peak_bytes: int | None = None,
              optimality_gap: float | None = None) -> Plan:
    """Build a `Plan` for node indices `recompute`; its figures come from `simulate`.

    Each row's reason is in numbers: a recomputed node's bytes live at the un-checkpointed peak
    (what recomputing it frees there) and its FLOPs; a kept node's bytes live at the plan's peak
    and what recomputing it would cost, or that it is not at the peak at all.
    """
    R = frozenset(recompute)
    sim = simulate(problem, R, timeline=True, live_at_peak=True)
    base = simulate(problem, timeline=True, live_at_peak=True) if R else sim
    if baseline_peak_bytes is None:
        baseline_peak_bytes = base.peak_bytes
    if budget_bytes is None:
        fits = None
    elif sim.peak_bytes <= budget_bytes:
        fits = f"the plan fits the budget with {size(budget_bytes - sim.peak_bytes)} to spare"
    else:
        fits = f"the plan is {size(sim.peak_bytes - budget_bytes)} over the budget"
    held: set[int] = set()
    for node in problem.nodes:
        if node.requires_grad:
            held.update(problem.buffers[b].producer for b in node.saves)
    rows = []
    for i, node in enumerate(problem.nodes):
        if not node.creates:
            continue
        nbytes = sum(problem.buffers[b].nbytes for b in node.creates)
        at_peak = 0
        if i in R:
            decision, at_peak = "recompute", _bytes_at(problem, i, base.live_at_peak)
            reason = _reason(node, decision, at_peak, base.peak_at, fits)
        elif node.is_output:
            decision, reason = "output", "returned to the caller"
        elif i in held:
            decision, at_peak = "keep", _bytes_at(problem, i, sim.live_at_peak)
            reason = _reason(node, decision, at_peak, sim.peak_at, fits)
        else:
            decision, reason = "free", "not saved for backward: freed after its last forward use"
        rows.append(PlanRow(node.name, node.op, decision, nbytes, node.flops, reason, node.seconds, at_peak))
    return Plan(
        recompute=problem.names(R), budget_bytes=budget_bytes, predicted_peak_bytes=sim.peak_bytes,
        baseline_peak_bytes=baseline_peak_bytes, recompute_flops=sim.recompute_flops,
        forward_flops=sum(n.flops for n in problem.nodes), solver=solver,
        solve_seconds=solve_seconds, rows=tuple(rows), peak_at=sim.peak_at, optimality_gap=optimality_gap,
        recompute_seconds=sim.recompute_seconds,
        forward_seconds=sum(n.seconds or 0.0 for n in problem.nodes) if problem.timed else None,
        timeline=_downsample([b for b, _ in sim.timeline]), baseline_timeline=_downsample([b for b, _ in base.timeline]),
    )
