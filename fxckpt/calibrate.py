"""Device rates for the time estimate (`fxckpt.core.timing`), measured once and cached, and an
opt-in real per-node profile.

`device_rates(device, dtype)` runs a short micro-benchmark (about a second) the first time a
device and dtype are seen, and again when the cached rates look measured under load (see
`device_rates`): a matmul (FLOP rate), a large copy (bandwidth), a loop of tiny ops
(per-op dispatch), Bernoulli draws (dropout's RNG) and a tiny rewritten graph replayed in backward (the runtime's own cost per
recomputed node). The result is kept in memory and in `rates.json` under the user cache
directory (`$FXCKPT_CACHE_DIR`, else `$XDG_CACHE_HOME/fxckpt`, else `~/.cache/fxckpt`), keyed by
device, dtype, torch version and CPU threads.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pathlib
import statistics
import time
from typing import Callable

import torch
from torch.utils import _pytree as pytree

from .core.timing import DeviceRates, fastest, implausible, stale

log = logging.getLogger(__name__)
_RATES: dict[str, DeviceRates] = {}
_TINY_NODES = 32  # nodes of the tiny graph that prices the runtime's replay
_VERSION = 3  # of the calibration: bump when the runtime or the micro-benchmark changes (stale caches)
# What the micro-benchmark and `profile_nodes` time with. `benchmarks/estimator.py --threads 1
# --cpu-clock` sets `time.thread_time`: with one torch thread every CPU op runs in the calling
# thread, so its CPU time leaves out the time other processes of a shared machine take.
clock = time.perf_counter


def cache_file() -> pathlib.Path:
    root = os.environ.get("FXCKPT_CACHE_DIR")
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
        root = pathlib.Path(base) / "fxckpt"
    return pathlib.Path(root) / "rates.json"


def _key(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        where = f"cuda:{device.index or 0} {torch.cuda.get_device_name(device)}"
    else:
        where = f"{device.type} x{torch.get_num_threads()} threads"
    return f"{where} {str(dtype).removeprefix('torch.')} torch {torch.__version__} v{_VERSION}"


def device_rates(device="cpu", dtype: torch.dtype = torch.float32, *, refresh: bool = False) -> DeviceRates:
    """The measured rates of `device` for `dtype`: from this process's cache, else from the
    cache file, else measured (`refresh` measures again).

    A cached table is checked first (NOTE [ Rates measured under load ] in fxckpt.core.timing):
    rates outside what any device does are measured again, and so are rates that a quick matmul
    or copy probe (tens of milliseconds) now beats by `STALE` times; each new measurement is kept together
    with the cached one through `fastest`, so the cache converges to the device's quiet rates.

    Example:
        >>> import fxckpt.calibrate as cal
        >>> r = cal.device_rates("cpu")
        >>> r.flops_per_second > 0 and r.bytes_per_second > 0
        True
    """
    device = torch.device(device)
    key = _key(device, dtype)
    if not refresh and key in _RATES:
        return _RATES[key]
    cached = None if refresh else _read(key)
    if cached is not None:
        why = implausible(cached)
        if why is None and not stale(cached, probe_flops(device, dtype), probe_bandwidth(device, dtype)):
            _RATES[key] = cached
            return cached
        log.info("cached device rates %s: measuring again", why or "were measured under load (a probe is faster)")
    rates = _measured(device, dtype)
    if cached is not None and implausible(cached) is None:
        rates = fastest(cached, rates)
    _RATES[key] = rates
    _write(key, rates)
    log.info("measured %s", rates)
    return rates


_ATTEMPTS = 3  # measurements before implausible rates are used anyway (with a warning)


def _measured(device: torch.device, dtype: torch.dtype) -> DeviceRates:
    """`measure_rates`, again while the result is implausible; the fastest of the attempts."""
    rates = measure_rates(device, dtype)
    for _ in range(_ATTEMPTS - 1):
        if implausible(rates) is None:
            break
        rates = fastest(rates, measure_rates(device, dtype))
    why = implausible(rates)
    if why is not None:
        log.warning("device rates of %s look wrong after %d measurements (%s): plans may recompute the slower "
                    "nodes; measure on a quieter machine with fxckpt.calibrate.device_rates(refresh=True), or set "
                    "them with fxckpt.calibrate.set_device_rates", rates.device, _ATTEMPTS, why)
    return rates


def set_device_rates(rates: DeviceRates, device="cpu", dtype: torch.dtype = torch.float32) -> None:
    """Use `rates` for `device` and `dtype` in this process instead of measuring (tests that
    need deterministic plans; rates measured elsewhere)."""
    if not isinstance(rates, DeviceRates):
        raise TypeError(f"rates must be a fxckpt.core.timing.DeviceRates, got {type(rates).__name__}")
    _RATES[_key(torch.device(device), dtype)] = rates


def _read(key: str) -> DeviceRates | None:
    try:
        return DeviceRates(**json.loads(cache_file().read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(key: str, rates: DeviceRates) -> None:
    path = cache_file()
    try:
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        table[key] = json.loads(rates.to_json())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(path)
    except OSError as e:  # a read-only home: the in-memory cache still serves this process
        log.debug("could not cache device rates in %s: %s", path, e)


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _best(fn: Callable[[], object], sync: Callable[[], None], reps: int = 5, inner: int = 1) -> float:
    """The fastest of `reps` timings of `inner` calls, per call (after one warm-up): the
    device's rate, without the noise a shared machine adds."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = clock()
        for _ in range(inner):
            fn()
        sync()
        times.append((clock() - t0) / inner)
    return min(times)


