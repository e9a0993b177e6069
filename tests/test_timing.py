"""Plans priced in seconds: what annotation counts, the estimate at fixed rates, the rates cache,
the per-node profile. Asserts arithmetic and decisions, never measured time."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import PINNED_RATES

import fxckpt
from fxckpt import calibrate, passes
from fxckpt.core.costs import NodeCost
from fxckpt.core.timing import DeviceRates, estimate_seconds, fastest, implausible, node_seconds, stale
from fxckpt.passes.ops import RATED_OPS


def _annotated(model, *args):
    return passes.annotate(passes.capture(model, args))


def test_estimate_is_a_roofline_plus_overheads():
    r = DeviceRates("toy", flops_per_second=1e12, bytes_per_second=1e11, op_overhead_seconds=1e-5,
                    node_overhead_seconds=2e-5)
    assert estimate_seconds(r, 2e9, 1e8, 2) == pytest.approx(2e-3 + 2e-5 + 2e-5)  # compute-bound
    assert estimate_seconds(r, 1e6, 1e9, 3) == pytest.approx(1e-2 + 3e-5 + 2e-5)  # memory-bound
    assert estimate_seconds(r, 0, 0, 0) == 0.0  # a view runs no op
    rng = DeviceRates("toy", 1e12, 1e11, 0.0, 0.0, random_per_second=1e8)
    # draws are an op of their own: added to the roofline, not hidden in its max
    assert estimate_seconds(rng, 1e3, 1e6, 1, random_elements=10**6) == pytest.approx(1e-2 + 1e-5)
    assert estimate_seconds(r, 1e3, 1e6, 1, random_elements=10**6) == pytest.approx(1e-5 + 1e-5 + 2e-5)  # not measured
    with pytest.raises(ValueError, match="flops_per_second"):
        DeviceRates("bad", 0, 1, 0)
    assert DeviceRates.from_json(r.to_json()) == r


def test_annotation_counts_ops_and_bytes():
    """linear(16x64 -> 32) runs t (a view: not counted) and addmm, which reads the bias, the
    input and the weight and writes the output; relu reads and writes 16x32."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    gm = _annotated(model, torch.randn(16, 64))
    costs = {n.name: n.meta["fxckpt"] for n in gm.graph.nodes if "fxckpt" in n.meta}
    lin = next(c for name, c in costs.items() if name.startswith("_0") or "linear" in name or name == "0")
    relu = next(c for name, c in costs.items() if name.startswith("_1") or "relu" in name or name == "1")
    assert (lin.ops, lin.bytes_read, lin.bytes_written) == (1, 4 * (32 + 16 * 64 + 64 * 32), 4 * 16 * 32)
    assert (relu.ops, relu.bytes_read, relu.bytes_written) == (1, 4 * 16 * 32, 4 * 16 * 32)
    assert lin.random_elements == relu.random_elements == 0
    problem = passes.to_problem(gm, rates=PINNED_RATES)
    node = problem.nodes[problem.index[next(n for n, c in costs.items() if c is lin)]]
    assert node.seconds == pytest.approx(estimate_seconds(PINNED_RATES, lin.flops, lin.bytes_read + lin.bytes_written, 1))
    assert passes.to_problem(gm).nodes[0].seconds is None


def test_auto_checkpoint_prices_plans_in_seconds():
    model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(64, 64), torch.nn.GELU())])
    x = torch.randn(32, 64)
    timed = fxckpt.auto_checkpoint(model, x, budget=0.8)
    flops = fxckpt.auto_checkpoint(model, x, budget=0.8, timing="flops")
    assert timed.problem.timed and not flops.problem.timed
    assert flops.plan.recompute_seconds is None
    expected = sum(timed.problem.nodes[timed.problem.index[n]].seconds
                   for n in fxckpt.simulate(timed.problem, timed.problem.indices(timed.plan.recompute)).recomputed)
    assert timed.plan.recompute_seconds == pytest.approx(expected) and expected > 0
    assert "est." in timed.plan.summary()
    with pytest.raises(ValueError, match="timing must be one of"):
        fxckpt.auto_checkpoint(model, x, budget=0.8, timing="wall")


