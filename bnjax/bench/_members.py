"""Many members through the public API (:func:`bnjax.train.resolve_members`, :func:`~bnjax.train.init_ensemble`,
:func:`~bnjax.train.make_epoch_fn`, :func:`~bnjax.train.make_eval_fn`): the time to initialise K members against
drawing their random numbers alone, and the wall of a K-member epoch with its evaluation and the transfer of
its metrics to the host. Only those functions' signatures are relied on, so the rows keep measuring whatever
implementation stands behind them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from bnjax.bench._timing import ratio, time_interleaved
from bnjax.bench._workloads import FMNIST_B50, Workload, spec_cfg, synthetic
from bnjax.train import init_ensemble, make_epoch_fn, make_eval_fn, resolve_members


def _random_draws(spec: Any, cfg: Any) -> int:
    """How many normal numbers one member's init draws: the elements of its ``"weight"`` leaves."""
    params = jax.eval_shape(lambda: init_ensemble(spec, cfg, resolve_members(spec, cfg, None)).params)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(int(np.prod(a.shape)) for path, a in leaves if getattr(path[-1], "key", None) == "weight")


def bench_init(ks: Sequence[int], *, rounds: int, w: Workload = FMNIST_B50) -> list[dict[str, Any]]:
    """Per K: ``init_ensemble`` of K members (seeds 0..K-1) against one jitted ``jax.random.normal`` of the
    same total count of numbers, interleaved (``init_vs_normal``: median, min, max of the ratio within each
    round; drawing the numbers is the work an initialisation must do, so the aim is at most 3).
    ``init_first_s`` is the first call in this process (tracing and compiling included); ``rounds`` warm calls
    follow (one above 64 members)."""
    rows = []
    spec, cfg = spec_cfg(w)
    draws = _random_draws(spec, cfg)
    for k in ks:
        members = resolve_members(spec, cfg, {"seed": list(range(k))})
        t0 = time.perf_counter()
        jax.block_until_ready(init_ensemble(spec, cfg, members))
        first = time.perf_counter() - t0
        normal = jax.jit(lambda key, n=k * draws: jax.random.normal(key, (n,)))
        key = jax.random.key(0)
        jax.block_until_ready(normal(key))
        t = time_interleaved({"init": lambda: init_ensemble(spec, cfg, members), "normal": lambda: normal(key)},
                             rounds=max(1, rounds if k <= 64 else 1), calls=1, warmup=0)
        rows.append({"K": k, "workload": w.name, "random_numbers": k * draws, "init_first_s": first,
                     "init_s": t["init"]["median_s"], "normal_s": t["normal"]["median_s"],
                     "init_vs_normal": ratio(t, "init", "normal")})
    return rows


def bench_member_epochs(ks: Sequence[int], *, rounds: int, steps: int = 5, eval_examples: int = 1000,
                        w: Workload = FMNIST_B50) -> list[dict[str, Any]]:
    """Per K: one K-member epoch of ``steps`` steps (``make_epoch_fn``, each member its own batch order), its
    evaluation (``make_eval_fn`` on the training set and ``eval_examples`` held-out examples) and the transfer
    of the step losses and metrics to the host (one ``jax.device_get``), each part synced and timed in every
    call, one warm-up call then ``rounds`` calls.

    Row: medians of the parts (``epoch_ms``, ``eval_ms``, ``transfer_ms``) and of their sum per member-step
    (``member_step_us``; ``epoch_member_step_us`` for the epoch alone), and ``transfer_share``, the median
    share of the wall that the transfer takes.
    """
    rows = []
    spec, cfg = spec_cfg(w)
    n = steps * w.batch
    x, y = synthetic(w, n + eval_examples)
    x, y, sets = x[:n], y[:n], {"train": (x[:n], y[:n]), "val": (x[n:], y[n:])}
    key = jax.random.key_data(jax.random.key(0))
    for k in ks:
        members = resolve_members(spec, cfg, {"seed": list(range(k))})
        epoch = jax.jit(make_epoch_fn(spec, cfg, num_members=k, num_train=n), donate_argnums=0)
        evaluate = jax.jit(make_eval_fn(spec, cfg, num_members=k))
        box = [init_ensemble(spec, cfg, members)]

        def once() -> tuple[float, float, float]:
            t0 = time.perf_counter()
            box[0], losses = epoch(box[0], x, y, key)
            jax.block_until_ready(losses)
            t1 = time.perf_counter()
            metrics = jax.block_until_ready(evaluate(box[0], sets, None))
            t2 = time.perf_counter()
            jax.device_get((losses, metrics))
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        once()
        parts = np.array([once() for _ in range(max(1, rounds))])
        epoch_s, eval_s, transfer_s = np.median(parts, axis=0)
        total_s = float(np.median(parts.sum(axis=1)))
        rows.append({"K": k, "workload": w.name, "steps": steps, "eval_examples": n + eval_examples,
                     "epoch_ms": epoch_s * 1e3, "eval_ms": eval_s * 1e3, "transfer_ms": transfer_s * 1e3,
                     "member_step_us": total_s / (k * steps) * 1e6,
                     "epoch_member_step_us": epoch_s / (k * steps) * 1e6,
                     "transfer_share": float(np.median(parts[:, 2] / parts.sum(axis=1)))})
    return rows
