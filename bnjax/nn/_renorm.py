"""Batch renormalization (Ioffe 2017, https://arxiv.org/abs/1702.03275) as a pure function."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from bnjax._typing import Array, Params, PRNGKey, State
from bnjax.nn import _checks
from bnjax.nn._batch_norm import (
    batch_norm,
    check_train_args,
    check_train_batch,
    running_stats_after_batch,
)
from bnjax.nn._stats import (
    AxisName,
    compute_dtype,
    compute_stats,
    group_count,
    normalize_affine,
    normalize_affine_autodiff,
)


def renorm_schedule(
    step: Any,
    *,
    warmup_steps: int,
    rmax_final: float = 3.0,
    dmax_final: float = 5.0,
    hold_steps: int = 0,
    dmax_warmup_steps: int | None = None,
) -> tuple[Array, Array]:
    """The paper's relaxation schedule for :func:`batch_renorm`'s clipping bounds ``(rmax, dmax)``.

    Plain batch norm (``rmax = 1``, ``dmax = 0``) for the first ``hold_steps`` steps, then linear ramps::

        rmax(step) = 1 + (rmax_final - 1) * clip((step - hold_steps) / warmup_steps, 0, 1)
        dmax(step) = dmax_final * clip((step - hold_steps) / dmax_warmup_steps, 0, 1)

    (``dmax_warmup_steps`` defaults to ``warmup_steps``; an infinite final bound is reached at once, after the
    hold). Ioffe (2017) holds for 5k steps and reaches ``rmax = 3`` at 40k and ``dmax = 5`` at 25k steps:
    ``hold_steps=5000, warmup_steps=35000, dmax_warmup_steps=20000``. ``step`` may be a traced integer (inside a jitted train step).

    Returns:
      ``(rmax, dmax)`` as float32 scalars.
    """
    fn = "renorm_schedule"
    for name, v in (("warmup_steps", warmup_steps), ("dmax_warmup_steps", dmax_warmup_steps)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{fn}: {name}={v!r} must be a positive int (steps of the linear ramp).")
    if not isinstance(hold_steps, int) or hold_steps < 0:
        raise ValueError(f"{fn}: hold_steps={hold_steps!r} must be a non-negative int.")
    if not (rmax_final >= 1.0 and dmax_final >= 0.0):  # NaN fails too
        raise ValueError(
            f"{fn}: rmax_final={rmax_final!r} must be >= 1 and dmax_final={dmax_final!r} >= 0 "
            f"(rmax=1, dmax=0 is plain batch norm)."
        )
    d_steps = warmup_steps if dmax_warmup_steps is None else dmax_warmup_steps
    t = jnp.asarray(step, jnp.float32) - hold_steps
    fr, fd = jnp.clip(t / warmup_steps, 0.0, 1.0), jnp.clip(t / d_steps, 0.0, 1.0)
    # Selected, not multiplied, at the start of the ramp: an unbounded final clip (inf) times 0 would be NaN.
    rmax = jnp.where(fr > 0, 1.0 + (rmax_final - 1.0) * fr, 1.0)
    dmax = jnp.where(fd > 0, dmax_final * fd, 0.0)
    return rmax, dmax


def batch_renorm(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
                 axis: int = -1, rmax: Any = 3.0, dmax: Any = 5.0, momentum: Any = 0.99, eps: float = 1e-5,
                 average: str = "ema", unbiased_var: bool = False, axis_name: AxisName | None = None,
                 mask: Array | None = None, grad: str = "analytic") -> tuple[Array, State]:
    """Batch renormalization: batch norm corrected towards the running statistics during training.

    Train mode, per feature, with batch statistics ``mean_B, var_B`` (as :func:`bnjax.batch_norm`) and the
    running ones ``mu = stats["mean"]``, ``sigma = sqrt(stats["var"] + eps)``::

        sigma_B = sqrt(var_B + eps),   xhat = (x - mean_B) / sigma_B
        r = stop_gradient(clip(sigma_B / sigma, 1 / rmax, rmax))
        d = stop_gradient(clip((mean_B - mu) / sigma, -dmax, dmax))
        y = scale * (xhat * r + d) + bias

    and the running statistics are then updated from ``mean_B, var_B`` exactly as in batch norm. When
    neither clip is active, ``y = scale * (x - mu) / sigma + bias`` -- the eval-mode output -- so training
    and inference agree; ``rmax = 1, dmax = 0`` is plain batch norm. Eval mode *is* eval-mode batch norm.
    Relax ``rmax``/``dmax`` over training with :func:`renorm_schedule`; both may be traced arrays.

    Running statistics: the paper keeps an EMA of ``sigma``; here the EMA is of the variance (as in batch
    norm, so checkpoints, :func:`bnjax.fold_batch_norm` and eval mode are shared) and ``sigma`` is derived
    from it. ``momentum=0.99`` (update rate ``alpha = 1 - momentum = 0.01`` in the paper's notation; Keras's
    ``renorm_momentum`` default): the running statistics enter the training forward, so they should move
    slowly.

    Gradients: ``r`` and ``d`` are constants for differentiation, so the VJP is batch norm's with the affine
    ``(scale * r, scale * d + bias)``: ``dx`` is the batch-norm backward with ``g = dy * scale * r``,
    ``dscale = sum(dy * (xhat * r + d))``, ``dbias = sum(dy)``. ``grad="analytic"`` runs it through
    :func:`bnjax.normalize_affine`'s closed form, ``"autodiff"`` through the plain forward.

    Args:
      params: ``{"scale", "bias"}`` of shape ``(C,)`` (create with :func:`bnjax.batch_norm_init`).
      batch_stats: ``{"mean", "var"}`` (plus ``"count"`` for ``average="cumulative"``) of shape ``(C,)``.
      x: floating input with ``x.shape[axis] == C``, e.g. ``(N, C)`` or ``(N, H, W, C)``.
      train: Python bool.
      key: unused.
      axis: the feature axis (default ``-1``).
      rmax: upper clip of ``r`` (>= 1; the lower one is ``1 / rmax``), default 3 (the paper's final value).
      dmax: clip of ``|d|`` (>= 0), default 5 (the paper's final value).
      momentum, eps, average, unbiased_var, axis_name, mask, grad: as :func:`bnjax.batch_norm`.

    Returns:
      ``(y, new_batch_stats)``; ``y`` has the shape and dtype of ``x``.
    """
    fn = "batch_renorm"
    checked = check_train_args(fn, params, batch_stats, x, train, axis=axis, average=average, grad=grad,
                               momentum=momentum, eps=eps)
    if checked is None:  # eval mode: the running statistics, as batch norm
        return batch_norm(params, batch_stats, x, False, axis=axis, eps=eps, average=average)
    x, feat, num, eps = checked
    _checks.check_in_range(fn, "rmax", rmax, 1.0, float("inf"))
    _checks.check_in_range(fn, "dmax", dmax, 0.0, float("inf"))
    mask = _checks.check_mask(fn, mask, x.shape)
    check_train_batch(fn, x, num, axis_name, mask)

    cdt = compute_dtype(x.dtype)
    bshape = tuple(num if i == feat else 1 for i in range(x.ndim))
    xc = x.astype(cdt)
    scale = params["scale"].astype(cdt).reshape(bshape)
    bias = params["bias"].astype(cdt).reshape(bshape)
    axes = tuple(i for i in range(x.ndim) if i != feat)

    # r and d are computed from stop-gradient statistics (the paper's stop_gradient); under jit the
    # statistics computed again inside normalize_affine are the same expressions and are shared by CSE.
    mean_b, var_b, _ = jax.lax.stop_gradient(compute_stats(xc, axes, axis_name=axis_name, mask=mask))
    mu = batch_stats["mean"].astype(cdt).reshape(bshape)
    inv_sigma = jax.lax.rsqrt(batch_stats["var"].astype(cdt).reshape(bshape) + eps)
    rmax_c = jnp.asarray(rmax, cdt)
    dmax_c = jnp.asarray(dmax, cdt)
    r = jnp.clip(jnp.sqrt(var_b + eps) * inv_sigma, 1.0 / rmax_c, rmax_c)
    d = jnp.clip((mean_b - mu) * inv_sigma, -dmax_c, dmax_c)

    norm = normalize_affine if grad == "analytic" else normalize_affine_autodiff
    y, mean, var = norm(xc, scale * r, scale * d + bias, axes, eps, axis_name, mask)
    count = group_count(x, axes, axis_name=axis_name, mask=mask) if unbiased_var else None
    new_stats = running_stats_after_batch(
        batch_stats, mean, var, count, unbiased_var=unbiased_var, momentum=momentum, average=average
    )
    return y.astype(x.dtype), new_stats
