"""Argument checks shared by the layers. Every message names the argument, the value and the fix."""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np


def is_int(v: Any) -> bool:
    """A Python int that is not a bool (config and spec validation)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A Python int or float that is not a bool (it may be inf or NaN: see :func:`is_finite`)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite(v: Any) -> bool:
    """A Python int or a finite float, not a bool (config and spec validation: rejects inf, -inf and NaN)."""
    return is_number(v) and math.isfinite(v)


def concrete_float(value: Any) -> float | None:
    """``float(value)`` when it is known at trace time, ``None`` for a tracer (e.g. a vmapped rate)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything unconvertible is treated as traced
        return None
    if arr.ndim != 0:
        return None
    return float(arr)


PRECISIONS = ("default", "high", "highest")
"""The matmul precisions a layer or config accepts by name (``jax.lax.Precision``'s values)."""
PRECISION_EXPECTED = (f"is not a matmul precision; use one of {PRECISIONS} ('highest' is true float32) or leave it "
                      f"unset (JAX's default: TF32 for float32 matmuls on NVIDIA GPUs).")
"""The settings dataclasses' message for a bad precision (``MLPSpec.precision``, ``TrainConfig.matmul_precision``)."""


def check_precision(fn: str, name: str, value: Any) -> jax.lax.Precision | None:
    """``value`` as the ``precision=`` of ``jax.lax.dot_general``/``conv_general_dilated``: None (JAX's default,
    ``jax_default_matmul_precision``), ``"default"``, ``"high"``, ``"highest"`` or a ``jax.lax.Precision``."""
    if value is None or isinstance(value, jax.lax.Precision):
        return value
    if isinstance(value, str) and value in PRECISIONS:
        return jax.lax.Precision(value)
    raise ValueError(
        f"{fn}: {name}={value!r} is not a matmul precision; use None (JAX's default, which runs float32 matmuls "
        f"as TF32 on NVIDIA GPUs), 'default', 'high', 'highest' (true float32) or a jax.lax.Precision."
    )


