"""Layer normalization (Ba, Kiros & Hinton 2016, https://arxiv.org/abs/1607.06450) as a pure function."""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

from bnjax._typing import Array, Params, PRNGKey, State
from bnjax.nn import _checks
from bnjax.nn._stats import compute_dtype, normalize_affine, normalize_affine_autodiff

GRADS = ("analytic", "autodiff")


def layer_norm_init(shape: int | Sequence[int], *, dtype: Any = jnp.float32) -> tuple[Params, State]:
    """Parameters of a layer-norm layer over feature axes of size ``shape`` (an int for one axis).

    Returns:
      ``({"scale": ones(shape), "bias": zeros(shape)}, {})`` -- layer norm keeps no running statistics.
    """
    shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape_t or any((not isinstance(s, int)) or s < 1 for s in shape_t):
        raise ValueError(f"layer_norm_init: shape={shape!r} must be a positive int or a tuple of them.")
    return {"scale": jnp.ones(shape_t, dtype), "bias": jnp.zeros(shape_t, dtype)}, {}


def layer_norm(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
               axis: int | Sequence[int] = -1, eps: float = 1e-5, mask: Array | None = None, grad: str = "analytic"
               ) -> tuple[Array, State]:
    """Layer normalization: each sample normalised over its feature axes.

    For every index of the non-feature (batch) axes, over the ``D`` values of the feature ``axis``::

        mean = sum(x) / D,   var = sum((x - mean)**2) / D     (biased, two-pass, float32 or wider)
        y    = scale * (x - mean) / sqrt(var + eps) + bias

    The same computation in train and eval mode (``train`` is accepted for the shared signature), for any
    batch size including 1. ``eps=1e-5`` as in CS231n, torch and Haiku (Flax uses 1e-6: pass
    ``eps=1e-6`` for Flax parity). ``mask`` leaves entries out of each sample's statistics by selection, as in
    :func:`bnjax.batch_norm` (``NaN`` filler is harmless; masked-out entries get no gradient). ``grad`` selects
    the analytic ``custom_vjp`` backward (default; reverse mode and ``jax.hessian``) or autodiff (needed under
    ``jax.jvp``/``jax.jacfwd``); see :func:`bnjax.batch_norm`.

    Args:
      params: ``{"scale", "bias"}`` with the shape of ``x`` on the feature axes.
      batch_stats: returned unchanged (normally ``{}``).
      x: floating input, e.g. ``(N, D)`` or ``(N, T, D)``.
      train: unused; Python bool.
      key: unused.
      axis: feature axis or axes (default ``-1``).
      eps: added to the variance inside the square root (>= 0).
      mask: optional boolean/0-1 array broadcastable to ``x``; zero entries are left out of the statistics.
      grad: ``"analytic"`` or ``"autodiff"``.

    Returns:
      ``(y, batch_stats)``; ``y`` has the shape and dtype of ``x``.
    """
    del key
    fn = "layer_norm"
    _checks.check_train(fn, train)
    _checks.check_choice(fn, "grad", grad, GRADS)
    x, feats, fshape = _checks.check_feature_input(fn, params, x, axis, ("scale", "bias"), "layer_norm_init")
    eps = _checks.check_eps(fn, eps)
    mask = _checks.check_mask(fn, mask, x.shape)
    cdt = compute_dtype(x.dtype)
    bshape = tuple(x.shape[i] if i in feats else 1 for i in range(x.ndim))
    scale = params["scale"].astype(cdt).reshape(bshape)
    bias = params["bias"].astype(cdt).reshape(bshape)
    norm = normalize_affine if grad == "analytic" else normalize_affine_autodiff
    y, _, _ = norm(x.astype(cdt), scale, bias, feats, eps, None, mask)
    return y.astype(x.dtype), batch_stats
