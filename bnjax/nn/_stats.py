"""The normalization math, written once and shared by batch, layer, group and RMS norm.

* :func:`compute_stats` -- per-group mean and (biased) variance over ``axes``: two passes, accumulated in
  at least float32, count-weighted across a named ``vmap``/``shard_map`` axis, optionally masked.
* :func:`normalize_affine` -- ``y = (x - mean) * rsqrt(var + eps) * scale + bias`` in train mode, returning
  ``(y, mean, var)``, with the hand-derived backward (``jax.custom_vjp``) of Ioffe & Szegedy (2015)
  in its simplified closed form; :func:`normalize_affine_autodiff` is the same forward for plain autodiff.
* :func:`update_running_stats` -- the EMA / cumulative-average rule for running statistics.

Shapes: ``x`` has any rank; ``axes`` are the reduced axes; ``scale`` and ``bias`` broadcast against
``x`` (size 1 on every axis they are shared along); ``mean`` and ``var`` keep the reduced axes with size 1.

Masks: a ``mask`` (boolean or 0/1, broadcastable to ``x``) is applied by *selection* (``jnp.where``), never by
multiplication, so a masked-out entry influences nothing whatever it holds (``NaN * 0`` is ``NaN``): not the
statistics, not the gradient of any other entry or of ``scale``/``bias``, and its own cotangent is exactly 0.
Its output is still computed as the formula gives (``NaN`` for ``NaN`` filler, as Flax) but carries no
gradient. A group with no valid entry (``count == 0``) has ``NaN`` statistics.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

Array = jax.Array
AxisName = Any  # a hashable axis name or a tuple of them, as jax.lax.psum takes


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype statistics are accumulated in: float32 for bfloat16/float16/float32, float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _psum(tree: Any, axis_name: AxisName | None) -> Any:
    return tree if axis_name is None else lax.psum(tree, axis_name)


def real_dtype(dtype: Any) -> jnp.dtype:
    """The real dtype of the same precision (``float32`` for ``complex64``; real dtypes unchanged)."""
    return jnp.finfo(dtype).dtype


def mask_bool(mask: Array | None, shape: tuple[int, ...]) -> Array | None:
    """``mask != 0`` broadcast to ``shape`` (``None`` stays ``None``): the selector every masked sum uses."""
    return None if mask is None else jnp.broadcast_to(jnp.asarray(mask) != 0, shape)


def _abs_sq(c: Array) -> Array:
    """``|c|**2`` in the real dtype (Flax's complex variance is ``mean(|x - mean|**2)``)."""
    if jnp.iscomplexobj(c):
        return c.real * c.real + c.imag * c.imag
    return c * c


def group_count(
    x: Array, axes: tuple[int, ...], *, axis_name: AxisName | None = None, mask: Array | None = None
) -> Array:
    """Number of values each statistic of :func:`compute_stats` is taken over (keepdims shape, real dtype)."""
    cdt = real_dtype(compute_dtype(x.dtype))
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if mask is None:
        count = jnp.full(keep, math.prod(x.shape[a] for a in axes), cdt)
    else:
        count = jnp.sum(mask_bool(mask, x.shape), axis=axes, keepdims=True, dtype=cdt)
    return _psum(count, axis_name)


def compute_stats(
    x: Array,
    axes: tuple[int, ...],
    *,
    axis_name: AxisName | None = None,
    mask: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Mean and biased variance of ``x`` over ``axes``.

    ``mean = sum_{m != 0}(x) / n`` and ``var = sum_{m != 0}(|x - mean|**2) / n`` with ``n`` the number of
    entries where the mask ``m`` is non-zero, the sums also running over every device/member of ``axis_name``.
    Masked-out entries are selected away (``jnp.where``), so ``NaN``/``inf`` filler there changes nothing, in the
    values or in their derivatives. Each device contributes by its element count, so
    unequal counts (padding removed by ``mask``) still give the exact global statistics -- unlike a mean of
    per-device means (google/flax#2417).

    Numerics: two passes (the one-pass ``E[x^2] - E[x]^2`` loses every digit for inputs like
    ``1e4 + N(0, 1)`` in float32), accumulated in :func:`compute_dtype` of ``x`` (float32 for bfloat16).

    Args:
      x: input of any rank.
      axes: non-negative axes to reduce.
      axis_name: optional named axis (``vmap``/``shard_map``/``pmap``) to reduce across as well.
      mask: optional boolean/0-1 array broadcastable to ``x``; entries with 0 are left out.

    Returns:
      ``(mean, var, count)``, each with the reduced axes kept as size 1: ``mean`` in the compute dtype, ``var``
      and ``count`` in its real dtype (complex inputs, as Flax: complex mean, real ``|x - mean|**2`` variance).
    """
    cdt = compute_dtype(x.dtype)
    xf = x.astype(cdt)
    m = mask_bool(mask, x.shape)
    count = group_count(x, axes, axis_name=axis_name, mask=mask)
    total = _psum(jnp.sum(xf if m is None else jnp.where(m, xf, 0), axis=axes, keepdims=True), axis_name)
    mean = total / count
    centred = xf - mean
    if m is not None:
        centred = jnp.where(m, centred, 0)
    var = _psum(jnp.sum(_abs_sq(centred), axis=axes, keepdims=True), axis_name) / count
    return mean, var, count


def _varying_axes(a: Array) -> frozenset:
    """Mesh axes ``a`` varies over inside ``shard_map`` (empty outside one, or on a JAX without these types)."""
    aval = jax.typeof(a) if hasattr(jax, "typeof") else None
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def match_varying(ct: Array, primal: Array) -> Array:
    """Sums a custom-VJP cotangent over the mesh axes it varies over but its primal input does not.

    ``shard_map`` (``check_vma=True``) requires a ``custom_vjp`` backward to return cotangents typed like the
    inputs. A parameter replicated over the mesh (``scale`` with ``x`` sharded over ``"data"``) receives a
    per-device partial gradient, and its full gradient is the sum over devices -- what JAX's own transpose of
    the implicit ``pvary`` does. A no-op outside ``shard_map``.
    """
    extra = tuple(_varying_axes(ct) - _varying_axes(primal))
    return lax.psum(ct, extra) if extra else ct


def _sum_to_shape(a: Array, shape: tuple[int, ...]) -> Array:
    """Sums ``a`` over the axes along which an array of ``shape`` was broadcast to ``a.shape``."""
    axes = tuple(i for i, (s, t) in enumerate(zip(shape, a.shape)) if s == 1 and t != 1)
    return jnp.sum(a, axis=axes, keepdims=True).reshape(shape)


def normalize_affine_autodiff(x, scale, bias, axes, eps, axis_name=None, mask=None):
    """Train-mode normalization written in plain ``jnp`` (differentiated by JAX's autodiff).

    Same contract as :func:`normalize_affine` (masked-out outputs carry no gradient here too); use it under
    forward-mode transforms (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``), which a ``custom_vjp`` does not
    support, and for complex inputs.
    """
    mean, var, _ = compute_stats(x, axes, axis_name=axis_name, mask=mask)
    inv = lax.rsqrt(var + eps)
    if mask is None:
        return (x - mean) * inv * scale + bias, mean, var
    m = mask_bool(mask, x.shape)
    # Differentiated branch on filler-free input (a NaN there would turn 0 * d/dx into NaN); the masked-out
    # outputs are Flax's values, held constant for differentiation.
    y_valid = (jnp.where(m, x, 0) - mean) * inv * scale + bias
    y_rest = lax.stop_gradient((x - mean) * inv * scale + bias)
    return jnp.where(m, y_valid, y_rest), mean, var


_JVP_HELP = (
    "forward-mode differentiation (jax.jvp, jax.jacfwd, jax.linearize) cannot go through the layers' analytic "
    "backward (a jax.custom_vjp); pass grad=\"autodiff\" to the layer ({autodiff} for the bare function). "
    "Reverse mode (jax.grad, jax.vjp, jax.jacrev) and jax.hessian work with the default."
)


def jvp_help(fn: str, err: TypeError, autodiff: str) -> TypeError | None:
    """For JAX's generic "can't apply forward-mode autodiff (jvp) to a custom_vjp function": the same error
    with the fix named (``None`` for any other ``TypeError``). JAX offers no hook on ``custom_vjp`` for this
    message, so callers catch it where the transform meets the call (eager ``jax.jvp``/``jax.jacfwd``)."""
    if "forward-mode" in str(err) and "custom_vjp" in str(err):
        return TypeError(f"{fn}: {_JVP_HELP.format(autodiff=autodiff)}")
    return None


def normalize_affine(x, scale, bias, axes, eps, axis_name=None, mask=None):
    """Train-mode normalization with the analytic backward.

    Forward: ``xhat = (x - mean) * rsqrt(var + eps)``, ``y = scale * xhat + bias``, statistics from
    :func:`compute_stats` over ``axes`` (eps inside the root).

    Backward (per group of ``n`` valid elements, sums over the group and over ``axis_name``; ``m`` is the
    mask, 1 without one; ``dy`` and ``xhat`` are taken as 0 where ``m`` is 0)::

        g      = dy * scale
        dx     = rsqrt(var + eps) * (g - m * sum(g) / n - m * xhat * sum(g * xhat) / n)
                 + m * dmean / n + m * dvar * 2 * (x - mean) / n
        dscale = sum over the broadcast axes of dy * xhat
        dbias  = sum over the broadcast axes of dy

    Where ``scale`` is constant over each group (batch norm), ``sum(g)`` and ``sum(g * xhat)`` are ``scale``
    times the group sums of ``dy`` and ``dy * xhat`` that ``dbias`` and ``dscale`` need anyway, so the backward
    makes two reductions (over ``dy`` and ``dy * (x - mean)``), not four; the residual is ``x - mean``, which
    the variance already forms, rather than a new ``xhat``.

    so masked-out entries get a zero cotangent and add nothing to any other gradient, whatever they hold.

    Reverse mode only (``jax.grad``/``vjp``/``jacrev``, ``jax.hessian`` = forward-over-reverse); under
    ``jax.jvp``/``jax.jacfwd`` use :func:`normalize_affine_autodiff` (the error says so when the forward-mode
    transform is applied to this call directly; under ``jit`` JAX raises its own generic message).

    Args:
      x: real floating input in the compute dtype.
      scale, bias: arrays broadcastable to ``x`` (same dtype as ``x``).
      axes: static tuple of reduced axes.
      eps: static float added to the variance inside the square root.
      axis_name: static optional named axis for cross-device statistics.
      mask: optional array broadcastable to ``x`` (no gradient flows to it).

    Returns:
      ``(y, mean, var)``; ``mean`` and ``var`` keep the reduced axes as size 1.
    """
    if jnp.iscomplexobj(x):
        raise TypeError(
            f"normalize_affine: x has dtype {jnp.asarray(x).dtype}; the analytic backward is derived for real "
            f"inputs. Use normalize_affine_autodiff (grad=\"autodiff\") for complex x."
        )
    try:
        return _normalize_affine(x, scale, bias, axes, eps, axis_name, mask)
    except TypeError as err:
        better = jvp_help("bnjax.normalize_affine", err, "normalize_affine_autodiff")
        if better is None:
            raise
        raise better from err


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _normalize_affine(x, scale, bias, axes, eps, axis_name=None, mask=None):
    return normalize_affine_autodiff(x, scale, bias, axes, eps, axis_name, mask)


def _primal(v: Any) -> Any:
    return v.value if isinstance(v, CustomVJPPrimal) else v


def _normalize_affine_fwd(x, scale, bias, axes, eps, axis_name, mask):
    # symbolic_zeros=True: array arguments arrive wrapped as CustomVJPPrimal(value, perturbed).
    x, scale, bias, mask = _primal(x), _primal(scale), _primal(bias), jax.tree.map(_primal, mask)
    mean, var, count = compute_stats(x, axes, axis_name=axis_name, mask=mask)
    inv = lax.rsqrt(var + eps)
    # The residual is x - mean, the array compute_stats already forms for the variance (shared by CSE), not
    # xhat: a compiler that materialises it then writes no extra array for the backward.
    centred = x - mean
    y = centred * inv * scale + bias
    if mask is not None:
        mask = jnp.asarray(mask) != 0  # kept unbroadcast; selects the residual (and dy) in the backward
        centred = jnp.where(mask, centred, 0)
    return (y, mean, var), (centred, inv, count, scale, bias, mask)


def _normalize_affine_bwd(axes, eps, axis_name, res, cts):
    del eps
    centred, inv, count, scale, bias, mask = res
    dy, dmean, dvar = cts
    if isinstance(dy, SymbolicZero):
        dy = jnp.zeros_like(centred)
    assert dy.shape == centred.shape and inv.shape == count.shape
    mb = None
    if mask is not None:
        # Select, don't multiply: a NaN cotangent at a masked-out output must not leak either.
        mb = jnp.broadcast_to(mask, centred.shape)
        dy = jnp.where(mb, dy, 0)
    if all(scale.shape[a] == 1 for a in axes):
        # scale is constant over each group (batch norm): the group sums of g = dy * scale and g * xhat are
        # scale times those of dy and dy * xhat, which are also dbias and dscale before the sum over the other
        # broadcast axes. Two reductions over (dy, centred) instead of four, and xhat never formed in full:
        # dx = inv * scale * (dy - sum(dy) / n - centred * inv**2 * sum(dy * centred) / n).
        sum_dy = jnp.sum(dy, axis=axes, keepdims=True)
        sum_dyc = jnp.sum(dy * centred, axis=axes, keepdims=True)
        all_dy, all_dyc = _psum((sum_dy, sum_dyc), axis_name)
        factor, value = inv * scale, dy
        group = all_dy / count + centred * (inv * inv * all_dyc / count)
        dscale_terms, dbias_terms = sum_dyc * inv, sum_dy
    else:
        # scale varies inside a group (layer and group norm): the group sums of g and g * xhat as they are.
        xhat = centred * inv
        g = dy * scale
        sum_g, sum_gx = _psum(
            (jnp.sum(g, axis=axes, keepdims=True), jnp.sum(g * xhat, axis=axes, keepdims=True)), axis_name
        )
        factor, value = inv, g
        group = sum_g / count + xhat * (sum_gx / count)
        dscale_terms, dbias_terms = dy * xhat, dy
    if mb is not None:
        # value and centred are 0 at masked-out entries; the group terms are selected away, so dx is 0 there.
        group = jnp.where(mb, group, 0)
    dx = factor * (value - group)
    # The stats outputs feed running statistics; their cotangents are usually zero but are honoured, so
    # the VJP is exact for any function of (y, mean, var). d mean/dx = m/n, d var/dx = 2 m (x - mean)/n.
    # Symbolic zeros (the usual case: running statistics carry no gradient) skip these full-size terms.
    stat_terms = None
    if not isinstance(dmean, SymbolicZero):
        stat_terms = dmean / count
    if not isinstance(dvar, SymbolicZero):
        dv = dvar * 2.0 * centred / count
        stat_terms = dv if stat_terms is None else stat_terms + dv
    if stat_terms is not None:
        dx = dx + (stat_terms if mb is None else jnp.where(mb, stat_terms, 0))
    dscale = match_varying(_sum_to_shape(dscale_terms, scale.shape), scale)
    dbias = match_varying(_sum_to_shape(dbias_terms, bias.shape), bias)
    return match_varying(dx, centred), dscale, dbias, None


_normalize_affine.defvjp(_normalize_affine_fwd, _normalize_affine_bwd, symbolic_zeros=True)
