"""Population statistics of batch norm recomputed with frozen parameters ("precise BN").

The running averages collected during training mix statistics of many different parameter values (EMA) and
are noisy. With the parameters frozen, the population mean and variance of every BN layer can instead be
estimated as the plain average over ``B`` training batches of the per-batch mean and variance, each batch
passed through the model in train mode (so layer ``l`` sees the outputs of earlier layers normalised with
their own batch statistics) -- what torch's ``torch.optim.swa_utils.update_bn`` and fvcore's
``update_bn_stats`` compute. Ioffe & Szegedy (2015), Alg. 2 step 10, additionally uses the unbiased
``m / (m - 1)`` variance.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn._mlp import MLPSpec, as_layer
from bnjax.train._model import stats_layout, takes
from bnjax.train._step import matmul_precision_context

_OPTIONS = ("bn_average", "bn_unbiased")


def _is_stats(tree: Any) -> bool:
    return isinstance(tree, Mapping) and "mean" in tree and "var" in tree


def _zero_counted(batch_stats: State) -> State:
    """Every running-statistics dict of ``batch_stats`` as ``{"mean": 0, "var": 0, "count": 0}``."""
    if _is_stats(batch_stats):
        return {"mean": jnp.zeros_like(batch_stats["mean"]), "var": jnp.zeros_like(batch_stats["var"]),
                "count": jnp.zeros((), jnp.int32)}
    return {k: _zero_counted(v) if isinstance(v, Mapping) else v for k, v in batch_stats.items()}


def _like(layout: State, stats: State) -> State:
    """``stats`` in the layout of ``layout``: a ``"count"`` only where ``layout`` has one."""
    if _is_stats(layout):
        out = {"mean": stats["mean"], "var": stats["var"]}
        if "count" in layout:  # a model trained in cumulative mode keeps its layout: count = batches averaged
            out["count"] = stats["count"]
        return out
    return {k: _like(v, stats[k]) if isinstance(v, Mapping) else v for k, v in layout.items()}


def check_precise_options(layer: Layer, fn: str) -> None:
    """Raises ValueError unless the model's layers take the options precise BN runs them with."""
    missing = [o for o in _OPTIONS if not takes(layer, o)]
    if missing:
        raise ValueError(f"{fn}: the model's layers take no {missing[0]!r} option, so its batch norms cannot be "
                         f"switched to averaging batch statistics; build them with bnjax.BatchNorm (or "
                         f"GhostBatchNorm, BatchRenorm), which take bn_average and bn_unbiased.")


def _average_stats(
    layer: Layer,
    params: Params,
    batch_stats: State,
    batches: Array,
    *,
    unbiased: bool,
    rate: Any,
    key: PRNGKey | None,
    precision: str | None = None,
) -> State:
    """Core of :func:`recompute_batch_stats` on ``batches (B, m, ...)``; jit/vmap friendly.

    ``rate``: the drop rate passed as the ``dropout`` option (0 turns dropout off), or None for the model's own;
    ``precision``: the matmul precision the model is traced with (:attr:`TrainConfig.matmul_precision`).
    """
    # The layers' own cumulative mode is exactly "simple average of every batch's statistics": starting from
    # count 0, the initial values get weight 0. Momentum plays no part in it.
    options = {"bn_average": "cumulative", "bn_unbiased": unbiased}
    use_dropout = not (isinstance(rate, (int, float)) and rate == 0)
    if rate is not None:
        options["dropout"] = rate if use_dropout else 0.0
    options = {k: v for k, v in options.items() if takes(layer, k)}

    def body(stats, args):
        i, xb = args
        k = jax.random.fold_in(key, i) if use_dropout else None
        with matmul_precision_context(precision):
            _, stats = layer.apply(params, stats, xb, True, key=k, **options)
        return stats, None

    stats, _ = jax.lax.scan(body, _zero_counted(batch_stats), (jnp.arange(batches.shape[0]), batches))
    return _like(batch_stats, stats)


@partial(jax.jit, static_argnames=("model", "num_batches", "batch_size", "unbiased", "use_dropout"))
def _recompute_jit(model, params, batch_stats, x, rate, key, *, num_batches, batch_size, unbiased, use_dropout):
    batches = x[: num_batches * batch_size].reshape(num_batches, batch_size, *x.shape[1:])
    return _average_stats(
        model, params, batch_stats, batches, unbiased=unbiased, rate=rate if use_dropout else 0.0, key=key
    )


