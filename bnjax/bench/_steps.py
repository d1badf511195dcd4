"""The per-step rows of ``bnjax bench``: a training step called once per step from Python (bnjax, a hand-written
JAX step, flax.linen), i.e. per-call dispatch included, which on an accelerator dominates a small model's step;
the scanned epoch against a Python loop of jitted steps; vmapped ensembles; bfloat16 against float32."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from bnjax.bench._refs import flax_linen_step, purejax_step
from bnjax.bench._timing import stateful, time_interleaved
from bnjax.bench._workloads import CS231N_B50, FMNIST_B50, STEP_WORKLOADS, WIDE_B256, Workload, spec_cfg, synthetic
from bnjax.nn import MLPSpec
from bnjax.train import TrainConfig, init_ensemble, init_train_state, make_epoch_fn, make_train_step, resolve_members


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


def bench_steps(workloads: Sequence[Workload] = STEP_WORKLOADS, *, rounds: int, calls: int) -> list[dict[str, Any]]:
    """Training-step time of bnjax vs hand-written JAX vs flax.linen (BN MLP, Adam) per workload, each step one
    jitted call from Python: per-call dispatch included (the engine's own speed is the reference epoch's
    row, :mod:`bnjax.bench._epoch`)."""
    rows = []
    for w in workloads:
        x, y = synthetic(w)
        spec, cfg = spec_cfg(w)
        step = jax.jit(make_train_step(spec, cfg, steps_per_epoch=1), donate_argnums=0)
        fns = {"bnjax": stateful(step, init_train_state(spec, cfg, seed=0), (x, y))}
        sizes = w.sizes
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
    w = FMNIST_B50
    spec, cfg = spec_cfg(w)
    x, y = synthetic(w, steps * w.batch)
    epoch = jax.jit(make_epoch_fn(spec, cfg, num_members=1, num_train=steps * w.batch), donate_argnums=0)
    states = init_ensemble(spec, cfg, resolve_members(spec, cfg, None))
    key = jax.random.key_data(jax.random.key(0))
    t = time_interleaved({"scan_epoch": stateful(epoch, states, x, y, key),
                          "python_loop": _step_loop(spec, cfg, x, y, steps)},
                         rounds=rounds, calls=1, warmup=1)
    scan, py = t["scan_epoch"]["median_s"], t["python_loop"]["median_s"]
    return {"workload": w.name, "steps": steps, "scan_epoch_ms": scan * 1e3, "python_loop_ms": py * 1e3,
            "throughput_ratio": py / scan}


def bench_ensemble(ks: Sequence[int] = (1, 4, 16, 64), *, rounds: int, steps: int = 20) -> list[dict[str, Any]]:
    """Vmapped ensembles of the CS231n BN MLP (batch 50), all interleaved in one timing loop.

    Per member-step time of a K-member epoch program (members with their own batch order, and with a shared
    one), against ``single_step``: one model trained by a Python loop of jitted steps, i.e. what K separate
    runs would cost per model-step.
    """
    w = CS231N_B50
    spec, cfg = spec_cfg(w)
    x, y = synthetic(w, steps * w.batch)
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


def bench_bf16(workloads: Sequence[Workload] = (CS231N_B50, WIDE_B256), *, rounds: int, calls: int
               ) -> list[dict[str, Any]]:
    """bnjax's training step with ``TrainConfig(compute_dtype="bfloat16")`` (bf16 matmuls and activations,
    float32 parameters, optimizer and BN statistics) against float32, interleaved; ``bf16_vs_f32`` is the
    time ratio (below 1: bf16 is faster)."""
    rows = []
    for w in workloads:
        x, y = synthetic(w)
        spec, cfg = spec_cfg(w)
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
