"""Batch normalization (Ioffe & Szegedy 2015, https://arxiv.org/abs/1502.03167) as a pure function."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._typing import Array, Params, PRNGKey, State
from bnjax.nn import _checks
from bnjax.nn._stats import (
    AxisName,
    compute_dtype,
    group_count,
    normalize_affine,
    normalize_affine_autodiff,
)

AVERAGES = ("ema", "cumulative", "debiased")
_COUNTED = ("cumulative", "debiased")  # averages that keep a batch count in the stats
GRADS = ("analytic", "autodiff")


def batch_norm_init(
    num_features: int, *, average: str = "ema", dtype: Any = jnp.float32
) -> tuple[Params, State]:
    """Parameters and running statistics of a batch-norm layer over ``num_features`` features.

    Args:
      num_features: size of the feature axis.
      average: ``"ema"`` (exponential moving average), ``"cumulative"`` (simple average of every batch's
        statistics, torch's ``momentum=None``) or ``"debiased"`` (zero-debiased EMA); the last two add an
        int32 ``"count"`` to the stats.
      dtype: dtype of the parameters and statistics (float32 default, also for bfloat16 models).

    Returns:
      ``({"scale": ones, "bias": zeros}, {"mean": zeros, "var": ones[, "count": 0]})``, each of shape
      ``(num_features,)`` -- the Flax ``params``/``batch_stats`` layout.
    """
    if not isinstance(num_features, (int,)) or isinstance(num_features, bool) or num_features < 1:
        raise ValueError(f"batch_norm_init: num_features={num_features!r} must be a positive int.")
    _checks.check_choice("batch_norm_init", "average", average, AVERAGES)
    params = {"scale": jnp.ones((num_features,), dtype), "bias": jnp.zeros((num_features,), dtype)}
    stats = {"mean": jnp.zeros((num_features,), dtype), "var": jnp.ones((num_features,), dtype)}
    if average in _COUNTED:
        stats["count"] = jnp.zeros((), jnp.int32)
    return params, stats


def _broadcast_shape(ndim: int, axis: int, size: int) -> tuple[int, ...]:
    return tuple(size if i == axis else 1 for i in range(ndim))


def batch_norm(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
               axis: int = -1, momentum: Any = 0.9, eps: float = 1e-5, average: str = "ema", unbiased_var: bool = False,
               axis_name: AxisName | None = None, mask: Array | None = None, grad: str = "analytic"
               ) -> tuple[Array, State]:
    """Batch normalization over every axis of ``x`` but the feature ``axis``.

    Train mode (``train=True``), per feature over the ``n`` values of the batch (and spatial) axes::

        mean = sum(x) / n,   var = sum((x - mean)**2) / n            (biased, two-pass, float32 or wider)
        y    = scale * (x - mean) / sqrt(var + eps) + bias
        new_stats["mean"] = momentum * stats["mean"] + (1 - momentum) * mean        (average="ema")
        new_stats["var"]  = momentum * stats["var"]  + (1 - momentum) * var_stored
        var_stored = var * n / (n - 1) if unbiased_var else var

    ``momentum=0.9`` is the CS231n convention (Flax and Keras default to 0.99; torch's ``momentum`` is the
    weight of the *new* value, so torch 0.1 == bnjax 0.9). ``average="cumulative"`` replaces the EMA by the
    simple average of all batch statistics seen, and ``average="debiased"`` by the zero-debiased EMA
    ``H_t / (1 - momentum**t)`` (Adam/Haiku style: the initial values get zero weight, so early running
    statistics do not lag towards mean 0 / var 1); both keep a ``"count"`` (see :func:`batch_norm_init`).
    ``unbiased_var=True`` stores the ``n/(n-1)`` estimate (Ioffe & Szegedy Alg. 2, torch); the batch itself is
    always normalised with the biased variance.

    Eval mode (``train=False``) is the affine map ``y = scale * (x - stats["mean"]) / sqrt(stats["var"] + eps)
    + bias`` and returns ``batch_stats`` unchanged (the same object); it accepts any rank >= 1, including a
    single example ``(C,)``, and statistics with or without a ``"count"`` whatever ``average`` says.

    Masks: entries where ``mask`` is 0 are selected away (never multiplied), so padding may hold anything,
    ``NaN`` and ``inf`` included: it changes neither the statistics, the running statistics, nor any gradient,
    and its own cotangent is 0. Its output is the same formula applied to it (garbage in, garbage out there).

    Gradients: ``grad="analytic"`` uses the hand-derived closed-form backward (``jax.custom_vjp``) for reverse
    mode: ``jax.grad``/``vjp``/``jacrev``, grad-of-grad and ``jax.hessian`` (forward-over-reverse) all work.
    ``grad="autodiff"`` differentiates the plain forward and is required for *outer* forward-mode transforms
    (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``); applied to the default eagerly, they raise a ``TypeError``
    saying so (under ``jit`` JAX raises its generic "can't apply forward-mode autodiff (jvp) to a custom_vjp
    function").

    Under ``jax.vmap`` over an ensemble axis each member keeps its own statistics. To normalise across a
    batch split over devices or over a named ``vmap``/``shard_map`` axis, pass ``axis_name``: sums and
    counts are reduced across it (count-weighted, so unequal shards given by ``mask`` are exact).

    Args:
      params: ``{"scale", "bias"}`` of shape ``(C,)``.
      batch_stats: ``{"mean", "var"}`` of shape ``(C,)`` (plus a scalar ``"count"`` for ``"cumulative"`` and
        ``"debiased"``).
      x: real floating input with ``x.shape[axis] == C``, e.g. ``(N, C)`` or ``(N, H, W, C)``; train mode
        needs at least 2 values per feature (over the other axes, or across ``axis_name``/``mask``).
      train: Python bool, batch statistics (True) or running statistics (False).
      key: unused (accepted so every layer shares one signature).
      axis: the feature axis (default ``-1``).
      momentum: EMA coefficient in [0, 1]; may be a traced array (e.g. swept by ``vmap``).
      eps: added to the variance inside the square root (default ``1e-5``); a number >= 0.
      average: ``"ema"``, ``"cumulative"`` or ``"debiased"``.
      unbiased_var: store ``n/(n-1) * var`` in the running variance.
      axis_name: optional named axis to synchronise statistics across.
      mask: optional boolean/0-1 array broadcastable to ``x`` (train mode); zero entries are left out of the
        statistics and the gradients. Ignored in eval mode.
      grad: ``"analytic"`` or ``"autodiff"``.

    Returns:
      ``(y, new_batch_stats)``; ``y`` has the shape and dtype of ``x`` (computed in float32 for
      bfloat16/float16 inputs); the statistics keep their dtype.
    """
    fn = "batch_norm"
    x, feat, num = check_batch_norm_args(
        fn, params, batch_stats, x, axis=axis, average=average, grad=grad, momentum=momentum, train=train
    )
    eps = _checks.check_eps(fn, eps)
    cdt = compute_dtype(x.dtype)
    bshape = _broadcast_shape(x.ndim, feat, num)
    scale = params["scale"].astype(cdt).reshape(bshape)
    bias = params["bias"].astype(cdt).reshape(bshape)
    if not train:
        mean = batch_stats["mean"].astype(cdt).reshape(bshape)
        var = batch_stats["var"].astype(cdt).reshape(bshape)
        y = (x.astype(cdt) - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias
        return y.astype(x.dtype), batch_stats

    axes = tuple(i for i in range(x.ndim) if i != feat)
    mask = _checks.check_mask(fn, mask, x.shape)
    check_train_batch(fn, x, num, axis_name, mask)
    norm = normalize_affine if grad == "analytic" else normalize_affine_autodiff
    y, mean, var = norm(x.astype(cdt), scale, bias, axes, eps, axis_name, mask)
    count = group_count(x, axes, axis_name=axis_name, mask=mask) if unbiased_var else None
    new_stats = running_stats_after_batch(
        batch_stats, mean, var, count, unbiased_var=unbiased_var, momentum=momentum, average=average
    )
    return y.astype(x.dtype), new_stats


def check_train_args(fn: str, params: Params, batch_stats: State, x: Array, train: bool, *, axis: int,
                     average: str, grad: str, momentum: Any, eps: float) -> tuple[Array, int, int, float] | None:
    """The checks a batch-norm variant (ghost, renorm) starts with: None in eval mode (after checking ``train``
    and ``x``; the caller returns :func:`batch_norm`'s eval output), else ``(x, feature_axis, num_features,
    eps)`` checked for training."""
    _checks.check_train(fn, train)
    x = _checks.check_float_input(fn, x)
    if not train:
        return None
    x, feat, num = check_batch_norm_args(fn, params, batch_stats, x, axis=axis, average=average, grad=grad,
                                         momentum=momentum)
    return x, feat, num, _checks.check_eps(fn, eps)


def check_batch_norm_args(
    fn: str,
    params: Params,
    batch_stats: State,
    x: Array,
    *,
    axis: int,
    average: str,
    grad: str,
    momentum: Any,
    train: bool = True,
) -> tuple[Array, int, int]:
    """Validation shared by every batch-norm variant; returns ``(x, feature_axis, num_features)``.

    Eval mode accepts ``batch_stats`` with or without a ``"count"`` (it only reads mean and var)."""
    _checks.check_train(fn, train)
    x = _checks.check_float_input(fn, x)
    _checks.check_choice(fn, "average", average, AVERAGES)
    _checks.check_choice(fn, "grad", grad, GRADS)
    _checks.check_in_range(fn, "momentum", momentum, 0.0, 1.0)  # momentum_ok's range, traced values pass
    if x.ndim < 1:
        raise ValueError(
            f"{fn}: x is a scalar (shape ()); batch norm needs a feature axis, e.g. (N, C), or (C,) in eval mode."
        )
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{fn}: axis={axis!r} must be one int (the feature axis), e.g. axis=-1.")
    (feat,) = _checks.normalize_axes(fn, "axis", axis, x.ndim)
    num = x.shape[feat]
    _checks.check_tree(
        fn, "params", params, {"scale": (num,), "bias": (num,)},
        f"x has {num} features on axis {axis}; create params with batch_norm_init({num}).",
    )
    expected = {"mean": (num,), "var": (num,)}
    has_count = isinstance(batch_stats, dict) and "count" in batch_stats
    if (average in _COUNTED) if train else has_count:  # eval reads only mean and var
        expected["count"] = ()
    _checks.check_tree(
        fn, "batch_stats", batch_stats, expected,
        f"Create it with batch_norm_init({num}, average={average!r}).",
    )
    return x, feat, num


def check_train_batch(fn: str, x: Array, num: int, axis_name: Any = None, mask: Array | None = None) -> None:
    """Train mode needs more than one value per feature (torch raises here; a variance of 0 returns the bias)."""
    if x.size // num == 1 and axis_name is None and mask is None:
        raise ValueError(
            f"{fn}: train mode got x of shape {x.shape}, i.e. 1 value per feature, so the batch variance is 0 "
            f"and the output would be just the bias. Use a batch of at least 2, pass axis_name= to share the "
            f"statistics across a vmap/shard_map axis, or train=False to normalise with the running statistics."
        )


def update_running_stats(
    batch_stats: dict[str, Array],
    mean: Array,
    var: Array,
    *,
    momentum: Any = 0.9,
    average: str = "ema",
) -> dict[str, Array]:
    """The running-statistics rule, applied to ``{"mean", "var"[, "count"]}``.

    * ``average="ema"``: ``new = momentum * old + (1 - momentum) * batch`` (CS231n/Flax/Keras convention;
      torch's ``momentum`` is ``1 - momentum`` here). ``momentum`` may be a traced array.
    * ``average="cumulative"``: the simple average of every batch statistic seen so far,
      ``new = old + (batch - old) / (count + 1)``, ``count += 1`` (torch ``momentum=None``). The initial
      values get zero weight, so after k batches the result is the plain mean of the k batch statistics.
    * ``average="debiased"``: the zero-debiased EMA ``H_t / (1 - momentum**t)`` with
      ``H_t = momentum * H_{t-1} + (1 - momentum) * batch_t``, ``H_0 = 0`` (Haiku's ``zero_debias``), kept
      directly in debiased form: ``new = old + (batch - old) * (1 - momentum) / (1 - momentum**t)`` with
      ``t = count + 1``. The first batch replaces the initial values; later it tends to the plain EMA;
      ``momentum = 1`` gives the cumulative average (the limit of the weight).

    Returns a new dict; the stored dtypes are kept.
    """
    old_mean, old_var = batch_stats["mean"], batch_stats["var"]
    if average == "ema":
        m = jnp.asarray(momentum, compute_dtype(old_mean.dtype))
        return {
            "mean": (m * old_mean + (1.0 - m) * mean).astype(old_mean.dtype),
            "var": (m * old_var + (1.0 - m) * var).astype(old_var.dtype),
        }
    count = batch_stats["count"]
    cdt = compute_dtype(old_mean.dtype)
    t = count.astype(cdt) + 1.0
    if average == "cumulative":
        w = 1.0 / t
    else:  # debiased
        m = jnp.asarray(momentum, cdt)
        safe = jnp.where(m < 1.0, m, 0.0)
        w = jnp.where(m < 1.0, (1.0 - safe) / (1.0 - safe**t), 1.0 / t)
    return {
        "mean": (old_mean + (mean - old_mean) * w).astype(old_mean.dtype),
        "var": (old_var + (var - old_var) * w).astype(old_var.dtype),
        "count": count + 1,
    }


def running_stats_after_batch(
    batch_stats: State, mean: Array, var: Array, count: Any, *, unbiased_var: bool, momentum: Any, average: str
) -> State:
    """New running statistics from one batch's (biased) ``mean``/``var`` over ``count`` values per feature.

    The statistics carry no gradient; ``unbiased_var`` stores ``var * n / (n - 1)`` with ``n = count`` (the
    global per-feature count, across ``axis_name`` and after masking).
    """
    num = batch_stats["mean"].shape[0]
    mean = jax.lax.stop_gradient(mean).reshape(num)
    var = jax.lax.stop_gradient(var).reshape(num)
    if unbiased_var:
        n = jnp.broadcast_to(jnp.asarray(count, var.dtype).reshape(-1), (num,))
        var = var * n / jnp.maximum(n - 1.0, 1.0)
    return update_running_stats(batch_stats, mean, var, momentum=momentum, average=average)