def recompute_batch_stats(
    model: Layer | MLPSpec,
    params: Params,
    batch_stats: State,
    x: Any,
    *,
    batch_size: int = 50,
    num_batches: int | None = None,
    num_samples: int | None = None,
    unbiased: bool = False,
    dropout: bool | float = False,
    key: PRNGKey | None = None,
) -> State:
    """Batch-norm population statistics recomputed over training batches with the parameters frozen.

    The first ``B * batch_size`` rows of ``x`` (in the given order; shuffle beforehand for random batches)
    are split into ``B`` consecutive batches. Each batch goes through the model in train mode, and for every
    BN layer ``l`` at once::

        mean_l = (1 / B) * sum_b mean_l(batch b)
        var_l  = (1 / B) * sum_b var_l(batch b) * (m / (m - 1) if unbiased else 1)

    where ``mean_l(batch b)``, ``var_l(batch b)`` are the biased batch statistics of layer ``l``'s input
    with all earlier layers in train mode (torch ``update_bn`` / fvcore ``update_bn_stats``; the unbiased
    variant is Ioffe & Szegedy 2015, Alg. 2). The model runs with the options ``bn_average="cumulative"``
    and ``bn_unbiased`` (so its batch-norm layers must take them, as bnjax's do) from statistics of count 0.

    Args:
      model: a :class:`bnjax.Layer` or an :class:`bnjax.MLPSpec`.
      params: frozen parameters.
      batch_stats: current statistics (only their layout is used: a ``"count"`` is kept, set to ``B``).
      x: ``(N, ...)`` training inputs (an MLP flattens each example).
      batch_size: ``m``, the batch size (use the training batch size: BN's statistics depend on it).
      num_batches: ``B``; default ``N // batch_size`` (every full batch).
      num_samples: alternatively, ``B = num_samples // batch_size``.
      unbiased: multiply each batch variance by ``m / (m - 1)``.
      dropout: ``False`` (default) disables dropout (the option ``dropout=0``); ``True`` keeps the model's
        own rates (an MLP's ``spec.dropout``); a float applies that rate. Dropout needs ``key``.
      key: PRNG key for dropout (batch ``b`` uses ``fold_in(key, b)``).

    Returns:
      New ``batch_stats`` with the layout of ``batch_stats`` (unchanged if the model has no batch norm).
    """
    fn = "recompute_batch_stats"
    layer = as_layer(model, fn)
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"{fn}: x must have a leading example axis, got a scalar.")
    # The model's own shape checks first (e.g. an MLP's input size), on shapes only.
    jax.eval_shape(lambda p, s, xb: layer.apply(p, s, xb, False), params, batch_stats,
                   jax.ShapeDtypeStruct((2, *x.shape[1:]), x.dtype))
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"{fn}: batch_size={batch_size!r} must be an int >= 2 (BN needs a batch variance).")
    if num_batches is not None and num_samples is not None:
        raise ValueError(f"{fn}: pass num_batches={num_batches!r} or num_samples={num_samples!r}, not both.")
    if num_samples is not None:
        num_batches = num_samples // batch_size
    elif num_batches is None:
        num_batches = x.shape[0] // batch_size
    if num_batches < 1 or num_batches * batch_size > x.shape[0]:
        raise ValueError(
            f"{fn}: {num_batches} batches of {batch_size} need {num_batches * batch_size} rows, x has "
            f"{x.shape[0]} (and at least one batch is needed); lower num_batches/num_samples or batch_size."
        )
    if not stats_layout(batch_stats):
        return batch_stats
    check_precise_options(layer, fn)
    if dropout is True:
        rate = dict(layer.defaults).get("dropout")  # the model's own rate(s): an MLP's spec.dropout
    elif dropout is False:
        rate = 0.0
    else:
        rate = float(dropout)
    use_dropout = rate is None or rate > 0
    if use_dropout and key is None:
        raise ValueError(f"{fn}: dropout={dropout!r} (rate {'of the model' if rate is None else rate}) needs a PRNG "
                         f"key, e.g. key=jax.random.key(0).")
    return _recompute_jit(
        layer, params, batch_stats, x, None if rate is None else jnp.float32(rate),
        key if use_dropout else jax.random.key(0),
        num_batches=num_batches, batch_size=batch_size, unbiased=bool(unbiased), use_dropout=use_dropout,
    )
