"""``bnjax bench``: steady-state speed of bnjax against a hand-written JAX step and flax.linen.

Everything is timed in one process, interleaved round by round (:func:`time_interleaved`), and reported
as medians over rounds plus ratios measured in the same run. On a machine with an accelerator the suite
runs on the CPU and on the accelerator, and every figure names its device. The parallel part (an ensemble
sharded over two devices against one device) needs two CPU devices, which JAX fixes when it starts: on the
CPU it runs in a child process of its own (:mod:`bnjax.bench._parallel`), its two programs still
interleaved there.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bnjax.nn import MLPSpec, batch_norm, batch_norm_init
from bnjax._machine import load_average
from bnjax.bench._parallel import bench_parallel, run_cpu_subprocess
from bnjax.bench._refs import flax_linen_step, purejax_step
from bnjax.bench._timing import stateful, time_interleaved
from bnjax.train import TrainConfig, init_ensemble, init_train_state, make_epoch_fn, make_train_step, resolve_members


@dataclass(frozen=True)
class Workload:
    name: str
    in_features: int
    hidden: tuple[int, ...]
    batch: int


STEP_WORKLOADS = (
    Workload("cs231n_b50", 3072, (100,) * 5, 50),
    Workload("cs231n_b256", 3072, (100,) * 5, 256),
    Workload("fmnist_b50", 784, (100,) * 5, 50),
    Workload("fmnist_b256", 784, (100,) * 5, 256),
    Workload("wide_b256", 1024, (1024,) * 3, 256),
)


def _batch(w: Workload, n: int | None = None) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    n = w.batch if n is None else n
    return jnp.asarray(rng.standard_normal((n, w.in_features), np.float32)), jnp.asarray(rng.integers(0, 10, n))


def _spec_cfg(w: Workload) -> tuple[MLPSpec, TrainConfig]:
    spec = MLPSpec(in_features=w.in_features, hidden=w.hidden, num_classes=10, norm="batch", init="he")
    return spec, TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=w.batch)



def _step_loop(spec: MLPSpec, cfg: TrainConfig, x: jax.Array, y: jax.Array, steps: int) -> Callable[[], Any]:
    """A timing closure: ``steps`` jitted single-model steps from Python over pre-sliced on-device batches."""
    step = jax.jit(make_train_step(spec, cfg, steps_per_epoch=steps), donate_argnums=0)
    xb, yb = x.reshape(steps, cfg.batch_size, -1), y.reshape(steps, cfg.batch_size)
    batches = [(xb[i], yb[i]) for i in range(steps)]
    box = [init_train_state(spec, cfg, seed=0)]

    def loop():
        out = None
        for b in batches:
            box[0], out = step(box[0], b)
        return out

    return loop


def bench_steps(workloads=STEP_WORKLOADS, *, rounds: int, calls: int) -> list[dict[str, Any]]:
    """Training-step time of bnjax vs hand-written JAX vs flax.linen (BN MLP, Adam) per workload."""
    rows = []
    for w in workloads:
        x, y = _batch(w)
        spec, cfg = _spec_cfg(w)
        step = jax.jit(make_train_step(spec, cfg, steps_per_epoch=1), donate_argnums=0)
        fns = {"bnjax": stateful(step, init_train_state(spec, cfg, seed=0), (x, y))}
        sizes = (w.in_features, *w.hidden, 10)
        ref, ref_state = purejax_step(jax.random.key(0), sizes)
        fns["purejax"] = stateful(ref, ref_state, x, y)
        fl, fl_state = flax_linen_step(jax.random.key(0), sizes)
        fns["flax_linen"] = stateful(fl, fl_state, x, y)
        t = time_interleaved(fns, rounds=rounds, calls=calls)
        rows.append({
            "workload": w.name, "batch": w.batch, "in_features": w.in_features, "hidden": list(w.hidden),
            **{f"{k}_ms": v["median_s"] * 1e3 for k, v in t.items()},
            "bnjax_vs_flax": t["bnjax"]["median_s"] / t["flax_linen"]["median_s"],
            "bnjax_vs_purejax": t["bnjax"]["median_s"] / t["purejax"]["median_s"],
        })
    return rows


def bench_epoch(*, rounds: int, steps: int = 100) -> dict[str, Any]:
    """One epoch of the 784-input BN MLP at batch 50: bnjax's on-device ``lax.scan`` vs a Python loop of
    jitted steps over the same pre-sliced on-device batches."""
    w = Workload("fmnist_b50", 784, (100,) * 5, 50)
    spec, cfg = _spec_cfg(w)
    x, y = _batch(w, steps * w.batch)
    epoch = jax.jit(make_epoch_fn(spec, cfg, num_members=1, num_train=steps * w.batch), donate_argnums=0)
    states = init_ensemble(spec, cfg, resolve_members(spec, cfg, None))
    key = jax.random.key_data(jax.random.key(0))
    t = time_interleaved({"scan_epoch": stateful(epoch, states, x, y, key),
                          "python_loop": _step_loop(spec, cfg, x, y, steps)},
                         rounds=rounds, calls=1, warmup=1)
    scan, py = t["scan_epoch"]["median_s"], t["python_loop"]["median_s"]
    return {"workload": w.name, "steps": steps, "scan_epoch_ms": scan * 1e3, "python_loop_ms": py * 1e3,
            "throughput_ratio": py / scan}


def bench_ensemble(ks=(1, 4, 16, 64), *, rounds: int, steps: int = 20) -> list[dict[str, Any]]:
    """Vmapped ensembles of the CS231n BN MLP (batch 50), all interleaved in one timing loop.

    Per member-step time of a K-member epoch program (members with their own batch order, and with a shared
    one), against ``single_step``: one model trained by a Python loop of jitted steps, i.e. what K separate
    runs would cost per model-step.
    """
    w = Workload("cs231n_b50", 3072, (100,) * 5, 50)
    spec, cfg = _spec_cfg(w)
    x, y = _batch(w, steps * w.batch)
    key = jax.random.key_data(jax.random.key(0))
    fns: dict[str, Callable[[], Any]] = {}
    for shared in (False, True):
        for k in ks:
            members = resolve_members(spec, cfg, {"seed": list(range(k))})
            epoch = jax.jit(make_epoch_fn(spec, cfg, num_members=k, num_train=steps * w.batch,
                                          shared_batches=shared), donate_argnums=0)
            fns[f"{k}:{shared}"] = stateful(epoch, init_ensemble(spec, cfg, members), x, y, key)
    fns["single_step"] = _step_loop(spec, cfg, x, y, steps)
    t = time_interleaved(fns, rounds=rounds, calls=1, warmup=1)
    single_ms = t.pop("single_step")["median_s"] / steps * 1e3
    base = t["1:False"]["median_s"] / steps * 1e3
    rows = []
    for name, v in t.items():
        k, shared = name.split(":")
        per = v["median_s"] / (int(k) * steps) * 1e3
        rows.append({"K": int(k), "shared_batches": shared == "True", "member_step_ms": per,
                     "vs_single_step": per / single_ms, "vs_K1_epoch": per / base, "single_step_ms": single_ms})
    return rows


def bench_bf16(workloads=(STEP_WORKLOADS[0], STEP_WORKLOADS[4]), *, rounds: int, calls: int
               ) -> list[dict[str, Any]]:
    """bnjax's training step with ``TrainConfig(compute_dtype="bfloat16")`` (bf16 matmuls and activations,
    float32 parameters, optimizer and BN statistics) against float32, interleaved; ``bf16_vs_f32`` is the
    time ratio (below 1: bf16 is faster)."""
    rows = []
    for w in workloads:
        x, y = _batch(w)
        spec, cfg = _spec_cfg(w)
        fns = {}
        for dtype in ("float32", "bfloat16"):
            c = cfg.replace(compute_dtype=dtype)
            step = jax.jit(make_train_step(spec, c, steps_per_epoch=1), donate_argnums=0)
            fns[dtype] = stateful(step, init_train_state(spec, c, seed=0), (x, y))
        t = time_interleaved(fns, rounds=rounds, calls=calls)
        f32, bf16 = t["float32"]["median_s"], t["bfloat16"]["median_s"]
        rows.append({"workload": w.name, "batch": w.batch, "f32_ms": f32 * 1e3, "bf16_ms": bf16 * 1e3,
                     "bf16_vs_f32": bf16 / f32})
    return rows


def parallel_part(dev: Any, *, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The parallel rows for the platform of ``dev``: the 16-member CS231n ensemble (batch 50) sharded over
    two devices vs one, own and shared batch order, and data parallel over two devices (one member, and the
    ensemble). On the CPU in a child process with two CPU devices; on an accelerator over two of its devices,
    or ``{"skipped": reason}`` when it has one."""
    options = {"steps": 5 if quick else 20, "rounds": 2 if quick else 7}
    if dev.platform == "cpu":
        cache = jax.config.jax_compilation_cache_dir
        rows = run_cpu_subprocess(compile_cache=cache, **options)
        where = f"2 CPU devices (--xla_force_host_platform_device_count=2) on {os.cpu_count()} cores"
    else:
        same = jax.devices(dev.platform)
        if len(same) < 2:
            return {"skipped": f"one {dev.platform} device: sharding needs two", "rows": []}
        with jax.default_device(same[0]):
            rows = bench_parallel(same[:2], **options)
        where = f"2 {dev.platform} devices"
    log(f"parallel: {where}, one epoch program of {options['steps']} steps, 2 devices vs 1")
    return {"where": where, **options, "rows": rows}


