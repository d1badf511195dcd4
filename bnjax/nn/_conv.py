"""Convolution over channels-last inputs ``(N, *spatial, C)``, weights stored ``(*kernel, in, out)`` (HWIO)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn import _checks

INITS = ("normal", "he", "glorot")
PADDINGS = ("SAME", "VALID")
IMPLS = ("auto", "xla", "patches")
_INIT_OPTIONS = ("init", "weight_scale", "use_bias", "dtype")
Padding = str | int | Sequence[tuple[int, int]]
"""``"SAME"`` (output size ``ceil(size / stride)``, zero padding split low/high with the extra row on the
high side, as TensorFlow and Flax), ``"VALID"`` (no padding), an int ``p`` (``p`` zeros on both sides of every
spatial axis, torch's ``padding=p``) or one ``(low, high)`` pair per spatial axis."""

_SPATIAL_LETTERS = "DHW"  # 1-D: W, 2-D: HW, 3-D: DHW


def _kernel_shape(fn: str, kernel_size: int | Sequence[int]) -> tuple[int, ...]:
    ks = (kernel_size, kernel_size) if _checks.is_int(kernel_size) else tuple(kernel_size)  # type: ignore[arg-type]
    if not 1 <= len(ks) <= 3 or not all(_checks.is_int(k) and k >= 1 for k in ks):
        raise ValueError(
            f"{fn}: kernel_size={kernel_size!r} must be a positive int (a square 2-D kernel) or a tuple of 1 to 3 "
            f"positive ints, one per spatial axis, e.g. 3 or (3, 3)."
        )
    return ks


def _check_init_args(fn: str, in_channels: Any, out_channels: Any, kernel_size: Any, init: Any) -> tuple[int, ...]:
    _checks.check_choice(fn, "init", init, INITS)
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not _checks.is_int(v) or v < 1:
            raise ValueError(f"{fn}: {name}={v!r} must be a positive int.")
    return _kernel_shape(fn, kernel_size)


def conv_init(
    key: PRNGKey,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    *,
    init: str = "he",
    weight_scale: Any = 1e-2,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
) -> tuple[Params, State]:
    """Parameters of a convolution with ``in_channels`` inputs and ``out_channels`` outputs.

    ``weight`` has shape ``(*kernel_size, in_channels, out_channels)`` -- HWIO for 2-D, Flax's ``Conv``
    kernel layout (the same array as Flax's ``params["kernel"]``; torch's ``Conv2d.weight`` is
    ``weight.transpose(3, 2, 0, 1)``). HWIO is the layout XLA:CPU's convolution uses internally, so no
    kernel transpose is compiled (OIHW and OHWI measured the same speed within noise for small kernels:
    forward + both gradients, batch 128 of 14 x 14 x 16 -> 32 channels), and :func:`bnjax.conv`'s
    ``impl="patches"`` reads it as a ``(prod(kernel) * C_in, C_out)`` matrix without a copy.

    Args:
      key: PRNG key.
      in_channels, out_channels: channel counts.
      kernel_size: an int ``k`` for a ``k x k`` 2-D kernel, or a tuple of 1 to 3 ints for a 1-D, 2-D or
        3-D convolution.
      init: ``"he"`` (default) -- ``N(0, 2 / fan_in)``; ``"glorot"`` -- ``N(0, 2 / (fan_in + fan_out))``;
        ``"normal"`` -- ``weight_scale * N(0, 1)``; ``fan_in = prod(kernel_size) * in_channels`` and
        ``fan_out = prod(kernel_size) * out_channels``.
      weight_scale: std of the ``"normal"`` init; may be a traced array (swept by ``vmap``).
      use_bias: add a zero-initialised ``"bias"`` of shape ``(out_channels,)``. Turn it off in front of
        batch or group norm, whose per-channel shift makes it redundant.
      dtype: parameter dtype.

    Returns:
      ``({"weight"[, "bias"]}, {})``.
    """
    ks = _check_init_args("conv_init", in_channels, out_channels, kernel_size, init)
    fan_in, fan_out = math.prod(ks) * in_channels, math.prod(ks) * out_channels
    if init == "normal":
        std = jnp.asarray(weight_scale, dtype)
    elif init == "he":
        std = math.sqrt(2.0 / fan_in)
    else:
        std = math.sqrt(2.0 / (fan_in + fan_out))
    shape = ks + (in_channels, out_channels)
    # Drawn flat and reshaped: the same numbers as normal(key, shape), but XLA:CPU compiles the 1-D draw about
    # 3x faster than a 4-D one (about 0.4 s instead of 1.2 s of CPU per kernel shape).
    w = jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)
    params = {"weight": (w * std).astype(dtype)}
    if use_bias:
        params["bias"] = jnp.zeros((out_channels,), dtype)
    return params, {}


