"""``flax.linen`` drop-in modules backed by bnjax: ``BatchNorm``, ``LayerNorm``, ``Dropout``.

Same constructor and call arguments and the same variables (``params/{scale,bias}``,
``batch_stats/{mean,var}``, shapes and dtypes) as ``flax.linen``'s classes, so a model switches by changing
one import and keeps its checkpoints::

    import bnjax.flax as bnn        # instead of: from flax import linen as nn (for these three layers)
    x = bnn.BatchNorm(use_running_average=not train)(x)

As Flax: rank-1 inputs ``(C,)`` (init, eval, training, and training across ``axis_name``), complex inputs (complex
mean, real ``mean(|x - mean|**2)`` variance; the running mean turns complex after the first update), masks,
``dtype``/``param_dtype``, the ``"dropout"`` stream and its masks (bitwise, also under ``jax_enable_x64``).
Run against Flax's own tests for these layers (``tests/linen``, with the three classes swapped), all pass but
the two ``LayerNorm``-against-``InstanceNorm`` comparisons of difference 1 below (``test_bind_stateful``, which
trains on one value per feature, runs in bnjax's ``tests/test_flax_drop_in.py``).

Every difference from ``flax.linen`` 0.12:

1. Variance: two-pass, reduced in the wider of float32 and ``x.dtype``. ``use_fast_variance`` (Flax's default
   ``E[x^2] - E[x]^2``, which loses every digit for inputs like ``1e4 + N(0, 1)``) is accepted and ignored, so
   outputs differ from Flax's by rounding (about 2e-7 on unit-scale float32 data; Flax's
   ``test_normalization_equivalence`` compares ``LayerNorm`` with ``InstanceNorm`` to ``atol=1e-7`` and fails
   the same way with Flax's own ``use_fast_variance=False``). A ``dtype`` wider than ``x`` does not widen the
   reduction (Flax's does); ``force_float32_reductions=False`` keeps Flax's statistics dtype (``param_dtype``)
   but still reduces in float32.
2. ``axis_name``: statistics are count-weighted over devices (exact for unequal masked shards; Flax averages
   per-device means, google/flax#2417). Equal without a mask. ``axis_index_groups`` raises
   ``NotImplementedError``.
3. Masks select: ``NaN``/``inf`` in masked-out entries reach no statistic and no gradient (in Flax the
   parameter gradients turn ``NaN``). Masked-out outputs hold Flax's values but carry no gradient.
4. ``BatchNorm`` training on one value per feature (a ``(C,)`` or ``(1, C)`` input without ``axis_name`` or
   ``mask``): the batch variance is 0, so the output is just the bias. Flax returns it silently; the drop-in
   returns the same output and running statistics but warns (a ``UserWarning`` naming the shape, shown once
   per shape by Python's default warning filter), since it is almost always a missing batch axis. Init
   returns Flax's output without a warning. (Flax's ``test_bind_stateful`` trains that way.) The functional
   :func:`bnjax.batch_norm` refuses such an input.
5. Gradients: the analytic backward (``jax.custom_vjp``) by default, so ``jax.jvp``/``jax.jacfwd`` through the
   layer need ``grad="autodiff"`` (``jax.hessian`` works either way). Complex inputs always use autodiff.
6. Extra fields: ``grad`` (``"analytic"``/``"autodiff"``), and ``unbiased_var`` on ``BatchNorm``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from bnjax.nn import _checks
from bnjax.nn._batch_norm import batch_norm
from bnjax.nn._dropout import dropout
from bnjax.nn._stats import compute_dtype, group_count, normalize_affine, normalize_affine_autodiff, real_dtype

Initializer = Callable[..., Any]
GRADS = ("analytic", "autodiff")


def _no_index_groups(cls: str, axis_index_groups: Any) -> None:
    if axis_index_groups is not None:
        raise NotImplementedError(
            f"bnjax.flax.{cls}: axis_index_groups={axis_index_groups!r} is not supported; use a mesh axis per "
            f"group (shard_map over a sub-mesh) or flax.linen.{cls}."
        )


def _out_dtype(dtype: Any, *arrays: Any) -> Any:
    # Flax's rule: the requested dtype, else the promotion of the input with the parameters that exist.
    return dtype if dtype is not None else jnp.result_type(*arrays)


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` computed by :func:`bnjax.batch_norm` (same fields, call and variables).

    ``y = scale * (x - mean) / sqrt(var + epsilon) + bias`` with batch statistics in training
    (``use_running_average=False``) and ``new = momentum * old + (1 - momentum) * batch`` for the running
    ``batch_stats`` (Flax's default ``momentum=0.99``); the running statistics in eval mode. As in Flax, the
    running statistics are not updated while initialising and ``axis_name`` is not used then; a batch with one
    value per feature (``(C,)`` or ``(1, C)``) gives Flax's output (the bias) and, in training after init, a
    ``UserWarning`` (see the module docstring). Complex ``x`` is normalised as Flax does, by autodiff.

    Extra fields (bnjax): ``unbiased_var`` (store ``n/(n-1)`` variance, torch's rule), ``grad``
    (``"analytic"`` or ``"autodiff"``).
    """

    use_running_average: bool | None = None
    axis: int = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    unbiased_var: bool = False
    grad: str = "analytic"

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask: Any = None):
        """Normalises ``x``; ``use_running_average`` may come from the constructor or the call (not both)."""
        fn = "bnjax.flax.BatchNorm"
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        _no_index_groups("BatchNorm", self.axis_index_groups)
        _checks.check_choice(fn, "grad", self.grad, GRADS)
        x = _checks.check_float_input(fn, x, allow_complex=True)
        if x.ndim < 1:
            raise ValueError(f"{fn}: x is a scalar (shape ()); pass an input with a feature axis, e.g. (C,) or (N, C).")
        (feat,) = _checks.normalize_axes(fn, "axis", self.axis, x.ndim)
        shape = (x.shape[feat],)
        stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stats_dtype), shape)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stats_dtype), shape)
        arrays = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, shape, self.param_dtype)
            arrays.append(scale)
        else:
            scale = jnp.ones(shape, self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, shape, self.param_dtype)
            arrays.append(bias)
        else:
            bias = jnp.zeros(shape, self.param_dtype)
        out_dtype = _out_dtype(self.dtype, *arrays)

        init = self.is_initializing()
        train = not use_ra
        axis_name = None if init else self.axis_name  # as Flax: the named axis need not exist during init
        # One value per feature and nothing to share statistics with: the batch variance is 0 and the output the
        # bias, which Flax returns; bnjax.batch_norm refuses it, the drop-in computes it as Flax does.
        one_value = x.size == shape[0] > 0 and (init or (axis_name is None and mask is None))
        if train and one_value and not init:
            warnings.warn(
                f"{fn}: training on x of shape {x.shape} gives 1 value per feature, so the batch variance is 0 and "
                f"the output is just the bias (as in Flax). Pass a batch of at least 2, set axis_name to share the "
                f"statistics across a vmap/shard_map axis, or use_running_average=True.", UserWarning,
            )
        if jnp.iscomplexobj(x) or (train and one_value) or shape[0] == 0:
            # Complex input (bnjax's analytic backward is for real x), Flax's one-value output or no features at
            # all (empty outputs, as Flax's): the shared statistics and autodiff normalization, with Flax's
            # running-statistics rule.
            y, new = self._autodiff_path(x, feat, scale, bias, ra_mean.value, ra_var.value, train, axis_name, mask)
        else:
            y, new = batch_norm(
                {"scale": scale, "bias": bias}, {"mean": ra_mean.value, "var": ra_var.value}, x, train,
                axis=feat, momentum=self.momentum, eps=self.epsilon, unbiased_var=self.unbiased_var,
                axis_name=axis_name, mask=mask, grad=self.grad,
            )
        if train and not init:
            ra_mean.value, ra_var.value = new["mean"], new["var"]
        return y.astype(out_dtype)

    def _autodiff_path(self, x, feat, scale, bias, ra_mean, ra_var, train, axis_name, mask):
        """Flax's formula by :func:`bnjax.normalize_affine_autodiff`; the running mean turns complex for
        complex ``x``, exactly as ``flax.linen.BatchNorm`` stores ``momentum * old + (1 - momentum) * mean``."""
        cdt = compute_dtype(x.dtype)
        rdt = real_dtype(cdt)
        bshape = tuple(x.shape[feat] if i == feat else 1 for i in range(x.ndim))
        scale_b, bias_b = scale.astype(rdt).reshape(bshape), bias.astype(rdt).reshape(bshape)
        xc = x.astype(cdt)
        if not train:
            mean, var = ra_mean.reshape(bshape), ra_var.astype(rdt).reshape(bshape)
            y = (xc - mean) * lax.rsqrt(var + self.epsilon) * scale_b + bias_b
            return y, None
        axes = tuple(i for i in range(x.ndim) if i != feat)
        mask = _checks.check_mask("bnjax.flax.BatchNorm", mask, x.shape)
        y, mean, var = normalize_affine_autodiff(xc, scale_b, bias_b, axes, float(self.epsilon), axis_name, mask)
        mean, var = lax.stop_gradient(mean).reshape(-1), lax.stop_gradient(var).reshape(-1)
        if self.unbiased_var:
            n = group_count(x, axes, axis_name=axis_name, mask=mask).reshape(-1)
            var = var * n / jnp.maximum(n - 1.0, 1.0)
        m = self.momentum
        return y, {"mean": m * ra_mean + (1 - m) * mean, "var": (m * ra_var + (1 - m) * var).astype(ra_var.dtype)}