def _matmul_rate(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    sync = _sync(device)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty_like(a)
    return 2 * n**3 / _best(lambda: torch.mm(a, b, out=c), sync, reps=reps)


def _matmul_size(device: torch.device) -> int:
    return 2048 if device.type == "cuda" else 512


def probe_flops(device, dtype: torch.dtype = torch.float32) -> float:
    """The calibration's matmul, timed twice (~10 ms on a CPU): whether cached rates are stale."""
    device = torch.device(device)
    return _matmul_rate(device, dtype, _matmul_size(device), reps=2)


def _copy_rate(device: torch.device, dtype: torch.dtype, reps: int) -> float:
    nbytes = (512 if device.type == "cuda" else 64) * 2**20
    x = torch.empty(nbytes // dtype.itemsize, device=device, dtype=dtype)
    y = torch.empty_like(x)
    return 2 * nbytes / _best(lambda: y.copy_(x), _sync(device), reps=reps)


def probe_bandwidth(device, dtype: torch.dtype = torch.float32) -> float:
    """The calibration's copy, timed twice (~30 ms on a CPU): whether cached rates are stale."""
    return _copy_rate(torch.device(device), dtype, reps=2)


def measure_rates(device, dtype: torch.dtype = torch.float32) -> DeviceRates:
    """Run the micro-benchmark (no caching; `device_rates` caches)."""
    device = torch.device(device)
    sync = _sync(device)
    flops = _matmul_rate(device, dtype, _matmul_size(device), reps=7)
    bandwidth = _copy_rate(device, dtype, reps=5)
    tiny = torch.ones(1, device=device, dtype=dtype)
    op = _best(lambda: torch.add(tiny, tiny), sync, inner=200)
    mask = torch.empty(2**20, device=device, dtype=dtype)
    rng = mask.numel() / _best(lambda: mask.bernoulli_(0.9), sync)
    node = max(0.0, _replay_overhead(device, dtype, sync) - op)
    return DeviceRates(_key(device, dtype), flops, bandwidth, op, node, rng, _kind_rates(device, dtype, sync, op))


_PROBE_INPUTS = 4  # inputs each kind's probe takes in turn


def _kind_probes(device: torch.device, dtype: torch.dtype) -> dict[str, tuple[Callable, Callable[[], tuple]]]:
    """Each rated op kind's probe: (ATen op, a function that makes its arguments), on an
    activation of 2 MiB in float32 on a CPU, 32 MiB on an accelerator: the sizes a layer of the
    zoo's models works on."""
    n = 16 if device.type == "cuda" else 1

    def t(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    aten = torch.ops.aten
    c = 64
    return {
        "batch_norm": (aten.native_batch_norm.default,
                       lambda: (t(8 * n, c, 32, 32), t(c), t(c), t(c), t(c).abs(), True, 0.1, 1e-5)),
        "group_norm": (aten.native_group_norm.default,
                       lambda: (t(2 * n, c, 64, 64), t(c), t(c), 2 * n, c, 64 * 64, 32, 1e-5)),
        "layer_norm": (aten.native_layer_norm.default, lambda: (t(1024 * n, 512), [512], t(512), t(512), 1e-5)),
        "max_pool2d": (aten.max_pool2d_with_indices.default, lambda: (t(4 * n, c, 32, 32), [3, 3], [2, 2], [1, 1])),
        "softmax": (aten._softmax.default, lambda: (t(64 * n, 64, 128), -1, False)),
        "safe_softmax": (aten._safe_softmax.default, lambda: (t(64 * n, 64, 128), -1)),
    }


# NOTE [ Probes on inputs out of cache ]
# A model's op reads an input that other ops wrote since, not the one it read a moment ago. A
# probe called again and again on one 2 MiB input ran from a core's cache (layer_norm at 1.2e10
# B/s here, ~8e9 on inputs taken in turn, the rate an encoder's layer norms ran at), so each probe
# takes `_PROBE_INPUTS` inputs in turn, 8 MiB together on a CPU: more than this machine's 2 MiB of
# L2 per core.
def _kind_rates(device: torch.device, dtype: torch.dtype, sync, op_overhead: float) -> dict[str, float]:
    """Bytes per second of each rated op kind: the bytes annotation counts for its probe
    (`op_traffic`), over the probe's time less the dispatch cost every op pays. A kind the device
    cannot run is left out (its bytes are then priced at the bandwidth)."""
    from .passes.ops import op_traffic, tensor_leaves

    rates = {}
    for kind, (func, make) in _kind_probes(device, dtype).items():
        try:
            first = make()
            inputs = [first] + [pytree.tree_map_only(torch.Tensor, torch.clone, first) for _ in range(_PROBE_INPUTS - 1)]
            read, written = op_traffic(func, inputs[0], {}, tensor_leaves(func(*inputs[0])))
        except (RuntimeError, NotImplementedError) as e:
            log.info("no rate for %s on %s %s: %s", kind, device, dtype, e)
            continue
        turn = itertools.cycle(inputs)
        seconds = _best(lambda: func(*next(turn)), sync, reps=3, inner=_PROBE_INPUTS)
        rates[kind] = (read + written) / max(seconds - op_overhead, 1e-9)
    return rates


class _Tiny(torch.nn.Module):
    def forward(self, x):
        for _ in range(_TINY_NODES):
            x = torch.sin(x)  # saves its input: every node is a candidate
        return x


def _replay_overhead(device, dtype, sync) -> float:
    """Seconds a training step of a tiny graph gains per node when every node is recomputed:
    the runtime's recipe bookkeeping in forward, its hooks and the replay in backward."""
    from . import passes
    from .core.solvers import solve

    gm = passes.annotate(passes.capture(_Tiny(), (torch.ones(1, device=device, dtype=dtype, requires_grad=True),)))
    problem = passes.to_problem(gm)
    x = torch.ones(1, device=device, dtype=dtype, requires_grad=True)
    steps = {}
    for method in ("none", "all"):
        run = passes.rewrite(gm, solve(problem, float("inf"), method))

        def step(run=run):
            with run.fxckpt_runtime.active():
                y = run(x)
            y.backward()
        steps[method] = step
    spans = []
    for _ in range(3):  # paired, so a busy moment hits both
        none, every = (_best(steps[m], sync, reps=1, inner=10) for m in ("none", "all"))
        spans.append((every - none) / _TINY_NODES)
    return max(0.0, statistics.median(spans))


def profile_nodes(gm: torch.fx.GraphModule, args: tuple, kwargs: dict | None = None, *,
                  repeats: int = 5) -> dict[str, float]:
    """Measured seconds of one run of each annotated node (the fastest of `repeats`: what the
    node costs without the noise of a shared machine, like the rates), run as the
    runtime replays it: under no_grad, on real inputs from one forward of `gm`.

    Example:
        >>> import torch, fxckpt.passes as P
        >>> gm = P.annotate(P.capture(torch.nn.Linear(8, 8), (torch.randn(4, 8),)))
        >>> times = profile_nodes(gm, (torch.randn(4, 8),))
        >>> all(t >= 0 for t in times.values())
        True
    """
    from .passes.annotate import META
    from .passes.capture import flat_inputs

    device = next((t.device for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)),
                  torch.device("cpu"))
    sync = _sync(device)
    times: dict[str, list[float]] = {}

    class _Timer(torch.fx.Interpreter):
        def run_node(self, n):
            if META not in n.meta or n.op in ("placeholder", "output", "get_attr"):
                return super().run_node(n)
            fork = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
            with fork:  # timing replays must not move the RNG the real step draws from
                sync()
                t0 = clock()
                out = super().run_node(n)
                sync()
            times.setdefault(n.name, []).append(clock() - t0)
            return out

    flat = flat_inputs(gm, args, kwargs or {})
    buffers = [(b, b.detach().clone()) for b in gm.buffers()]  # batch norm statistics
    try:
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first run warms caches and allocators
                _Timer(gm).run(*flat)
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return {name: min(ts[1:]) for name, ts in times.items()}
