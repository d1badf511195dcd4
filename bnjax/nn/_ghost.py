"""Ghost batch normalization (Hoffer, Hubara & Soudry 2017, https://arxiv.org/abs/1705.08741)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from bnjax._typing import Array, Params, PRNGKey, State
from bnjax.nn._batch_norm import (
    batch_norm,
    check_train_args,
    running_stats_after_batch,
)
from bnjax.nn._stats import compute_dtype, normalize_affine, normalize_affine_autodiff


def ghost_batch_norm(params: Params, batch_stats: State, x: Array, train: bool, *, virtual_batch_size: int,
                     key: PRNGKey | None = None, axis: int = -1, momentum: Any = 0.9, eps: float = 1e-5,
                     average: str = "ema", unbiased_var: bool = False, grad: str = "analytic") -> tuple[Array, State]:
    """Batch norm whose training statistics come from "ghost" sub-batches of ``virtual_batch_size`` rows.

    The batch axis (axis 0, size ``N``) is cut into ``K = N / v`` consecutive chunks of ``v =
    virtual_batch_size`` rows (rows ``k*v ... k*v + v - 1`` form ghost batch ``k``); each chunk is batch
    normalised on its own, per feature over its ``n = v * prod(spatial)`` values::

        mean_k = sum_{chunk k}(x) / n,   var_k = sum_{chunk k}((x - mean_k)**2) / n
        y      = scale * (x - mean_k) / sqrt(var_k + eps) + bias           (for the rows of chunk k)

    Running statistics are updated **once per call** with the average of the ghost statistics,
    ``mean_B = sum_k(mean_k) / K`` and ``var_B = sum_k(var_k_stored) / K`` (``var_k_stored = var_k * n/(n-1)``
    when ``unbiased_var``), then the rule of :func:`bnjax.batch_norm` (``new = momentum * old + (1 - momentum)
    * mean_B`` for ``average="ema"``). This is tf-keras's ``virtual_batch_size`` rule (one update with the
    mean of the ghost moments; tf-keras comments that a sequential update per ghost batch would be exact,
    but the difference is small). ``var_B`` is the mean *within*-ghost variance, so it leaves out the spread
    of the ghost means. Two differences from tf-keras: its ghost batches are interleaved (it reshapes to
    ``(v, N/v, ...)``, so ghost batch ``j`` holds rows ``j, j + N/v, ...``), ours are consecutive chunks as in
    the paper; and tf-keras's ``momentum`` default is 0.99, ours 0.9 as :func:`bnjax.batch_norm`.
    ``v = N`` is plain batch norm.

    Eval mode is exactly :func:`bnjax.batch_norm` with the running statistics. The analytic backward is
    :func:`bnjax.normalize_affine`'s on the ``(K, v, ..., C)`` view: the ghost axis is simply not reduced.
    Create ``params``/``batch_stats`` with :func:`bnjax.batch_norm_init`.

    Args:
      params: ``{"scale", "bias"}`` of shape ``(C,)``.
      batch_stats: ``{"mean", "var"}`` (plus ``"count"`` for ``average="cumulative"``) of shape ``(C,)``.
      x: floating input ``(N, ..., C)``; axis 0 is the batch axis and ``N`` must be a multiple of
        ``virtual_batch_size``.
      train: Python bool.
      virtual_batch_size: rows per ghost batch ``v`` (dividing ``N``; each ghost batch must hold >= 2
        values per feature).
      key: unused.
      axis: the feature axis (default ``-1``; must not be the batch axis 0).
      momentum, eps, average, unbiased_var, grad: as :func:`bnjax.batch_norm`.

    Returns:
      ``(y, new_batch_stats)``; ``y`` has the shape and dtype of ``x``.
    """
    fn = "ghost_batch_norm"
    checked = check_train_args(fn, params, batch_stats, x, train, axis=axis, average=average, grad=grad,
                               momentum=momentum, eps=eps)
    if checked is None:  # eval mode: the running statistics, as batch norm
        return batch_norm(params, batch_stats, x, False, axis=axis, eps=eps, average=average)
    x, feat, num, eps = checked
    if feat == 0:
        raise ValueError(f"{fn}: axis={axis!r} is the batch axis 0; the feature axis must be another axis.")
    n_rows = x.shape[0]
    v = virtual_batch_size
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or n_rows % v:
        raise ValueError(
            f"{fn}: virtual_batch_size={v!r} must be a positive int dividing the batch size N={n_rows} "
            f"(x.shape={x.shape}); use a divisor of {n_rows} or pad/trim the batch."
        )
    num = x.shape[feat]
    per_group = v * x.size // (n_rows * num)
    if per_group == 1:
        raise ValueError(
            f"{fn}: virtual_batch_size={v} leaves 1 value per feature in each ghost batch, so every variance "
            f"is 0; use virtual_batch_size >= 2."
        )
    cdt = compute_dtype(x.dtype)
    ghosts = x.astype(cdt).reshape((n_rows // v, v) + x.shape[1:])
    gfeat = feat + 1
    bshape = tuple(num if i == gfeat else 1 for i in range(ghosts.ndim))
    scale = params["scale"].astype(cdt).reshape(bshape)
    bias = params["bias"].astype(cdt).reshape(bshape)
    axes = tuple(i for i in range(1, ghosts.ndim) if i != gfeat)
    norm = normalize_affine if grad == "analytic" else normalize_affine_autodiff
    y, mean, var = norm(ghosts, scale, bias, axes, eps, None, None)
    # (K, 1, ..., C, ..., 1) per-ghost statistics -> averaged over the K ghost batches.
    new_stats = running_stats_after_batch(
        batch_stats, jnp.mean(mean, axis=0), jnp.mean(var, axis=0), per_group,
        unbiased_var=unbiased_var, momentum=momentum, average=average,
    )
    return y.reshape(x.shape).astype(x.dtype), new_stats
