"""The engine's compiled epoch against the best a user would write by hand: flax.linen + optax in one jitted
``lax.scan`` that draws a permutation of the training set on device and gathers each batch, as the engine
does (:func:`bnjax.bench._refs.flax_scan_epoch`).

Both are one program per epoch with the state donated, timed interleaved; the fusion counts of both compiled
programs come with the times, since on a GPU a small model's step is bound by its kernel count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from bnjax.bench._hlo import fusion_counts
from bnjax.bench._refs import flax_scan_epoch
from bnjax.bench._timing import ratio, stateful, time_interleaved
from bnjax.bench._workloads import Workload, spec_cfg, synthetic
from bnjax.train import init_ensemble, make_epoch_fn, resolve_members
from bnjax.train._step import EPOCH_UNROLL

FUSIONS_COUNTED = ("fusion instructions (`= ... fusion(...), kind=k...`) in the optimized HLO of the compiled "
                   "epoch (`fusions`, the whole program) and in the scan's loop body (`loop_fusions`), plus every "
                   "loop-body instruction that launches work (`loop_ops`: fusions, dots, copies, custom calls; "
                   "not parameter/get-tuple-element/tuple/constant/bitcast)")


def _per_step(counts: dict[str, Any], steps_per_iteration: int) -> dict[str, Any]:
    """Loop counts of a scan unrolled ``steps_per_iteration`` times, divided down to one step."""
    out = dict(counts, steps_per_iteration=steps_per_iteration)
    for k in ("loop_fusions", "loop_ops"):
        if k in out:
            out[k] = out[k] / steps_per_iteration
    return out


def bench_reference_epoch(cases: Sequence[tuple[Workload, int]], *, rounds: int) -> list[dict[str, Any]]:
    """For each ``(workload, steps)``: one epoch of ``steps`` steps of bnjax's ``make_epoch_fn`` (K = 1) and of
    the flax.linen scan on the same ``steps * batch`` synthetic examples.

    Row: medians of one epoch call (``bnjax_epoch_ms``, ``flax_scan_epoch_ms``), ``bnjax_vs_flax_scan`` (the
    ratio within each round: median, min, max) and ``fusions`` of both programs (:func:`fusion_counts`; the
    engine's loop counts per step, its scan running ``EPOCH_UNROLL`` steps per iteration).
    """
    rows = []
    for w, steps in cases:
        if steps < 2 * EPOCH_UNROLL:  # XLA removes a loop of one trip: no loop body would be left to count
            raise ValueError(f"bench_reference_epoch: {w.name} needs at least {2 * EPOCH_UNROLL} steps (the engine's "
                             f"scan runs {EPOCH_UNROLL} per iteration), got {steps}.")
        n = steps * w.batch
        x, y = synthetic(w, n)
        spec, cfg = spec_cfg(w)
        states = init_ensemble(spec, cfg, resolve_members(spec, cfg, None))
        key = jax.random.key_data(jax.random.key(0))
        ours = jax.jit(make_epoch_fn(spec, cfg, num_members=1, num_train=n), donate_argnums=0)
        ours = ours.lower(states, x, y, key).compile()
        ref, ref_state = flax_scan_epoch(jax.random.PRNGKey(0), w.sizes, w.batch)
        ref_key = jax.random.PRNGKey(1)
        theirs = ref.lower(ref_state, x, y, ref_key).compile()
        # The engine's scan runs EPOCH_UNROLL steps per iteration: its loop body is counted per step.
        fusions = {"bnjax": _per_step(fusion_counts(ours.as_text(), steps // EPOCH_UNROLL), EPOCH_UNROLL),
                   "flax_scan": fusion_counts(theirs.as_text(), steps)}
        t = time_interleaved({"bnjax": stateful(ours, states, x, y, key),
                              "flax_scan": stateful(theirs, ref_state, x, y, ref_key)},
                             rounds=rounds, calls=1, warmup=1)
        rows.append({
            "workload": w.name, "sizes": list(w.sizes), "batch": w.batch, "steps": steps,
            "bnjax_epoch_ms": t["bnjax"]["median_s"] * 1e3, "flax_scan_epoch_ms": t["flax_scan"]["median_s"] * 1e3,
            "bnjax_vs_flax_scan": ratio(t, "bnjax", "flax_scan"), "fusions": fusions,
        })
    return rows
