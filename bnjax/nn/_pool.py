"""Pooling and reshaping of channels-last inputs ``(N, *spatial, C)``, as functions and parameter-free Layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn._conv import Padding, _pairs, resolve_padding


def _window_args(
    fn: str, x: Array, window: int | Sequence[int], stride: int | Sequence[int] | None, padding: Padding
) -> tuple[tuple[int, ...], tuple[int, ...], Any]:
    """Full-rank window/strides (1 on the batch and channel axes) and padding for ``lax.reduce_window``."""
    if x.ndim < 3:
        raise ValueError(
            f"{fn}: x has shape {x.shape}; pooling needs a channels-last input (N, *spatial, C) with at least one "
            f"spatial axis, e.g. (N, H, W, C). For a single example pass x[None]."
        )
    r = x.ndim - 2
    win = _pairs(fn, "window", window, r)
    strides = win if stride is None else _pairs(fn, "stride", stride, r)
    pad = resolve_padding(fn, padding, r)
    pads = jax.lax.padtype_to_pads(x.shape[1:-1], win, strides, pad) if isinstance(pad, str) else pad
    for size, w, (lo, hi) in zip(x.shape[1:-1], win, pads):
        if size + lo + hi < w:
            raise ValueError(
                f"{fn}: window={window!r} is larger than the padded input: spatial shape {x.shape[1:-1]} with "
                f"padding={padding!r}; use a smaller window or more padding."
            )
    return (1, *win, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))


def max_pool(
    x: Array, window: int | Sequence[int], stride: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Array:
    """Maximum over each window of the spatial axes of ``x`` (``(N, *spatial, C)``, channels last).

    Padded positions count as ``-inf`` (they never win). Gradients flow to the maximum of each window.

    Args:
      x: input ``(N, *spatial, C)`` with 1 to 3 spatial axes.
      window: window size, an int (the same on every spatial axis) or one int per spatial axis.
      stride: step between windows; default ``window`` (non-overlapping windows, torch's default; Flax's
        ``max_pool`` defaults to 1).
      padding: ``"VALID"`` (default), ``"SAME"``, an int or ``(low, high)`` pairs (as :func:`bnjax.conv`).

    Returns:
      ``(N, *out_spatial, C)``; with ``"VALID"``, ``out = (size - window) // stride + 1``.
    """
    x = jnp.asarray(x)
    win, strides, pads = _window_args("max_pool", x, window, stride, padding)
    # A Python scalar init value: reduce_window recognises (max, -inf) only when the init value is concrete, and
    # only that recognised form has a reverse-mode gradient (an array init is a tracer under jit).
    lowest = -math.inf if jnp.issubdtype(x.dtype, jnp.floating) else int(jnp.iinfo(x.dtype).min)
    return jax.lax.reduce_window(x, lowest, jax.lax.max, win, strides, pads)


def avg_pool(
    x: Array,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    *,
    count_include_pad: bool = True,
) -> Array:
    """Mean over each window of the spatial axes of ``x`` (``(N, *spatial, C)``, channels last).

    Args:
      x: floating input ``(N, *spatial, C)`` with 1 to 3 spatial axes.
      window: window size, an int (the same on every spatial axis) or one int per spatial axis.
      stride: step between windows; default ``window``.
      padding: ``"VALID"`` (default), ``"SAME"``, an int or ``(low, high)`` pairs.
      count_include_pad: with padding, divide every window sum by ``prod(window)`` (True, the default of
        torch and Flax: padded zeros count) or by the number of real input values in the window (False).

    Returns:
      ``(N, *out_spatial, C)`` in the dtype of ``x``.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"avg_pool: x has dtype {x.dtype}; cast it to a floating dtype first, e.g. x.astype(jnp.float32).")
    win, strides, pads = _window_args("avg_pool", x, window, stride, padding)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, win, strides, pads)  # a Python 0: see max_pool
    if count_include_pad or all(p == (0, 0) for p in pads):
        return total / math.prod(win)
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    return total / jax.lax.reduce_window(ones, 0.0, jax.lax.add, win, strides, pads)


def global_avg_pool(x: Array) -> Array:
    """Mean over every spatial axis: ``(N, *spatial, C) -> (N, C)``."""
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"global_avg_pool: x has shape {x.shape}; it needs (N, *spatial, C) with a spatial axis.")
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def flatten(x: Array) -> Array:
    """``(N, ...) -> (N, prod(...))``, row-major (C order): for NHWC the channel index varies fastest."""
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError("flatten: x is a scalar; it needs a batch axis, (N, ...).")
    return x.reshape(x.shape[0], -1)


def _stateless(fn: Callable[[Array], Array], name: str) -> Layer:
    """A parameter-free Layer: ``init`` gives ``({}, {})``, ``apply`` maps ``x`` and passes the stats through."""

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *,
              key: PRNGKey | None = None) -> tuple[Array, State]:
        del params, train, key
        return fn(x), batch_stats

    return Layer(lambda key: ({}, {}), apply, name)


def _check_pool_args(fn: str, window: Any, stride: Any, padding: Any) -> None:
    """Build-time checks; with an int window the number of spatial axes is only known from ``x``, at apply."""
    r = len(window) if isinstance(window, Sequence) else 1
    _pairs(fn, "window", window, r)
    if stride is not None and (isinstance(window, Sequence) or not isinstance(stride, Sequence)):
        _pairs(fn, "stride", stride, r)
    if isinstance(window, Sequence) or isinstance(padding, (str, int)):
        resolve_padding(fn, padding, r)


def MaxPool(
    window: int | Sequence[int], stride: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Layer:
    """:func:`bnjax.max_pool` as a parameter-free :class:`Layer` (``stride`` defaults to ``window``)."""
    _check_pool_args("MaxPool", window, stride, padding)
    return _stateless(lambda x: max_pool(x, window, stride, padding), "max_pool")


def AvgPool(
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    *,
    count_include_pad: bool = True,
) -> Layer:
    """:func:`bnjax.avg_pool` as a parameter-free :class:`Layer` (``stride`` defaults to ``window``)."""
    _check_pool_args("AvgPool", window, stride, padding)
    return _stateless(lambda x: avg_pool(x, window, stride, padding, count_include_pad=count_include_pad), "avg_pool")


def GlobalAvgPool() -> Layer:
    """:func:`bnjax.global_avg_pool` as a :class:`Layer`: ``(N, *spatial, C) -> (N, C)``."""
    return _stateless(global_avg_pool, "global_avg_pool")


def Flatten() -> Layer:
    """:func:`bnjax.flatten` as a :class:`Layer`: ``(N, ...) -> (N, prod(...))``, e.g. between convs and Dense."""
    return _stateless(flatten, "flatten")