class LayerNorm(nn.Module):
    """``flax.linen.LayerNorm`` computed by bnjax's shared normalization (same fields, call and variables).

    ``y = scale * (x - mean) / sqrt(var + epsilon) + bias`` with the statistics of each sample over
    ``reduction_axes`` and parameters over ``feature_axes`` (both ``-1`` by default); ``epsilon=1e-6`` as
    Flax (bnjax's functional :func:`bnjax.layer_norm` defaults to 1e-5). ``mask`` and ``axis_name`` as Flax
    (masked-out entries selected away, see the module docstring); complex ``x`` as Flax, by autodiff.
    Extra field: ``grad`` (``"analytic"`` or ``"autodiff"``).
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    reduction_axes: int | Sequence[int] = -1
    feature_axes: int | Sequence[int] = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    grad: str = "analytic"

    @nn.compact
    def __call__(self, x, *, mask: Any = None):
        """Normalises each sample of ``x`` over ``reduction_axes``."""
        fn = "bnjax.flax.LayerNorm"
        _no_index_groups("LayerNorm", self.axis_index_groups)
        _checks.check_choice(fn, "grad", self.grad, GRADS)
        x = _checks.check_float_input(fn, x, allow_complex=True)
        red = _checks.normalize_axes(fn, "reduction_axes", self.reduction_axes, x.ndim)
        feats = _checks.normalize_axes(fn, "feature_axes", self.feature_axes, x.ndim)
        mask = _checks.check_mask(fn, mask, x.shape)
        pshape = tuple(x.shape[a] for a in feats)
        bshape = tuple(x.shape[i] if i in feats else 1 for i in range(x.ndim))
        arrays = [x]
        cdt = compute_dtype(x.dtype)
        rdt = real_dtype(cdt)  # scale/bias stay real for complex x, as Flax's
        scale = jnp.ones(bshape, rdt)
        bias = jnp.zeros(bshape, rdt)
        if self.use_scale:
            p = self.param("scale", self.scale_init, pshape, self.param_dtype)
            arrays.append(p)
            scale = p.astype(rdt).reshape(bshape)
        if self.use_bias:
            p = self.param("bias", self.bias_init, pshape, self.param_dtype)
            arrays.append(p)
            bias = p.astype(rdt).reshape(bshape)
        analytic = self.grad == "analytic" and not jnp.iscomplexobj(x)
        norm = normalize_affine if analytic else normalize_affine_autodiff
        y, _, _ = norm(x.astype(cdt), scale, bias, red, _checks.check_eps(fn, self.epsilon), self.axis_name, mask)
        return y.astype(_out_dtype(self.dtype, *arrays))


class Dropout(nn.Module):
    """``flax.linen.Dropout`` computed by :func:`bnjax.dropout` (same fields, call and random stream).

    ``rate`` is the drop probability; kept units are scaled by ``1 / (1 - rate)``. The key comes from
    ``rng`` or ``self.make_rng(rng_collection)`` (``"dropout"``), drawn in exactly the cases Flax draws it
    (not for ``rate`` 0 or 1, nor when deterministic), and the mask is ``bernoulli(key, 1 - rate, shape)``
    with ``1 - rate`` formed in Python as in Flax (float64 under ``jax_enable_x64``), so with the same ``rngs``
    the outputs are Flax's bit for bit.
    """

    rate: float
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: Any = None):
        """Drops units of ``inputs`` unless deterministic."""
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        y, _ = dropout({}, {}, inputs, True, key=rng, rate=self.rate, broadcast_dims=self.broadcast_dims)
        return y