def test_rates_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FXCKPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(calibrate, "_RATES", {})
    calls = []
    fake = DeviceRates("cpu test", 1e10, 1e9, 1e-6, 1e-5)
    monkeypatch.setattr(calibrate, "measure_rates", lambda d, t: calls.append(d) or fake)
    monkeypatch.setattr(calibrate, "probe_flops", lambda d, t: 1e10)  # as fast as cached: not stale
    monkeypatch.setattr(calibrate, "probe_bandwidth", lambda d, t: 1e9)
    assert calibrate.device_rates("cpu", torch.float64) == fake
    assert calibrate.device_rates("cpu", torch.float64) == fake and len(calls) == 1  # in memory
    monkeypatch.setattr(calibrate, "_RATES", {})
    assert calibrate.device_rates("cpu", torch.float64) == fake and len(calls) == 1  # from the file
    table = json.loads((tmp_path / "rates.json").read_text())
    assert list(table.values()) == [json.loads(fake.to_json())]
    calibrate.device_rates("cpu", torch.float64, refresh=True)
    assert len(calls) == 2
    with pytest.raises(TypeError, match="DeviceRates"):
        calibrate.set_device_rates({"flops_per_second": 1})


def test_micro_benchmark_gives_positive_rates():
    r = calibrate.measure_rates("cpu", torch.float32)
    assert r.flops_per_second > 0 and r.bytes_per_second > 0 and r.op_overhead_seconds > 0
    assert r.node_overhead_seconds >= 0 and r.random_per_second > 0 and "float32" in r.device
    assert set(r.kind_bytes_per_second) == set(RATED_OPS.values())  # every rated kind has a probe
    assert all(v > 0 for v in r.kind_bytes_per_second.values())


def test_profile_times_every_node_and_leaves_state_alone():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5))
    x = torch.randn(4, 8)
    gm = _annotated(model, x)
    stats = model[1].running_mean.clone()
    rng = torch.get_rng_state()
    times = calibrate.profile_nodes(gm, (x,), {}, repeats=2)
    drop = next(n.meta["fxckpt"] for n in gm.graph.nodes if "fxckpt" in n.meta and n.meta["fxckpt"].is_random)
    assert drop.random_elements == 4 * 8  # one Bernoulli draw per element of the mask
    assert set(times) == {n.name for n in gm.graph.nodes if "fxckpt" in n.meta and n.op != "placeholder"}
    assert all(t > 0 for t in times.values())
    assert torch.equal(model[1].running_mean, stats) and torch.equal(torch.get_rng_state(), rng)
    problem = passes.to_problem(gm, seconds=times)
    assert all(problem.nodes[problem.index[n]].seconds == t for n, t in times.items())


def test_rate_checks_are_arithmetic():
    quiet = DeviceRates("cpu", 1e11, 5e9, 2e-6, 3e-5, 1e8)
    assert implausible(quiet) is None
    for field, value in [("flops_per_second", 2e7), ("bytes_per_second", 1e15), ("op_overhead_seconds", 0.01),
                         ("node_overhead_seconds", 0.0)]:
        assert implausible(replace(quiet, **{field: value})).startswith(field)
    busy = DeviceRates("cpu", 3e10, 8e9, 6e-6, 1e-5, 0.0)
    assert fastest(quiet, busy) == DeviceRates("cpu", 1e11, 8e9, 2e-6, 1e-5, 1e8)
    assert fastest(busy, quiet) == fastest(quiet, busy)
    assert stale(busy, 1.5 * 3e10 * 1.01) and not stale(busy, 1.5 * 3e10) and not stale(quiet, 3e10)
    assert stale(busy, 3e10, 1.5 * 8e9 * 1.01) and not stale(busy, 3e10, 1.5 * 8e9)