def bench_bn_layer(shapes=((256, 1024), (4096, 1024)), *, rounds: int, calls: int) -> list[dict[str, Any]]:
    """Batch norm alone, train-mode forward + backward (VJP against a fixed cotangent), analytic vs autodiff."""
    rows = []
    for n, c in shapes:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((n, c), np.float32))
        dy = jnp.asarray(rng.standard_normal((n, c), np.float32))
        params, stats = batch_norm_init(c)

        def make(grad):
            def f(x, p):
                y, vjp = jax.vjp(lambda x, p: batch_norm(p, stats, x, True, grad=grad)[0], x, p)
                return y, vjp(dy)

            fj = jax.jit(f)
            return lambda: fj(x, params)

        t = time_interleaved({"analytic": make("analytic"), "autodiff": make("autodiff")}, rounds=rounds, calls=calls)
        a, d = t["analytic"]["median_s"], t["autodiff"]["median_s"]
        rows.append({"shape": [n, c], "analytic_us": a * 1e6, "autodiff_us": d * 1e6, "analytic_vs_autodiff": a / d})
    return rows


def run_bench(*, quick: bool = False, devices: list[Any] | None = None, out: str | Path | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every benchmark on each device (default: the CPU, plus the default device if it is not a CPU),
    prints tables and writes JSON to ``out`` (a file path) when given. ``quick`` shortens every part.

    Parts per device: ``steps`` (bnjax vs hand-written JAX vs flax.linen), ``epoch`` (``lax.scan`` vs a Python
    loop), ``ensemble`` (vmapped K members), ``bf16`` (bfloat16 vs float32 step), ``parallel`` (an ensemble on
    two devices vs one, :func:`parallel_part`), ``bn_layer`` (analytic vs autodiff backward)."""
    if devices is None:
        devices = [jax.devices("cpu")[0]]
        if jax.devices()[0].platform != "cpu":
            devices.append(jax.devices()[0])
    rounds, calls = (2, 5) if quick else (7, 30)
    result: dict[str, Any] = {
        "jax": jax.__version__, "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick, "cpu_count": os.cpu_count(),
        "load_average_start": load_average(), "by_device": {},
    }
    for dev in devices:
        name = f"{dev.platform}:{getattr(dev, 'device_kind', '')}".rstrip(":")
        log(f"== device {name} ==")
        with jax.default_device(dev):
            r: dict[str, Any] = {}
            r["steps"] = bench_steps(STEP_WORKLOADS[:1] if quick else STEP_WORKLOADS, rounds=rounds, calls=calls)
            log(_table(r["steps"], ["workload", "bnjax_ms", "purejax_ms", "flax_linen_ms", "bnjax_vs_flax",
                                    "bnjax_vs_purejax"]))
            r["epoch"] = bench_epoch(rounds=rounds, steps=20 if quick else 100)
            log(_table([r["epoch"]], ["workload", "steps", "scan_epoch_ms", "python_loop_ms", "throughput_ratio"]))
            r["ensemble"] = bench_ensemble((1, 4) if quick else (1, 4, 16, 64), rounds=rounds, steps=5 if quick else 20)
            log(_table(r["ensemble"], ["K", "shared_batches", "member_step_ms", "single_step_ms", "vs_single_step",
                                       "vs_K1_epoch"]))
            r["bf16"] = bench_bf16(STEP_WORKLOADS[:1] if quick else (STEP_WORKLOADS[0], STEP_WORKLOADS[4]),
                                   rounds=rounds, calls=calls)
            log(_table(r["bf16"], ["workload", "f32_ms", "bf16_ms", "bf16_vs_f32"]))
            r["parallel"] = parallel_part(dev, quick=quick, log=log)
            if r["parallel"]["rows"]:
                log(_table(r["parallel"]["rows"], ["kind", "num_members", "members", "data", "shared_batches",
                                                   "one_device_ms", "parallel_ms", "one_device_ex_per_s",
                                                   "parallel_ex_per_s", "throughput_ratio"]))
            else:
                log(f"parallel: skipped ({r['parallel']['skipped']})\n")
            r["bn_layer"] = bench_bn_layer(((256, 1024),) if quick else ((256, 1024), (4096, 1024)),
                                           rounds=rounds, calls=calls)
            log(_table(r["bn_layer"], ["shape", "analytic_us", "autodiff_us", "analytic_vs_autodiff"]))
        result["by_device"][name] = r
    result["load_average_end"] = load_average()
    log(f"load average (1, 5, 15 min): {result['load_average_start']} at the start, {result['load_average_end']} "
        f"at the end")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)
        log(f"saved {out}")
    return result


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
        return str(v)

    cells = [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(cols, widths))]
    lines += ["  ".join(v.ljust(wd) for v, wd in zip(row, widths)) for row in cells]
    return "\n".join(lines) + "\n"
