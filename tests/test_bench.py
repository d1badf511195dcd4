"""Smoke tests of the benchmark harness (no speed assertions: a benchmark is not a timed test)."""

import json

import pytest

from bnjax.run import bench
from bnjax.run._timing import time_interleaved


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
    assert {"steps", "epoch", "ensemble", "bn_layer"} <= set(dev)