class _Bench:
    """Stands in for the micro-benchmark: hands out the given measurements in turn, records calls."""

    def __init__(self, monkeypatch, tmp_path, measurements, probe, bandwidth=0.0):
        monkeypatch.setenv("FXCKPT_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(calibrate, "_RATES", {})
        self.measurements, self.calls = list(measurements), 0
        monkeypatch.setattr(calibrate, "measure_rates", self.measure)
        monkeypatch.setattr(calibrate, "probe_flops", lambda d, t: probe)
        monkeypatch.setattr(calibrate, "probe_bandwidth", lambda d, t: bandwidth)

    def measure(self, device, dtype):
        self.calls += 1
        return self.measurements.pop(0)

    def cache(self, rates):
        calibrate._write(calibrate._key(torch.device("cpu"), torch.float64), rates)


def test_rates_cached_under_load_are_measured_again_and_kept_at_their_best(tmp_path, monkeypatch):
    """The cached table (measured under load, 2e10 FLOP/s) loses to a probe at 1e11: measured again;
    what is kept is the best of both measurements, field by field, and it is cached."""
    loaded = DeviceRates("cpu", 2e10, 6e9, 4e-6, 2e-5, 5e7)
    quiet = DeviceRates("cpu", 1.2e11, 5e9, 2e-6, 3e-5, 1e8)
    bench = _Bench(monkeypatch, tmp_path, [quiet], probe=1e11)
    bench.cache(loaded)
    best = DeviceRates("cpu", 1.2e11, 6e9, 2e-6, 2e-5, 1e8)
    assert calibrate.device_rates("cpu", torch.float64) == best and bench.calls == 1
    monkeypatch.setattr(calibrate, "_RATES", {})
    assert calibrate.device_rates("cpu", torch.float64) == best and bench.calls == 1  # the probe no longer wins


def test_cached_rates_a_probe_does_not_beat_are_used(tmp_path, monkeypatch):
    cached = DeviceRates("cpu", 1e11, 5e9, 2e-6, 3e-5, 1e8)
    bench = _Bench(monkeypatch, tmp_path, [], probe=1.4e11)  # faster, but within STALE
    bench.cache(cached)
    assert calibrate.device_rates("cpu", torch.float64) == cached and bench.calls == 0


def test_implausible_rates_are_measured_again(tmp_path, monkeypatch, caplog):
    """An implausible cache is not used nor merged; an implausible measurement is repeated up to
    three times, and used with a warning if it stays implausible."""
    broken = DeviceRates("cpu", 5e7, 5e9, 2e-6, 3e-5)  # 50 MFLOP/s: no device
    fine = DeviceRates("cpu", 1e11, 5e9, 2e-6, 3e-5)
    bench = _Bench(monkeypatch, tmp_path, [broken, fine], probe=1e6)
    bench.cache(DeviceRates("cpu", 1e18, 1e20, 1e-9, 1e-9))
    assert calibrate.device_rates("cpu", torch.float64) == fine and bench.calls == 2
    bench = _Bench(monkeypatch, tmp_path / "fresh", [broken] * 3, probe=1e6)
    with caplog.at_level("WARNING", logger="fxckpt.calibrate"):
        assert calibrate.device_rates("cpu", torch.float64) == broken and bench.calls == 3
    assert "look wrong after 3 measurements (flops_per_second" in caplog.text


def test_a_gather_reads_the_rows_it_looks_up_not_its_table():
    """embedding(1000 x 64 table, 2 x 8 indices) reads 16 rows of 64 floats and the int64 indices
    (NOTE [ Gathers read their rows, not their table ]), so it is priced like a 16 x 64 copy."""
    model = torch.nn.Embedding(1000, 64)
    gm = _annotated(model, torch.randint(0, 1000, (2, 8)))
    emb = next(n.meta["fxckpt"] for n in gm.graph.nodes if "fxckpt" in n.meta and n.op == "call_function")
    assert (emb.ops, emb.bytes_read, emb.bytes_written) == (1, 4 * 16 * 64 + 8 * 16, 4 * 16 * 64)


def test_rates_whose_bandwidth_a_copy_probe_beats_are_measured_again(tmp_path, monkeypatch):
    """A cache measured under load with a plausible FLOP rate but a slow copy (1.9e9 B/s, the
    1-thread table this machine kept) is measured again when a copy probe runs at 1.6e10."""
    loaded = DeviceRates("cpu", 1.5e11, 1.9e9, 3e-6, 2.2e-4, 1.4e7)
    quiet = DeviceRates("cpu", 1.3e11, 1.6e10, 3e-6, 2.5e-5, 8.4e7)
    bench = _Bench(monkeypatch, tmp_path, [quiet], probe=1.5e11, bandwidth=1.6e10)
    bench.cache(loaded)
    assert calibrate.device_rates("cpu", torch.float64) == fastest(loaded, quiet) and bench.calls == 1


def test_annotation_counts_the_bytes_kernels_move():
    """NOTE [ Bytes an op moves ] and [ Ops with a rate of their own ]: batch norm on 2x8x4x4
    floats (1,024 B) reads its input and four 8-float vectors and writes its output, mean and
    invstd (plus num_batches_tracked += 1 on 8 B), all rated "batch_norm"; max_pool2d(3, 2, 1)
    reads 1,024 B and writes a 2x8x2x2 output and its int64 indices, rated "max_pool2d"; dropout
    on 256 B allocates its mask (no bytes), fills it without reading it, scales it in place and
    multiplies: 3 x 256 B read, 3 x 256 B written (was 5 and 4: the allocation and the fill
    counted as reading)."""
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(8), torch.nn.MaxPool2d(3, 2, 1), torch.nn.Dropout(0.5))
    gm = _annotated(model, torch.randn(2, 8, 4, 4))
    bn, pool, drop = (n.meta["fxckpt"] for n in gm.graph.nodes if "fxckpt" in n.meta and n.op == "call_module")
    assert (bn.bytes_read, bn.bytes_written) == (1024 + 4 * 32 + 8, 1024 + 2 * 32 + 8)
    assert bn.rated_bytes == (("batch_norm", 1024 + 4 * 32 + 1024 + 2 * 32),)
    assert (pool.ops, pool.bytes_read, pool.bytes_written) == (1, 1024, 64 * 4 + 64 * 8)
    assert pool.rated_bytes == (("max_pool2d", 1024 + 64 * 12),)
    assert (drop.ops, drop.bytes_read, drop.bytes_written, drop.rated_bytes) == (4, 3 * 256, 3 * 256, ())


