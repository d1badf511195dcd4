"""``bnjax bench``: every part on every device, printed as tables and saved as JSON.

Everything is timed in one process, interleaved round by round (:func:`bnjax.bench._timing.time_interleaved`),
and reported as medians over rounds plus ratios measured within each round. On a machine with an accelerator
the suite runs on the CPU and on the accelerator, and every figure names its device. The parallel part (an
ensemble sharded over two devices against one device) needs two CPU devices, which JAX fixes when it starts:
on the CPU it runs in a child process of its own (:mod:`bnjax.bench._parallel`), its programs still
interleaved there.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from bnjax._io import atomic_write
from bnjax._machine import load_average
from bnjax.bench._epoch import FUSIONS_COUNTED, bench_reference_epoch
from bnjax.bench._layer import BN_SHAPES, PASSES_COUNTED, bench_bn_layer
from bnjax.bench._members import bench_init, bench_member_epochs
from bnjax.bench._parallel import parallel_part
from bnjax.bench._steps import bench_bf16, bench_ensemble, bench_epoch, bench_steps
from bnjax.bench._workloads import CS231N_B50, FMNIST_B50, STEP_WORKLOADS, WIDE_B256

NOTES = {
    "steps": "one jitted training step per Python call: per-call dispatch included (on an accelerator it dominates "
             "a small model's step); the engine's own speed is reference_epoch",
    "reference_epoch": "bnjax's compiled epoch (make_epoch_fn, K=1) / flax.linen + optax in one jitted lax.scan that "
                       "permutes the training set on device and gathers each batch; ratios within each round. "
                       f"fusions: {FUSIONS_COUNTED}",
    "epoch": "bnjax's lax.scan epoch vs a Python loop of its jitted steps",
    "ensemble": "vmapped K-member epoch per member-step, vs one model's jitted steps from Python",
    "bf16": "bnjax's step with compute_dtype=bfloat16 vs float32",
    "parallel": "an ensemble's epoch sharded over 2 devices vs 1 device",
    "bn_layer": f"batch norm train-mode fwd+bwd (VJP against a fixed cotangent), float32; passes: {PASSES_COUNTED}",
    "members": "init: init_ensemble of K members vs one jitted jax.random.normal of as many numbers; epochs: a "
               "K-member epoch, then make_eval_fn, then one jax.device_get of the losses and metrics, each part "
               "synced and timed",
}


def _settings(platform_name: str, quick: bool) -> dict[str, Any]:
    """Sizes of each part: ``quick`` is a smoke run; a CPU takes fewer steps than an accelerator."""
    cpu = platform_name == "cpu"
    if quick:
        # The wide reference epoch takes 4 steps: the engine's scan runs 2 per iteration, and XLA removes a loop
        # of one trip, which would leave no loop body to count fusions in.
        return {"rounds": 2, "calls": 5, "steps": STEP_WORKLOADS[:1], "reference": ((FMNIST_B50, 20), (WIDE_B256, 4)),
                "epoch_steps": 20, "ensemble": (1, 4), "ensemble_steps": 5, "bf16": (CS231N_B50,),
                "bn_shapes": BN_SHAPES[:1], "init": (16,), "member_epochs": (16,)}
    return {"rounds": 7, "calls": 30, "steps": STEP_WORKLOADS,
            "reference": ((FMNIST_B50, 300), (WIDE_B256, 20)) if cpu else ((FMNIST_B50, 1000), (WIDE_B256, 190)),
            "epoch_steps": 100, "ensemble": (1, 4, 16, 64), "ensemble_steps": 20, "bf16": (CS231N_B50, WIDE_B256),
            "bn_shapes": BN_SHAPES, "init": (16, 1024), "member_epochs": (16, 256, 1024)}


def _device_part(dev: Any, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    s = _settings(dev.platform, quick)
    rounds, calls = s["rounds"], s["calls"]
    r: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def part(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        r[name] = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 1)
        return r[name]

    part("steps", bench_steps, s["steps"], rounds=rounds, calls=calls)
    log("steps (one jitted call per step: per-call dispatch included)\n" + _table(
        r["steps"], ["workload", "bnjax_ms", "purejax_ms", "flax_linen_ms", "bnjax_vs_flax", "bnjax_vs_purejax"]))
    part("reference_epoch", bench_reference_epoch, s["reference"], rounds=rounds)
    log("reference epoch (compiled epoch vs hand-written flax.linen lax.scan)\n" + _table(
        [{**row, "bnjax_fusions": row["fusions"]["bnjax"], "flax_fusions": row["fusions"]["flax_scan"]}
         for row in r["reference_epoch"]],
        ["workload", "steps", "bnjax_epoch_ms", "flax_scan_epoch_ms", "bnjax_vs_flax_scan", "bnjax_fusions",
         "flax_fusions"]))
    part("epoch", bench_epoch, rounds=rounds, steps=s["epoch_steps"])
    log(_table([r["epoch"]], ["workload", "steps", "scan_epoch_ms", "python_loop_ms", "throughput_ratio"]))
    part("ensemble", bench_ensemble, s["ensemble"], rounds=rounds, steps=s["ensemble_steps"])
    log(_table(r["ensemble"], ["K", "shared_batches", "member_step_ms", "single_step_ms", "vs_single_step",
                               "vs_K1_epoch"]))
    part("bf16", bench_bf16, s["bf16"], rounds=rounds, calls=calls)
    log(_table(r["bf16"], ["workload", "f32_ms", "bf16_ms", "bf16_vs_f32"]))
    part("parallel", parallel_part, dev, quick=quick, log=log)
    if r["parallel"]["rows"]:
        log(_table(r["parallel"]["rows"], ["kind", "num_members", "members", "data", "shared_batches",
                                           "one_device_ms", "parallel_ms", "one_device_ex_per_s",
                                           "parallel_ex_per_s", "throughput_ratio"]))
    else:
        log(f"parallel: skipped ({r['parallel']['skipped']})\n")
    part("bn_layer", bench_bn_layer, s["bn_shapes"], rounds=rounds, calls=calls)
    skipped = [list(shape) for shape in BN_SHAPES if shape not in s["bn_shapes"]]
    if skipped:
        r["bn_layer_skipped"] = {"shapes": skipped, "why": "--quick"}
    log("BN layer fwd+bwd (passes: (N,C) arrays read/written)\n" + _table(
        [{**row, **{f"{k}_rw": f"{v['reads']}/{v['writes']}" for k, v in row["passes"].items()}}
         for row in r["bn_layer"]],
        ["shape", "analytic_us", "autodiff_us", "flax_us", "analytic_vs_autodiff", "analytic_vs_flax",
         "analytic_rw", "flax_rw"]))
    part("members", lambda: {"init": bench_init(s["init"], rounds=rounds),
                             "epochs": bench_member_epochs(s["member_epochs"], rounds=3)})
    log(_table(r["members"]["init"], ["K", "random_numbers", "init_first_s", "init_s", "normal_s", "init_vs_normal"]))
    log(_table(r["members"]["epochs"], ["K", "steps", "epoch_ms", "eval_ms", "transfer_ms", "member_step_us",
                                        "epoch_member_step_us", "transfer_share"]))
    r["seconds"] = seconds
    return r


def run_bench(*, quick: bool = False, devices: list[Any] | str | None = None, out: str | Path | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every benchmark on each device, prints tables and writes JSON to ``out`` (a file path) when given.
    ``quick`` shortens every part. ``devices``: a list of JAX devices, ``"cpu"``, ``"accelerator"`` (the default
    device, when it is not a CPU), or None (default): the CPU, plus the default device if it is not a CPU.

    Parts per device (``NOTES`` says what each measures; the JSON carries them as ``notes``): ``steps``,
    ``reference_epoch``, ``epoch``, ``ensemble``, ``bf16``, ``parallel``, ``bn_layer``, ``members``."""
    accelerator = [jax.devices()[0]] if jax.devices()[0].platform != "cpu" else []
    if devices == "accelerator" and not accelerator:
        raise ValueError("bench: --devices accelerator, but JAX sees no accelerator (its devices are CPUs).")
    devices = {None: [jax.devices("cpu")[0], *accelerator], "cpu": [jax.devices("cpu")[0]],
               "accelerator": accelerator}.get(devices, devices) if not isinstance(devices, list) else devices
    result: dict[str, Any] = {
        "jax": jax.__version__, "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick, "cpu_count": os.cpu_count(),
        "load_average_start": load_average(), "notes": NOTES, "by_device": {},
    }
    t0 = time.perf_counter()
    for dev in devices:
        name = f"{dev.platform}:{getattr(dev, 'device_kind', '')}".rstrip(":")
        log(f"== device {name} ==")
        with jax.default_device(dev):
            result["by_device"][name] = _device_part(dev, quick, log)
    result["load_average_end"] = load_average()
    result["wall_s"] = time.perf_counter() - t0
    log(f"load average (1, 5, 15 min): {result['load_average_start']} at the start, {result['load_average_end']} "
        f"at the end; {result['wall_s']:.0f} s")
    if out is not None:
        log(f"saved {atomic_write(out, json.dumps(result, indent=2))}")
    return result


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
    if isinstance(v, dict) and {"median", "min", "max"} <= set(v):  # a ratio within rounds
        return f"{v['median']:.3f} [{v['min']:.3f}-{v['max']:.3f}]"
    if isinstance(v, dict) and "fusions" in v:  # fusion counts: program/loop body
        return f"{v['fusions']}/{v.get('loop_fusions', '-')}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(cols, widths))]
    lines += ["  ".join(v.ljust(wd) for v, wd in zip(row, widths)) for row in cells]
    return "\n".join(lines) + "\n"
