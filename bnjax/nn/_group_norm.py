"""Group normalization (Wu & He 2018, https://arxiv.org/abs/1803.08494) as a pure function."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from bnjax._typing import Array, Params, PRNGKey, State
from bnjax.nn import _checks
from bnjax.nn._stats import compute_dtype, normalize_affine, normalize_affine_autodiff

GRADS = ("analytic", "autodiff")
DEFAULT_GROUPS = 32


def group_norm_init(num_channels: int, *, dtype: Any = jnp.float32) -> tuple[Params, State]:
    """Parameters of a group-norm layer over ``num_channels`` channels.

    Returns:
      ``({"scale": ones((C,)), "bias": zeros((C,))}, {})`` -- per-channel affine (Flax's layout); group
      norm keeps no running statistics.
    """
    if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 1:
        raise ValueError(f"group_norm_init: num_channels={num_channels!r} must be a positive int.")
    return {"scale": jnp.ones((num_channels,), dtype), "bias": jnp.zeros((num_channels,), dtype)}, {}


def _resolve_groups(fn: str, channels: int, num_groups: int | None, group_size: int | None) -> int:
    if num_groups is not None and group_size is not None:
        raise ValueError(
            f"{fn}: got both num_groups={num_groups!r} and group_size={group_size!r}; pass only one of them."
        )
    divisors = [g for g in range(1, channels + 1) if channels % g == 0]
    if group_size is not None:
        if not isinstance(group_size, int) or group_size < 1 or channels % group_size:
            raise ValueError(
                f"{fn}: group_size={group_size!r} does not divide the {channels} channels of x; "
                f"use one of {divisors}."
            )
        return channels // group_size
    groups = DEFAULT_GROUPS if num_groups is None else num_groups
    if not isinstance(groups, int) or groups < 1 or channels % groups:
        default = " (the default)" if num_groups is None else ""
        raise ValueError(
            f"{fn}: num_groups={groups!r}{default} does not divide the {channels} channels of x; "
            f"pass num_groups= one of {divisors}."
        )
    return groups


def group_norm(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
               num_groups: int | None = None, group_size: int | None = None, eps: float = 1e-5,
               grad: str = "analytic") -> tuple[Array, State]:
    """Group normalization of a channels-last input ``(N, ..., C)``.

    The ``C`` channels are split into ``G`` contiguous groups of ``C/G``; each sample is normalised per group
    over its spatial axes and the ``C/G`` channels of the group (``n = prod(spatial) * C/G`` values)::

        mean_g = sum(x) / n,   var_g = sum((x - mean_g)**2) / n     (biased, two-pass, float32 or wider)
        y      = scale_c * (x - mean_g) / sqrt(var_g + eps) + bias_c

    with a per-channel ``scale``/``bias``. ``G = 1`` is layer norm over ``(..., C)`` with per-channel affine,
    ``G = C`` is instance norm. Axis 0 is the batch (never reduced); the computation is the same in train
    and eval mode and for any batch size. Defaults: 32 groups as in the paper and Flax when neither
    ``num_groups`` nor ``group_size`` is given; ``eps=1e-5`` as torch, Haiku and Equinox (Flax uses 1e-6).

    Gradients: ``grad="analytic"`` uses :func:`bnjax.normalize_affine`'s closed-form backward (the batch and
    group axes are simply not reduced); ``"autodiff"`` differentiates the plain forward (needed under ``jax.jvp``/``jax.jacfwd``; ``jax.hessian`` works with both).

    ``params`` is ``{"scale", "bias"}`` of shape ``(C,)``; ``x`` a floating ``(N, ..., C)`` of rank >= 2;
    ``num_groups`` the number of groups ``G`` (dividing ``C``; default 32), or ``group_size`` the channels per
    group ``C/G`` instead (give at most one); ``eps`` is added to the variance inside the root; ``batch_stats``,
    ``train``, ``key``, ``grad`` and the result ``(y, batch_stats)`` are as :func:`bnjax.layer_norm`'s.
    """
    del key
    fn = "group_norm"
    _checks.check_train(fn, train)
    x = _checks.check_float_input(fn, x)
    _checks.check_choice(fn, "grad", grad, GRADS)
    eps = _checks.check_eps(fn, eps)
    if x.ndim < 2:
        raise ValueError(
            f"{fn}: x has shape {x.shape}; group norm needs a batch axis and a channel axis, (N, ..., C). "
            f"For a single example pass x[None]."
        )
    channels = x.shape[-1]
    groups = _resolve_groups(fn, channels, num_groups, group_size)
    _checks.check_tree(
        fn, "params", params, {"scale": (channels,), "bias": (channels,)},
        f"x has {channels} channels on its last axis; create params with group_norm_init({channels}).",
    )
    cdt = compute_dtype(x.dtype)
    grouped = x.shape[:-1] + (groups, channels // groups)
    pshape = (1,) * (x.ndim - 1) + (groups, channels // groups)
    scale = params["scale"].astype(cdt).reshape(pshape)
    bias = params["bias"].astype(cdt).reshape(pshape)
    # Reduce over the spatial axes and the within-group channel axis; keep the batch and group axes.
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    norm = normalize_affine if grad == "analytic" else normalize_affine_autodiff
    y, _, _ = norm(x.astype(cdt).reshape(grouped), scale, bias, axes, eps, None, None)
    return y.reshape(x.shape).astype(x.dtype), batch_stats