def test_rated_kinds_and_draws_are_added_to_the_roofline():
    """A node's rated bytes move at their kind's rate (else at the bandwidth), beside the
    roofline of its other bytes and FLOPs; so do its random draws."""
    r = DeviceRates("toy", 1e12, 1e10, 1e-6, 1e-5, 1e8, kind_bytes_per_second={"max_pool2d": 1e9})
    pool = NodeCost(flops=10**6, ops=1, bytes_read=4 * 10**6, bytes_written=3 * 10**6,
                    rated_bytes=(("max_pool2d", 7 * 10**6),))
    assert node_seconds(r, pool) == pytest.approx(1e-6 + 7e-3 + 1e-6 + 1e-5)  # FLOPs, rated bytes, overheads
    unmeasured = replace(pool, rated_bytes=(("batch_norm", 7 * 10**6),))
    assert node_seconds(r, unmeasured) == pytest.approx(1e-6 + 7e-4 + 1e-6 + 1e-5)  # at the bandwidth
    drop = NodeCost(flops=0, ops=4, bytes_read=3 * 10**6, bytes_written=3 * 10**6, random_elements=10**6)
    assert node_seconds(r, drop) == pytest.approx(6e-4 + 1e-2 + 4e-6 + 1e-5)
    assert node_seconds(r, drop) == estimate_seconds(r, 0, 6 * 10**6, 4, 10**6)
    with pytest.raises(ValueError, match="kind_bytes_per_second"):
        DeviceRates("bad", 1e12, 1e10, 0.0, kind_bytes_per_second={"max_pool2d": 0})
    assert DeviceRates.from_json(r.to_json()) == r
    assert implausible(replace(r, kind_bytes_per_second={"max_pool2d": 1e3})).startswith("kind_bytes_per_second")
    other = replace(r, kind_bytes_per_second={"max_pool2d": 2e9, "batch_norm": 3e9})
    assert fastest(r, other).kind_bytes_per_second == {"batch_norm": 3e9, "max_pool2d": 2e9}


def _pooling_cnn():
    def block(c):
        return [torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.BatchNorm2d(c), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 1, 1)]
    torch.manual_seed(0)
    return torch.nn.Sequential(*block(8), *block(8), *block(8), torch.nn.Conv2d(8, 8, 3, padding=1)), torch.randn(2, 8, 16, 16)


def test_a_slow_kind_is_not_recomputed_where_a_cheaper_node_frees_the_bytes():
    """Three conv-bn-relu-maxpool blocks at 90% of their peak: priced at the bandwidth, a max-pool
    is the cheapest node to recompute; at the rates one CPU thread measured (max_pool2d at 1/20 of
    the bandwidth, batch_norm at 1/4), the plan recomputes the convolutions instead."""
    model, x = _pooling_cnn()
    gm = _annotated(model, x)
    pools = {n.name for n in gm.graph.nodes if "fxckpt" in n.meta and dict(n.meta["fxckpt"].rated_bytes).get("max_pool2d")}
    convs = {n.name for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), torch.nn.Conv2d)}
    assert len(pools) == 3 and len(convs) == 4
    measured = replace(PINNED_RATES, kind_bytes_per_second={"max_pool2d": PINNED_RATES.bytes_per_second / 20,
                                                            "batch_norm": PINNED_RATES.bytes_per_second / 4})
    plans = {}
    for name, rates in (("bandwidth", PINNED_RATES), ("measured", measured)):
        problem = passes.to_problem(gm, rates=rates)
        plans[name] = fxckpt.solve(problem, int(0.9 * fxckpt.simulate(problem).peak_bytes))
    assert plans["bandwidth"].recompute & pools
    assert not plans["measured"].recompute & pools and plans["measured"].recompute <= convs
