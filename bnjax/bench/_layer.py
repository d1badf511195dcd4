"""Batch norm alone: train-mode forward + backward (a VJP against a fixed cotangent, returning ``y``, ``dx`` and
the parameter gradients) of bnjax with its analytic backward, bnjax with autodiff, and ``flax.linen.BatchNorm``,
timed interleaved, with the passes each compiled program makes over the ``(N, C)`` arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bnjax.bench._hlo import array_passes
from bnjax.bench._timing import ratio, time_interleaved
from bnjax.nn import batch_norm, batch_norm_init

BN_SHAPES = ((256, 1024), (4096, 1024), (65536, 1024), (262144, 256))
PASSES_COUNTED = ("per compiled fwd+bwd program, over the instructions that launch work in its entry computation: "
                  "`reads` = operands with N*C elements (x, dy or an (N, C) intermediate), `writes` = such "
                  "outputs, `kernels` = instructions touching one")


def _vjp_program(apply: Callable[[Any, jax.Array], jax.Array], x: jax.Array, params: Any, dy: jax.Array
                 ) -> tuple[Any, Callable[[], Any]]:
    """``apply(params, x) -> y``'s forward and VJP against ``dy``, compiled: ``() -> (y, (dx, dparams))``."""

    def f(x, params, dy):
        y, vjp = jax.vjp(lambda x, p: apply(p, x), x, params)
        return y, vjp(dy)

    compiled = jax.jit(f).lower(x, params, dy).compile()
    return compiled, lambda: compiled(x, params, dy)


def _programs(x: jax.Array, dy: jax.Array) -> dict[str, tuple[Any, Callable[[], Any]]]:
    import flax.linen as nn

    c = x.shape[-1]
    params, stats = batch_norm_init(c)
    module = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    variables = module.init(jax.random.PRNGKey(0), x[:2])

    def flax_apply(p, x):
        return module.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])[0]

    return {
        "analytic": _vjp_program(lambda p, x: batch_norm(p, stats, x, True, grad="analytic")[0], x, params, dy),
        "autodiff": _vjp_program(lambda p, x: batch_norm(p, stats, x, True, grad="autodiff")[0], x, params, dy),
        "flax": _vjp_program(flax_apply, x, variables["params"], dy),
    }


def bench_bn_layer(shapes: Sequence[tuple[int, int]], *, rounds: int, calls: int) -> list[dict[str, Any]]:
    """One row per ``(N, C)`` float32 shape: medians of one fwd+bwd call (``analytic_us``, ``autodiff_us``,
    ``flax_us``), the ratios within each round (``analytic_vs_autodiff``, ``analytic_vs_flax``: median, min,
    max) and ``passes`` of each program (:func:`bnjax.bench._hlo.array_passes`). ``calls`` is per round at
    256 x 1024 and shrinks in proportion to ``N * C`` (at least 1)."""
    rows = []
    for n, c in shapes:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((n, c), np.float32))
        dy = jnp.asarray(rng.standard_normal((n, c), np.float32))
        programs = _programs(x, dy)
        passes = {name: array_passes(compiled.as_text(), n * c) for name, (compiled, _) in programs.items()}
        t = time_interleaved({name: call for name, (_, call) in programs.items()}, rounds=rounds,
                             calls=max(1, calls * 256 * 1024 // (n * c)), warmup=1)
        rows.append({
            "shape": [n, c], **{f"{name}_us": t[name]["median_s"] * 1e6 for name in programs},
            "analytic_vs_autodiff": ratio(t, "analytic", "autodiff"), "analytic_vs_flax": ratio(t, "analytic", "flax"),
            "passes": passes,
        })
    return rows