def check_choice(fn: str, name: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{fn}: {name}={value!r} is not a valid option; use one of {choices}.")


MOMENTUM_RANGE = "must be in [0, 1] (new = momentum * old + (1 - momentum) * batch)."
DROP_RATE_RANGE = "is the drop probability and must be in [0, 1) (keep = 1 - rate)."


def momentum_ok(v: float) -> bool:
    """The one rule of a running-average momentum (``MLPSpec.bn_momentum``, a member's ``bn_momentum``; ``batch_norm``
    checks the same range with :func:`check_in_range`): ``0 <= v <= 1``."""
    return 0.0 <= v <= 1.0


def drop_rate_ok(v: float) -> bool:
    """The one rule of a training drop rate (``MLPSpec.dropout``, a member's ``dropout``): ``0 <= v < 1`` (the
    pure :func:`bnjax.dropout` also takes 1, all dropped)."""
    return 0.0 <= v < 1.0


def check_in_range(fn: str, name: str, value: Any, lo: float, hi: float) -> None:
    """Checks ``lo <= value <= hi`` when ``value`` is concrete; traced values pass through."""
    v = concrete_float(value)
    if v is not None and not (lo <= v <= hi):
        raise ValueError(f"{fn}: {name}={v!r} is outside [{lo}, {hi}]; pass a value in that range.")


def check_float_input(fn: str, x: Any, *, allow_complex: bool = False) -> jax.Array:
    """``x`` as an array of a real floating dtype (or complex, when ``allow_complex``); else a ``TypeError``."""
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{fn}: x of type {type(x).__name__} is not an array; pass a jax or NumPy array.") from err
    if jnp.iscomplexobj(x) and not allow_complex:
        raise TypeError(
            f"{fn}: x has dtype {x.dtype}; bnjax's functional layers take real floating inputs (their analytic "
            f"backward is derived for real x). Treat the real and imaginary parts as separate features, e.g. "
            f"jnp.concatenate([x.real, x.imag], axis=-1), or use the BatchNorm/LayerNorm of bnjax.flax, which "
            f"normalise complex inputs as Flax does."
        )
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(
            f"{fn}: x has dtype {x.dtype}, but normalization and dropout need a floating-point input; "
            f"cast it first, e.g. x.astype(jnp.float32)."
        )
    return x


def check_train(fn: str, train: Any) -> None:
    """``train`` selects code paths, so it must be a Python bool (static under ``jit``), not an array."""
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(
            f"{fn}: train={train!r} must be a Python bool (it selects batch or running statistics while "
            f"tracing); under jax.jit mark it static, e.g. jax.jit(apply, static_argnames='train')."
        )


def check_eps(fn: str, eps: Any) -> float:
    """``eps`` as a Python float >= 0 (it is a static argument of the ``custom_vjp``)."""
    v = concrete_float(eps)
    if v is None or not 0.0 <= v < math.inf:
        raise ValueError(
            f"{fn}: eps={eps!r} must be a concrete finite number >= 0 (it is added to the variance inside the square "
            f"root), e.g. eps=1e-5."
        )
    return v


def check_mask(fn: str, mask: Any, shape: tuple[int, ...]) -> jax.Array | None:
    """``mask`` (``None``, or boolean/0-1 values broadcastable to ``shape``) as an array."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    try:
        np.broadcast_shapes(mask.shape, shape)
        fits = len(mask.shape) <= len(shape) and np.broadcast_shapes(mask.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{fn}: mask has shape {mask.shape}, which does not broadcast to x.shape={tuple(shape)}; pass a "
            f"boolean mask of x's shape or one with size-1 axes, e.g. {tuple(shape[:1]) + (1,) * (len(shape) - 1)} "
            f"for whole rows."
        )
    if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.number)) or jnp.iscomplexobj(mask):
        raise TypeError(f"{fn}: mask has dtype {mask.dtype}; pass a boolean (or 0/1 numeric) array.")
    return mask


def normalize_axes(fn: str, name: str, axis: int | Iterable[int], ndim: int) -> tuple[int, ...]:
    """Turns ``axis`` (an int or a sequence of ints, negatives allowed) into sorted non-negative axes."""
    try:
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    except TypeError:
        axes = (axis,)
    if isinstance(axis, str) or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
        raise TypeError(f"{fn}: {name}={axis!r} must be an int or a sequence of ints (axes of x, negatives allowed).")
    out = []
    for a in axes:
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"{fn}: {name}={axis!r} is out of range for an input of rank {ndim}.")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{fn}: {name}={axis!r} repeats an axis.")
    return tuple(sorted(out))


def check_tree(fn: str, argname: str, tree: Any, expected: dict[str, tuple[int, ...]], fix: str) -> None:
    """Checks that ``tree`` is a dict with exactly ``expected`` keys and leaf shapes."""
    if not isinstance(tree, dict):
        raise TypeError(f"{fn}: {argname} must be a dict with keys {sorted(expected)}, got {type(tree).__name__}. {fix}")
    missing = sorted(set(expected) - set(tree))
    extra = sorted(set(tree) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{fn}: {argname} has keys {sorted(tree)}, expected {sorted(expected)}"
            f"{' (missing ' + str(missing) + ')' if missing else ''}"
            f"{' (unexpected ' + str(extra) + ')' if extra else ''}. {fix}"
        )
    for k, shape in expected.items():
        got = tuple(jnp.shape(tree[k]))
        if got != shape:
            raise ValueError(f"{fn}: {argname}[{k!r}] has shape {got}, expected {shape}. {fix}")


def check_feature_input(
    fn: str, params: Any, x: Any, axis: int | Iterable[int], param_keys: tuple[str, ...], init_name: str
) -> tuple[jax.Array, tuple[int, ...], tuple[int, ...]]:
    """Checks for per-sample norms (layer/RMS norm): a floating ``x`` with the feature ``axis``/axes and
    ``params`` holding ``param_keys`` of the feature shape. Returns ``(x, feature_axes, feature_shape)``."""
    x = check_float_input(fn, x)
    n_feat = 1 if isinstance(axis, (int, np.integer)) else len(tuple(axis))
    if x.ndim < n_feat:
        raise ValueError(
            f"{fn}: x has shape {x.shape} (rank {x.ndim}) but axis={axis!r} names {n_feat} feature axes; "
            f"pass an input with those axes."
        )
    feats = normalize_axes(fn, "axis", axis, x.ndim)
    fshape = tuple(x.shape[a] for a in feats)
    check_tree(
        fn, "params", params, {k: fshape for k in param_keys},
        f"x has feature shape {fshape} on axes {feats}; create params with {init_name}({fshape}).",
    )
    return x, feats, fshape
