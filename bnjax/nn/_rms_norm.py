"""RMS normalization (Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467) with an analytic backward.

RMSNorm drops layer norm's mean subtraction and bias, so :func:`bnjax.normalize_affine` does not apply;
:func:`normalize_rms` is its no-centering counterpart with the same ``custom_vjp`` layout.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from bnjax._typing import Array, Params, PRNGKey, State
from bnjax.nn import _checks
from bnjax.nn._stats import _sum_to_shape, compute_dtype, jvp_help, match_varying

GRADS = ("analytic", "autodiff")


def normalize_rms_autodiff(x, scale, axes, eps):
    """RMS normalization in plain ``jnp`` (differentiated by JAX's autodiff); contract of :func:`normalize_rms`."""
    ms = jnp.mean(x * x, axis=axes, keepdims=True)
    return x * lax.rsqrt(ms + eps) * scale, ms


def normalize_rms(x, scale, axes, eps):
    """``y = scale * x / sqrt(mean(x**2) + eps)`` over ``axes``, with the hand-derived backward.

    Forward, per group of the ``n`` values reduced over ``axes``::

        ms = sum(x**2) / n,   inv = rsqrt(ms + eps),   xhat = x * inv,   y = scale * xhat

    Backward (``d inv / d x_j = -inv**3 * x_j / n``; sums over the group)::

        g      = dy * scale
        dx     = inv * (g - xhat * sum(g * xhat) / n) + dms * 2 * x / n
        dscale = sum over the broadcast axes of dy * xhat

    Args:
      x: input in the compute dtype.
      scale: array broadcastable to ``x`` (same dtype as ``x``).
      axes: static tuple of reduced axes.
      eps: static float added to the mean square inside the root.

    Returns:
      ``(y, ms)``; ``ms`` (the mean square) keeps the reduced axes as size 1.

    Reverse mode only; under ``jax.jvp``/``jax.jacfwd`` use :func:`normalize_rms_autodiff` (``grad="autodiff"``).
    """
    try:
        return _normalize_rms(x, scale, axes, eps)
    except TypeError as err:
        better = jvp_help("bnjax.normalize_rms", err, "normalize_rms_autodiff")
        if better is None:
            raise
        raise better from err


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _normalize_rms(x, scale, axes, eps):
    return normalize_rms_autodiff(x, scale, axes, eps)


def _normalize_rms_fwd(x, scale, axes, eps):
    ms = jnp.mean(x * x, axis=axes, keepdims=True)
    inv = lax.rsqrt(ms + eps)
    xhat = x * inv
    return (xhat * scale, ms), (xhat, inv, scale)


def _normalize_rms_bwd(axes, eps, res, cts):
    del eps
    xhat, inv, scale = res
    dy, dms = cts
    assert dy.shape == xhat.shape and inv.shape == dms.shape
    n = xhat.size // inv.size
    g = dy * scale
    sum_gx = jnp.sum(g * xhat, axis=axes, keepdims=True)
    # x = xhat / inv recovers the input for the (usually zero) cotangent of the returned mean square.
    dx = inv * (g - xhat * sum_gx / n) + dms * 2.0 * xhat / (inv * n)
    # Under shard_map a replicated scale gets the sum of the per-device gradients (see match_varying).
    dscale = match_varying(_sum_to_shape(dy * xhat, scale.shape), scale)
    return match_varying(dx, xhat), dscale


_normalize_rms.defvjp(_normalize_rms_fwd, _normalize_rms_bwd)


def rms_norm_init(shape: int | Sequence[int], *, dtype: Any = jnp.float32) -> tuple[Params, State]:
    """Parameters of an RMS-norm layer over feature axes of size ``shape`` (an int for one axis).

    Returns:
      ``({"scale": ones(shape)}, {})`` -- scale only (no bias, as Flax/Haiku/torch/Keras), no statistics.
    """
    shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape_t or any((not isinstance(s, int)) or isinstance(s, bool) or s < 1 for s in shape_t):
        raise ValueError(f"rms_norm_init: shape={shape!r} must be a positive int or a tuple of them.")
    return {"scale": jnp.ones(shape_t, dtype)}, {}


def rms_norm(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
             axis: int | Sequence[int] = -1, eps: float = 1e-6, grad: str = "analytic") -> tuple[Array, State]:
    """RMS normalization: each sample scaled by the root mean square of its feature axes.

    For every index of the non-feature axes, over the ``D`` values of the feature ``axis``::

        y = scale * x / sqrt(sum(x**2) / D + eps)          (mean square in float32 or wider)

    No mean is subtracted and there is no bias. The same computation in train and eval mode, for any batch
    size. ``eps=1e-6`` as Flax (``nn.RMSNorm``) and Keras; Haiku and Equinox use 1e-5, torch's
    ``nn.RMSNorm(eps=None)`` uses ``finfo(dtype).eps`` (1.19e-7 in float32) -- pass ``eps`` to match them.

    Gradients: ``grad="analytic"`` uses the closed-form backward of :func:`normalize_rms`; ``"autodiff"``
    differentiates the plain forward (needed under ``jax.jvp``/``jax.jacfwd``; ``jax.hessian`` works with both).

    ``params`` is ``{"scale"}`` with the shape of ``x`` on the feature axes; ``eps`` is added to the mean square
    inside the root; ``batch_stats``, ``x``, ``train``, ``key``, ``axis``, ``grad`` and the result ``(y,
    batch_stats)`` are as :func:`bnjax.layer_norm`'s.
    """
    del key
    fn = "rms_norm"
    _checks.check_train(fn, train)
    _checks.check_choice(fn, "grad", grad, GRADS)
    x, feats, fshape = _checks.check_feature_input(fn, params, x, axis, ("scale",), "rms_norm_init")
    eps = _checks.check_eps(fn, eps)
    cdt = compute_dtype(x.dtype)
    bshape = tuple(x.shape[i] if i in feats else 1 for i in range(x.ndim))
    scale = params["scale"].astype(cdt).reshape(bshape)
    norm = normalize_rms if grad == "analytic" else normalize_rms_autodiff
    y, _ = norm(x.astype(cdt), scale, feats, eps)
    return y.astype(x.dtype), batch_stats
