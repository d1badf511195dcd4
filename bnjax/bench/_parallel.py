"""``bnjax bench``'s parallel part: an ensemble's epoch program on one device vs sharded over two.

Both programs are the engine's own: on one device the jitted :func:`bnjax.train.make_epoch_fn` (what
``train_ensemble`` runs without ``parallel``), on two the jitted ``make_sharded_epoch_fn`` of the
:func:`~bnjax.train._sharded.make_layout` of a :class:`bnjax.train.Parallel` (what it runs with one), each with
its state donated. They are timed in one process, interleaved round by round, on the same synthetic data.

A CPU's device count is fixed when JAX starts, so on the CPU this part runs in a fresh process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (:func:`run_cpu_subprocess`); that process runs
``python -m bnjax.bench._parallel '<json options>'`` and prints the rows as JSON on its last line. On an
accelerator with two or more devices :func:`bench_parallel` runs in the calling process over two of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from bnjax.nn import MLPSpec
from bnjax.bench._timing import stateful, time_interleaved
from bnjax.train import Parallel, TrainConfig, init_ensemble, make_epoch_fn, resolve_members
from bnjax.train._sharded import make_layout, make_sharded_epoch_fn, pad_members, to_devices
from bnjax.train._members import shared_shuffle_key

__all__ = ["ParallelCase", "bench_parallel", "default_cases", "parallel_part", "run_cpu_subprocess"]

NUM_DEVICES = 2


@dataclass(frozen=True)
class ParallelCase:
    """One row: a ``num_members`` ensemble on ``members x data`` devices against the same on one device.

    ``kind`` is ``"members"`` (members sharded) or ``"data"`` (each member's batch split, batch norm synced).
    """

    kind: str
    num_members: int
    members: int
    data: int
    shared_batches: bool


def default_cases(num_members: int = 16, devices: int = NUM_DEVICES) -> list[ParallelCase]:
    """Members sharded over ``devices`` (own and shared batch order); data parallel over ``devices`` for one
    member and for the whole ensemble."""
    return [
        ParallelCase("members", num_members, devices, 1, False),
        ParallelCase("members", num_members, devices, 1, True),
        ParallelCase("data", 1, 1, devices, False),
        ParallelCase("data", num_members, 1, devices, False),
    ]



def bench_parallel(devices: Sequence[jax.Device], *, in_features: int = 3072, hidden: Sequence[int] = (100,) * 5,
                   batch: int = 50, steps: int = 20, rounds: int = 7,
                   cases: Sequence[ParallelCase] | None = None) -> list[dict[str, Any]]:
    """Times each case's epoch program of ``steps`` steps (BN MLP ``in_features -> hidden -> 10``, Adam,
    batch ``batch``, synthetic data of ``steps * batch`` examples) on ``devices[:members*data]`` against the
    single-device program on ``devices[0]``, all interleaved in one timing loop.

    Returns one dict per case: medians of one epoch call (``one_device_ms``, ``parallel_ms``), the throughput
    in member-examples per second (``K * steps * batch / time``) and ``throughput_ratio`` = parallel / one device.
    """
    cases = default_cases(devices=len(devices)) if cases is None else list(cases)
    spec = MLPSpec(in_features=in_features, hidden=tuple(hidden), num_classes=10, norm="batch", init="he")
    cfg = TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=batch)
    n = steps * batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, in_features), np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    key = np.asarray(jax.device_get(shared_shuffle_key(0)))
    dev0 = devices[0]
    fns: dict[str, Callable[[], Any]] = {}
    for c in cases:
        members = resolve_members(spec, cfg, {"seed": list(range(c.num_members))})
        host_states = jax.device_get(init_ensemble(spec, cfg, members))
        base = f"1dev:{c.num_members}:{c.shared_batches}"
        if base not in fns:  # one baseline per ensemble, shared by the cases that compare against it
            epoch = jax.jit(make_epoch_fn(spec, cfg, num_members=c.num_members, num_train=n,
                                          shared_batches=c.shared_batches, use_dropout=False), donate_argnums=0)
            fns[base] = stateful(epoch, *jax.device_put((host_states, x, y, key), dev0))
        layout = make_layout(Parallel(members=c.members, data=c.data), c.num_members, batch, devices)
        epoch = jax.jit(make_sharded_epoch_fn(spec, cfg, layout, num_train=n, shared_batches=c.shared_batches,
                                              use_dropout=False), donate_argnums=0)
        states = to_devices(pad_members(host_states, layout.padded_members), layout.member_sharding())
        fns[_name(c)] = stateful(epoch, states, *to_devices((x, y, key), layout.sharding()))
    t = time_interleaved(fns, rounds=rounds, calls=1, warmup=1)
    rows = []
    for c in cases:
        one = t[f"1dev:{c.num_members}:{c.shared_batches}"]["median_s"]
        par = t[_name(c)]["median_s"]
        examples = c.num_members * steps * batch
        rows.append({**asdict(c), "devices": c.members * c.data, "steps": steps, "batch": batch,
                     "one_device_ms": one * 1e3, "parallel_ms": par * 1e3,
                     "one_device_ex_per_s": examples / one, "parallel_ex_per_s": examples / par,
                     "throughput_ratio": one / par})
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


def _name(c: ParallelCase) -> str:
    return f"{c.kind}:{c.num_members}:{c.members}x{c.data}:{c.shared_batches}"


def run_cpu_subprocess(*, timeout: float = 3600.0, compile_cache: str | os.PathLike | None = None,
                       **options: Any) -> list[dict[str, Any]]:
    """:func:`bench_parallel` over two CPU devices, in a fresh Python process (``XLA_FLAGS`` gains
    ``--xla_force_host_platform_device_count=2``, ``JAX_PLATFORMS=cpu``); ``options`` are its keyword
    arguments (``cases`` as a list of :class:`ParallelCase`). Raises RuntimeError with the child's stderr
    if it fails."""
    if "cases" in options and options["cases"] is not None:
        options["cases"] = [asdict(c) for c in options["cases"]]
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={NUM_DEVICES}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = str(Path(__file__).resolve().parents[2])  # the child imports this bnjax, wherever it was imported from
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    if compile_cache is not None:  # the parent's persistent cache, through JAX's own environment variables
        env |= {"JAX_COMPILATION_CACHE_DIR": str(compile_cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    payload = json.dumps({"options": options})
    proc = subprocess.run([sys.executable, "-m", "bnjax.bench._parallel", payload], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bnjax bench: the parallel benchmark process failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    options = dict(request["options"])
    if options.get("cases") is not None:
        options["cases"] = [ParallelCase(**c) for c in options["cases"]]
    devices = jax.devices("cpu")
    if len(devices) < NUM_DEVICES:
        print(f"bnjax bench: expected {NUM_DEVICES} CPU devices (XLA_FLAGS="
              f"--xla_force_host_platform_device_count={NUM_DEVICES}), got {len(devices)}", file=sys.stderr)
        return 2
    rows = bench_parallel(devices[:NUM_DEVICES], **options)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
