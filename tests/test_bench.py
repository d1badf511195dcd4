"""Smoke tests of the benchmark harness (no speed assertions: a benchmark is not a timed test)."""

import json

import pytest

from bnjax.bench import _epoch, _layer, _members, _steps, _suite
from bnjax.bench._parallel import ParallelCase, run_cpu_subprocess
from bnjax.bench._timing import ratio, time_interleaved
from bnjax.bench._workloads import Workload

TINY = Workload("tiny", 12, (8, 8), 6)
RATIO = {"median", "min", "max"}


def test_time_interleaved_counts_every_call():
    calls = {"a": 0, "b": 0}

    def make(name):
        def f():
            calls[name] += 1
            return 0
        return f

    t = time_interleaved({"a": make("a"), "b": make("b")}, rounds=3, calls=4, warmup=2)
    assert calls == {"a": 2 + 3 * 4, "b": 2 + 3 * 4}
    assert set(t["a"]) == {"median_s", "min_s", "max_s", "rounds_s"} and len(t["a"]["rounds_s"]) == 3
    assert t["a"]["min_s"] <= t["a"]["median_s"] <= t["a"]["max_s"]


def test_ratio_pairs_rounds():
    t = {"a": {"rounds_s": [2.0, 3.0, 8.0]}, "b": {"rounds_s": [1.0, 1.0, 2.0]}}
    assert ratio(t, "a", "b") == {"median": 3.0, "min": 2.0, "max": 4.0}


def test_bench_steps_tiny():
    (r,) = _steps.bench_steps([TINY], rounds=1, calls=1)
    for k in ("bnjax_ms", "purejax_ms", "flax_linen_ms", "bnjax_vs_flax", "bnjax_vs_purejax"):
        assert r[k] > 0


def test_reference_epoch_tiny_has_times_ratio_and_fusions():
    (r,) = _epoch.bench_reference_epoch([(TINY, 4)], rounds=1)  # two iterations: XLA removes a one-trip loop
    assert (r["workload"], r["steps"], r["sizes"]) == ("tiny", 4, [12, 8, 8, 10])
    assert r["bnjax_epoch_ms"] > 0 and r["flax_scan_epoch_ms"] > 0 and set(r["bnjax_vs_flax_scan"]) == RATIO
    for name in ("bnjax", "flax_scan"):
        f = r["fusions"][name]
        assert f["loops"] == 1 and 0 < f["loop_fusions"] <= f["fusions"], (name, f)


def test_reference_epoch_refuses_a_scan_of_one_iteration():
    with pytest.raises(ValueError, match="tiny needs at least 4 steps"):
        _epoch.bench_reference_epoch([(TINY, 3)], rounds=1)


def test_bn_layer_tiny_has_three_programs_ratios_and_passes():
    (r,) = _layer.bench_bn_layer(((16, 8),), rounds=1, calls=1)
    assert r["shape"] == [16, 8] and r["analytic_us"] > 0 and r["autodiff_us"] > 0 and r["flax_us"] > 0
    assert set(r["analytic_vs_autodiff"]) == set(r["analytic_vs_flax"]) == RATIO
    for name in ("analytic", "autodiff", "flax"):
        p = r["passes"][name]
        # Every fwd+bwd reads x and dy and writes y and dx.
        assert p["reads"] >= 2 and p["writes"] >= 2 and p["kernels"] >= 2, (name, p)


def test_members_tiny_init_and_epoch_rows():
    (i,) = _members.bench_init([2], rounds=1, w=TINY)
    assert i["K"] == 2 and i["random_numbers"] == 2 * (12 * 8 + 8 * 8 + 8 * 10)  # the dense weights
    assert i["init_first_s"] > 0 and i["init_s"] > 0 and i["normal_s"] > 0 and set(i["init_vs_normal"]) == RATIO
    (e,) = _members.bench_member_epochs([2], rounds=1, steps=2, eval_examples=10, w=TINY)
    assert (e["K"], e["steps"], e["eval_examples"]) == (2, 2, 2 * 6 + 10)
    assert e["epoch_ms"] > 0 and e["eval_ms"] > 0 and e["transfer_ms"] > 0 and 0 < e["transfer_share"] < 1
    assert e["epoch_member_step_us"] == pytest.approx(e["epoch_ms"] * 1e3 / (2 * 2))
    assert e["member_step_us"] > e["epoch_member_step_us"]


@pytest.mark.slow
def test_run_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = _suite.run_bench(quick=True, out=out, log=lambda s: None)
    saved = json.loads(out.read_text())
    assert saved["by_device"].keys() == result["by_device"].keys()
    parts = {"steps", "reference_epoch", "epoch", "ensemble", "bf16", "parallel", "bn_layer", "members"}
    assert set(saved["notes"]) == parts and saved["wall_s"] > 0
    (dev,) = saved["by_device"].values()
    assert parts | {"bn_layer_skipped", "seconds"} == set(dev) and set(dev["seconds"]) == parts
    assert [r["workload"] for r in dev["reference_epoch"]] == ["fmnist_b50", "wide_b256"]
    for r in dev["reference_epoch"]:
        assert set(r["bnjax_vs_flax_scan"]) == RATIO and r["fusions"]["bnjax"]["loops"] == 1
        assert r["fusions"]["flax_scan"]["loops"] == 1
    (bn,) = dev["bn_layer"]
    assert bn["shape"] == [256, 1024] and set(bn["passes"]) == {"analytic", "autodiff", "flax"}
    assert dev["bn_layer_skipped"]["shapes"] == [[4096, 1024], [65536, 1024], [262144, 256]]
    assert [r["K"] for r in dev["members"]["init"]] == [r["K"] for r in dev["members"]["epochs"]] == [16]
    rows = dev["parallel"]["rows"]
    assert [(r["kind"], r["num_members"], r["shared_batches"]) for r in rows] == [
        ("members", 16, False), ("members", 16, True), ("data", 1, False), ("data", 16, False)]
    assert all(r["throughput_ratio"] > 0 for r in rows) and dev["bf16"][0]["bf16_vs_f32"] > 0


def test_bf16_row_tiny():
    (r,) = _steps.bench_bf16([TINY], rounds=1, calls=1)
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
