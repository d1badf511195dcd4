"""Smoke tests of the benchmark harness (no speed assertions: a benchmark is not a timed test)."""

import json

import pytest

from bnjax.bench import _suite as bench
from bnjax.bench._parallel import ParallelCase, run_cpu_subprocess
from bnjax.bench._timing import time_interleaved


def test_time_interleaved_counts_every_call():
    calls = {"a": 0, "b": 0}

    def make(name):
        def f():
            calls[name] += 1
            return 0
        return f

    t = time_interleaved({"a": make("a"), "b": make("b")}, rounds=3, calls=4, warmup=2)
    assert calls == {"a": 2 + 3 * 4, "b": 2 + 3 * 4}
    assert set(t["a"]) == {"median_s", "min_s", "max_s"} and t["a"]["min_s"] <= t["a"]["median_s"] <= t["a"]["max_s"]


def test_bench_steps_and_bn_layer_tiny():
    rows = bench.bench_steps([bench.Workload("tiny", 12, (8, 8), 6)], rounds=1, calls=1)
    (r,) = rows
    for k in ("bnjax_ms", "purejax_ms", "flax_linen_ms", "bnjax_vs_flax", "bnjax_vs_purejax"):
        assert r[k] > 0
    (b,) = bench.bench_bn_layer(((16, 8),), rounds=1, calls=1)
    assert b["analytic_us"] > 0 and b["autodiff_us"] > 0


@pytest.mark.slow
def test_run_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = bench.run_bench(quick=True, out=out, log=lambda s: None)
    saved = json.loads(out.read_text())
    assert saved["by_device"].keys() == result["by_device"].keys()
    (dev,) = saved["by_device"].values()
    assert {"steps", "epoch", "ensemble", "bf16", "bn_layer", "parallel"} <= set(dev)
    rows = dev["parallel"]["rows"]
    assert [(r["kind"], r["num_members"], r["shared_batches"]) for r in rows] == [
        ("members", 16, False), ("members", 16, True), ("data", 1, False), ("data", 16, False)]
    assert all(r["throughput_ratio"] > 0 for r in rows) and dev["bf16"][0]["bf16_vs_f32"] > 0


def test_bf16_row_tiny():
    (r,) = bench.bench_bf16([bench.Workload("tiny", 12, (8, 8), 6)], rounds=1, calls=1)
    assert r["workload"] == "tiny" and r["f32_ms"] > 0 and r["bf16_ms"] > 0
    assert r["bf16_vs_f32"] == pytest.approx(r["bf16_ms"] / r["f32_ms"])


def test_parallel_subprocess_two_cpu_devices_tiny(monkeypatch):
    # An XLA_FLAGS already set is kept and the device count appended after it (the last one wins).
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    cases = [ParallelCase("members", 2, 2, 1, False), ParallelCase("data", 2, 1, 2, False)]
    rows = run_cpu_subprocess(in_features=12, hidden=(8, 8), batch=6, steps=3, rounds=1, cases=cases, timeout=120)
    assert [(r["kind"], r["members"], r["data"], r["devices"]) for r in rows] == [("members", 2, 1, 2),
                                                                                  ("data", 1, 2, 2)]
    for r in rows:
        assert r["one_device_ms"] > 0 and r["parallel_ms"] > 0
        assert r["throughput_ratio"] == pytest.approx(r["one_device_ms"] / r["parallel_ms"])
        assert r["parallel_ex_per_s"] == pytest.approx(2 * 3 * 6 / (r["parallel_ms"] / 1e3))
    # Both rows compare against the same single-device program of the 2-member ensemble.
    assert rows[0]["one_device_ms"] == rows[1]["one_device_ms"]


def test_parallel_subprocess_failure_shows_the_child_error():
    with pytest.raises(RuntimeError, match=r"parallel benchmark process failed(.|\n)*no_such_option"):
        run_cpu_subprocess(no_such_option=1, timeout=120)