def _pairs(fn: str, name: str, value: Any, ndim: int) -> tuple[int, ...]:
    """An int or a tuple of ``ndim`` positive ints (stride, dilation) as a tuple of ``ndim`` ints."""
    vals = (value,) * ndim if _checks.is_int(value) else tuple(value) if isinstance(value, Sequence) else ()
    if len(vals) != ndim or not all(_checks.is_int(v) and v >= 1 for v in vals):
        raise ValueError(
            f"{fn}: {name}={value!r} must be a positive int or a tuple of {ndim} positive ints (one per spatial "
            f"axis)."
        )
    return vals


def resolve_padding(fn: str, padding: Padding, ndim: int) -> str | tuple[tuple[int, int], ...]:
    """Checks a :data:`Padding` for ``ndim`` spatial axes; returns ``"SAME"``/``"VALID"`` or ``(low, high)`` pairs."""
    if isinstance(padding, str):
        if padding.upper() in PADDINGS:
            return padding.upper()
    elif _checks.is_int(padding) and padding >= 0:  # type: ignore[operator]
        return ((padding, padding),) * ndim  # type: ignore[return-value]
    elif isinstance(padding, Sequence):
        pads = tuple(tuple(p) if isinstance(p, Sequence) else p for p in padding)
        if len(pads) == ndim and all(
            isinstance(p, tuple) and len(p) == 2 and all(_checks.is_int(v) and v >= 0 for v in p) for p in pads
        ):
            return pads  # type: ignore[return-value]
    raise ValueError(
        f"{fn}: padding={padding!r} is not valid for {ndim} spatial axes; use 'SAME', 'VALID', a non-negative "
        f"int, or {ndim} (low, high) pairs of non-negative ints."
    )


def _conv_patches(
    x: Array, w: Array, strides: tuple[int, ...], pad: Any, dilations: tuple[int, ...],
    precision: jax.lax.Precision | None = None,
) -> Array:
    """The convolution as one matrix product (im2col): ``patches(x) @ weight.reshape(k * C_in, C_out)``.

    ``patches`` stacks the ``k = prod(kernel)`` strided slices of the padded input, in the kernel's row-major
    order, so the product is the same sum as ``lax.conv_general_dilated``'s. Autodiff gives matrix products for
    both gradients (the input gradient adds the patch gradients back through pad/slice), which XLA:CPU runs
    at full speed inside ``lax.scan`` and batches under ``vmap``; the price is ``k`` copies of the input.
    """
    r = w.ndim - 2
    ks = w.shape[:r]
    eff = tuple((k - 1) * d + 1 for k, d in zip(ks, dilations))  # dilated kernel extent
    pads = jax.lax.padtype_to_pads(x.shape[1:-1], eff, strides, pad) if isinstance(pad, str) else pad
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out = [(xp.shape[1 + i] - eff[i]) // strides[i] + 1 for i in range(r)]
    slices = []
    for offsets in itertools.product(*(range(k) for k in ks)):
        start = (0, *(o * d for o, d in zip(offsets, dilations)), 0)
        limit = (xp.shape[0], *(b + (n - 1) * s + 1 for b, n, s in zip(start[1:-1], out, strides)), xp.shape[-1])
        slices.append(jax.lax.slice(xp, start, limit, (1, *strides, 1)))
    patches = jnp.stack(slices, axis=-2)  # (N, *out, k, C_in)
    k_in = math.prod(ks) * x.shape[-1]
    return jnp.matmul(patches.reshape(*patches.shape[:-2], k_in), w.reshape(k_in, w.shape[-1]), precision=precision)


def conv(
    params: Params,
    batch_stats: State,
    x: Array,
    train: bool,
    *,
    key: PRNGKey | None = None,
    stride: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    impl: str = "auto",
    precision: str | jax.lax.Precision | None = None,
) -> tuple[Array, State]:
    """Convolution (cross-correlation, as every deep-learning library) of a channels-last input.

    ``y[n, i, j, o] = bias[o] + sum_{a, b, c} x_pad[n, i*s + a*d, j*s + b*d, c] * weight[a, b, c, o]`` for
    2-D (stride ``s``, dilation ``d``); 1-D and 3-D alike. Computed by ``jax.lax.conv_general_dilated`` with
    dimension numbers ``("NHWC", "HWIO", "NHWC")`` (``NWC``/``WIO`` for 1-D, ``NDHWC``/``DHWIO`` for 3-D) or,
    on CPU, as one matrix product over the input's patches (see ``impl``).

    Args:
      params: ``{"weight": (*kernel, C_in, C_out)[, "bias": (C_out,)]}`` from :func:`conv_init`.
      batch_stats: returned unchanged (normally ``{}``).
      x: floating input ``(N, *spatial, C_in)`` with as many spatial axes as the kernel.
      train: unused; Python bool.
      key: unused.
      stride: int or one int per spatial axis (default 1).
      padding: ``"SAME"`` (default), ``"VALID"``, an int, or ``(low, high)`` pairs; see :data:`Padding`.
      dilation: kernel dilation, int or one int per spatial axis (default 1).
      impl: ``"xla"`` -- ``lax.conv_general_dilated``; ``"patches"`` -- the same sum as one matrix product
        over the ``prod(kernel)`` shifted copies of the input (im2col); ``"auto"`` (default) -- ``"patches"``
        on CPU, ``"xla"`` on GPU/TPU. Why: XLA:CPU runs the weight gradient of ``lax.conv_general_dilated``
        several times slower inside a loop body (https://github.com/jax-ml/jax/issues/12868), and training
        epochs are ``lax.scan`` loops. Measured here (2 shared CPU cores, ``experiments/cnn_fashion.py``
        with batch norm, channels (16, 32), batch 50, one Adam step): ``"xla"`` 29 ms per step as a jitted
        step, 198 ms inside ``lax.scan``, 228 ms per member with 3 members vmapped in the scan;
        ``"patches"`` 35, 34 and 46 ms. The patches cost ``prod(kernel)`` times the input's memory.
      precision: the ``jax.lax.Precision`` of the convolution (or of the patches' matmul), as
        ``flax.linen.Conv``'s: None (default) -- JAX's default (``jax_default_matmul_precision``; on NVIDIA GPUs
        float32 convolutions then run as TF32, about 1e-3 relative error), ``"default"``, ``"high"``,
        ``"highest"`` (true float32), or a ``jax.lax.Precision``.

    Returns:
      ``(y, batch_stats)`` with ``y`` of shape ``(N, *out_spatial, C_out)``; with ``"SAME"`` padding
      ``out = ceil(size / stride)``. ``y``'s dtype is the promoted dtype of ``x`` and the weight (as
      :func:`bnjax.dense`).
    """
    del train, key
    fn = "conv"
    w = params["weight"]
    x = jnp.asarray(x)
    r = w.ndim - 2
    if x.ndim != w.ndim:
        raise ValueError(
            f"conv: x has shape {x.shape} (rank {x.ndim}), but params['weight'] has shape {w.shape}, a {r}-D kernel, "
            f"so x must be (N, {', '.join(['...'] * r)}, C) of rank {r + 2} (channels last). For a single example "
            f"pass x[None]."
        )
    if x.shape[-1] != w.shape[-2]:
        raise ValueError(
            f"conv: x has {x.shape[-1]} channels on its last axis but params['weight'] has shape {w.shape} "
            f"(*kernel, in, out), i.e. {w.shape[-2]} input channels; create params with "
            f"conv_init(key, {x.shape[-1]}, out_channels, kernel_size)."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"conv: x has dtype {x.dtype}; cast it to a floating dtype first, e.g. x.astype(jnp.float32).")
    strides = _pairs(fn, "stride", stride, r)
    dilations = _pairs(fn, "dilation", dilation, r)
    pad = resolve_padding(fn, padding, r)
    sp = _SPATIAL_LETTERS[-r:]
    dtype = jnp.result_type(x, w)
    _checks.check_choice(fn, "impl", impl, IMPLS)
    precision = _checks.check_precision(fn, "precision", precision)
    if impl == "patches" or (impl == "auto" and jax.default_backend() == "cpu"):
        y = _conv_patches(x.astype(dtype), w.astype(dtype), strides, pad, dilations, precision)
    else:
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), w.astype(dtype), strides, pad, rhs_dilation=dilations,
            dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"), precision=precision,
        )
    if "bias" in params:
        y = y + params["bias"].astype(dtype)
    return y, batch_stats


def Conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    impl: str = "auto",
    precision: str | jax.lax.Precision | None = None,
    **init_options: Any,
) -> Layer:
    """:func:`bnjax.conv` as a :class:`Layer` (name ``"conv"``); ``init_options`` go to :func:`bnjax.conv_init`
    (``init``, ``weight_scale``, ``use_bias``, ``dtype``).

    The stride, padding, dilation, ``impl`` and ``precision`` (default None: JAX's default, see
    :func:`bnjax.conv`) are checked here, when the model is built. The layer reads no options.
    """
    r = len(_kernel_shape("Conv", kernel_size))
    _pairs("Conv", "stride", stride, r)
    _pairs("Conv", "dilation", dilation, r)
    resolve_padding("Conv", padding, r)
    _checks.check_choice("Conv", "impl", impl, IMPLS)
    precision = _checks.check_precision("Conv", "precision", precision)
    unknown = sorted(set(init_options) - set(_INIT_OPTIONS))
    if unknown:
        raise TypeError(f"Conv: unknown init options {unknown}; conv_init accepts {list(_INIT_OPTIONS)}.")
    _check_init_args("Conv", in_channels, out_channels, kernel_size, init_options.get("init", "he"))

    def init(key: PRNGKey) -> tuple[Params, State]:
        return conv_init(key, in_channels, out_channels, kernel_size, **init_options)

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *,
              key: PRNGKey | None = None) -> tuple[Array, State]:
        return conv(params, batch_stats, x, train, key=key, stride=stride, padding=padding, dilation=dilation,
                    impl=impl, precision=precision)

    return Layer(init, apply, "conv")
