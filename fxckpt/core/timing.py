"""Estimated seconds per node: a roofline at a device's measured rates, plus per-op overhead.

Torch-free: the rates come from `fxckpt.calibrate` (a short micro-benchmark per device, cached),
the FLOPs, bytes and op counts from annotation (`NodeCost`).

NOTE [ Why a roofline plus overhead ]
Matmul FLOPs alone price a recomputed GELU, norm or dropout at nothing, yet replaying it reads
and writes its tensors at memory bandwidth, and every ATen op it runs pays a fixed dispatch
cost (on small ops the larger part). So one run of a node is estimated as
    max(FLOPs / matmul rate, other bytes read and written / bandwidth)
        + the bytes of each rated op kind / that kind's rate + random draws / RNG rate
        + ATen ops x per-op overhead + the runtime's overhead per replayed node.
The RNG term is there because measured: on CPU, drawing dropout's Bernoulli mask costs far more
than its bytes (a dropout on 128K floats ran ~30x its bandwidth time; attention with dropout
~10x its FLOP time, benchmarks/estimator.py). Rated kinds are kernels that move their bytes far
slower than a copy (NOTE [ Ops with a rate of their own ] in passes/ops.py: max_pool2d,
training-mode norms, softmax), each measured on a probe of its own. Both are added, not taken
in the max: they are ops of their own, run one after another with the node's other ops (taken
in the max, an attention's dropout draws hid its matmuls and softmax: estimated at 0.31-0.79 of
its measured time, benchmarks/results/2026-12-01/estimator.md).
FLOPs are FlopCounterMode's where it counts them (matmuls, convolutions, attention); elsewhere
annotation counts one per output element, which the bandwidth term dominates.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .costs import NodeCost


@dataclass(frozen=True)
class DeviceRates:
    """The measured rates of one device (and dtype), the roofline's parameters.

    Attributes:
        device: what was measured, e.g. "cpu float32 x2 threads" or "cuda:0 NVIDIA H200 float32".
        flops_per_second: dense matmul rate.
        bytes_per_second: memory bandwidth, bytes read plus bytes written per second.
        op_overhead_seconds: fixed cost of one ATen op call (dispatch), whatever its size.
        node_overhead_seconds: what the runtime adds to replay one node (its Python: recipe
            lookup, contexts, the call), measured on a recipe of a tiny op.
        random_per_second: random elements drawn per second (dropout's Bernoulli); 0: not
            measured, random draws are then priced by their bytes only.
        kind_bytes_per_second: the rate of each rated op kind ("batch_norm", "max_pool2d", ...),
            its bytes read and written per second; a kind not measured moves its bytes at
            `bytes_per_second`.
    """

    device: str
    flops_per_second: float
    bytes_per_second: float
    op_overhead_seconds: float
    node_overhead_seconds: float = 0.0
    random_per_second: float = 0.0
    kind_bytes_per_second: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("flops_per_second", "bytes_per_second"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"DeviceRates.{name} must be a positive number, got {v!r}")
        for name in ("op_overhead_seconds", "node_overhead_seconds", "random_per_second"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"DeviceRates.{name} must be a number >= 0, got {v!r}")
        for kind, v in self.kind_bytes_per_second.items():
            if not (isinstance(kind, str) and isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"DeviceRates.kind_bytes_per_second maps op kinds to positive rates, got {kind!r}: {v!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DeviceRates":
        return cls(**json.loads(text))


def estimate_seconds(rates: DeviceRates, flops: float, bytes_moved: float, ops: int, random_elements: int = 0,
                     rated_bytes: tuple[tuple[str, int], ...] = ()) -> float:
    """One replay of a node at `rates` (NOTE [ Why a roofline plus overhead ]): max(compute,
    memory) time, plus the time of its rated kinds' bytes (`rated_bytes`, (kind, bytes) pairs, a
    part of `bytes_moved`) and of its random draws, plus the overheads. A node that runs no op
    (a view) costs nothing.

    Example:
        >>> r = DeviceRates("toy", flops_per_second=1e12, bytes_per_second=1e11,
        ...                 op_overhead_seconds=1e-5, node_overhead_seconds=2e-5,
        ...                 kind_bytes_per_second={"max_pool2d": 1e10})
        >>> round(estimate_seconds(r, flops=2e9, bytes_moved=1e8, ops=2), 6)  # compute-bound: 2 ms
        0.00204
        >>> round(estimate_seconds(r, flops=1e6, bytes_moved=1e9, ops=1), 6)  # memory-bound: 10 ms
        0.01003
        >>> round(estimate_seconds(r, flops=1e6, bytes_moved=1e8, ops=1, rated_bytes=(("max_pool2d", 1e8),)), 6)  # 10 ms
        0.010031
    """
    if ops == 0:
        return 0.0
    rated = sum(b for _, b in rated_bytes)
    roofline = max(flops / rates.flops_per_second, (bytes_moved - rated) / rates.bytes_per_second)
    for kind, b in rated_bytes:
        roofline += b / rates.kind_bytes_per_second.get(kind, rates.bytes_per_second)
    if rates.random_per_second:
        roofline += random_elements / rates.random_per_second
    return roofline + ops * rates.op_overhead_seconds + rates.node_overhead_seconds


def node_seconds(rates: DeviceRates, cost: NodeCost) -> float:
    """`estimate_seconds` of one annotated node, from its `NodeCost`.

    Example:
        >>> r = DeviceRates("toy", 1e12, 1e11, 0.0, kind_bytes_per_second={"batch_norm": 2e10})
        >>> node_seconds(r, NodeCost(flops=0, ops=1, bytes_read=4e6, bytes_written=4e6, rated_bytes=(("batch_norm", 8e6),)))
        0.0004
    """
    return estimate_seconds(rates, cost.flops, cost.bytes_read + cost.bytes_written, cost.ops, cost.random_elements,
                            cost.rated_bytes)


# NOTE [ Rates measured under load ]
# A micro-benchmark on a busy machine only errs slow: another process can take cores, caches or
# memory bandwidth, never give them. Rates measured under load were cached and reused (GPT-2
# small's forward estimated at 41.2 s against a 2.7 s step). So a device's rates are the best it
# has shown, kept across measurements (`fastest`); a cached table that a quick probe now beats
# is measured again (`fxckpt.calibrate`), and rates outside what any device does (`implausible`)
# are never used without measuring again.
PLAUSIBLE = {  # (low, high) for any CPU or accelerator of the last decade, and the next
    "flops_per_second": (1e8, 1e17),
    "bytes_per_second": (1e8, 1e14),
    "op_overhead_seconds": (1e-8, 1e-3),
    "node_overhead_seconds": (1e-7, 1e-2),  # a difference of two timings: noise can make it 0
}
PLAUSIBLE_KIND = (1e6, 1e14)  # bytes per second of a rated op kind: down to 1/100 of the slowest bandwidth


def implausible(rates: DeviceRates) -> str | None:
    """Why `rates` cannot be a device's (a rate outside `PLAUSIBLE`), or None.

    Example:
        >>> implausible(DeviceRates("ok", 1e11, 1e10, 5e-6, 3e-5))
        >>> implausible(DeviceRates("loaded", 2e7, 1e10, 5e-6, 3e-5))
        'flops_per_second 2e+07 is outside [1e+08, 1e+17]'
    """
    for name, (low, high) in PLAUSIBLE.items():
        v = getattr(rates, name)
        if not low <= v <= high:
            return f"{name} {v:.3g} is outside [{low:.3g}, {high:.3g}]"
    low, high = PLAUSIBLE_KIND
    for kind, v in rates.kind_bytes_per_second.items():
        if not low <= v <= high:
            return f"kind_bytes_per_second[{kind!r}] {v:.3g} is outside [{low:.3g}, {high:.3g}]"
    return None


def fastest(a: DeviceRates, b: DeviceRates) -> DeviceRates:
    """The best of two measurements of one device: the higher of each rate, the lower of each
    overhead (see NOTE [ Rates measured under load ]). An unmeasured RNG rate (0) or kind loses.

    Example:
        >>> quiet = DeviceRates("cpu", 1e11, 5e9, 2e-6, 3e-5)
        >>> busy = DeviceRates("cpu", 3e10, 8e9, 6e-6, 1e-5)
        >>> fastest(quiet, busy)
        DeviceRates(device='cpu', flops_per_second=100000000000.0, bytes_per_second=8000000000.0, op_overhead_seconds=2e-06, node_overhead_seconds=1e-05, random_per_second=0.0, kind_bytes_per_second={})
    """
    return DeviceRates(b.device, max(a.flops_per_second, b.flops_per_second), max(a.bytes_per_second, b.bytes_per_second),
                       min(a.op_overhead_seconds, b.op_overhead_seconds),
                       min(a.node_overhead_seconds, b.node_overhead_seconds),
                       max(a.random_per_second, b.random_per_second),
                       {k: max(a.kind_bytes_per_second.get(k, 0.0), b.kind_bytes_per_second.get(k, 0.0))
                        for k in sorted(a.kind_bytes_per_second.keys() | b.kind_bytes_per_second.keys())})


STALE = 1.5  # a probe this many times faster than the cached rate: the cache was measured under load


def stale(cached: DeviceRates, probed_flops_per_second: float, probed_bytes_per_second: float = 0.0) -> bool:
    """Whether quick probes (a matmul, a copy) show the cached rates were measured slow. Both are
    asked: a cache measured under load kept a plausible FLOP rate beside 1.9e9 B/s for a core that
    copies at 1.6e10, and over-estimated an encoder's memory-bound nodes 6.6x.

    Example:
        >>> stale(DeviceRates("cpu", 2e10, 1e10, 5e-6), probed_flops_per_second=1e11)
        True
        >>> stale(DeviceRates("cpu", 1e11, 2e9, 5e-6), 1e11, probed_bytes_per_second=1.6e10)
        True
    """
    return (probed_flops_per_second > STALE * cached.flops_per_second
            or probed_bytes_per_second > STALE * cached.bytes_per_second)
