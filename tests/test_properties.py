"""Property-based tests (hypothesis) of the layers' contracts over random shapes, dtypes, axes, masks, rates
and momenta: output shape and dtype, finite values, normalised statistics, eval = a per-feature affine map,
and train/eval agreement once the running statistics have converged.

These check contracts, not exact numbers (those are tested against NumPy, Flax and torch in the per-layer
files). ``derandomize=True`` makes every run identical. Speed: every new (shape, dtype, axis, option)
combination compiles the layer once, so the structural choices come from small pools (all of them hit within
25 examples) while the values, masks, rates and momenta, which are traced, vary freely.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import bnjax

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)

# Relative tolerance of a normalised quantity (values of order 1) per input dtype.
TOL = {jnp.bfloat16: 0.05, jnp.float32: 2e-4, jnp.float64: 1e-9}
ALL = (jnp.float32, jnp.bfloat16, jnp.float64)
LOW = (jnp.float32, jnp.bfloat16)

_BN_STATIC = ("axis", "eps", "average", "unbiased_var", "axis_name", "grad")
BN = jax.jit(bnjax.batch_norm, static_argnums=3, static_argnames=_BN_STATIC)
GHOST = jax.jit(bnjax.ghost_batch_norm, static_argnums=3,
                static_argnames=("axis", "eps", "average", "unbiased_var", "grad", "virtual_batch_size"))
LN = jax.jit(bnjax.layer_norm, static_argnums=3, static_argnames=("axis", "eps", "grad"))
GN = jax.jit(bnjax.group_norm, static_argnums=3, static_argnames=("num_groups", "group_size", "eps", "grad"))
RMS = jax.jit(bnjax.rms_norm, static_argnums=3, static_argnames=("axis", "eps", "grad"))


@st.composite
def inputs(draw, shapes, axes=(-1, 0), dtypes=ALL):
    """``(x, axis, dtype, rng)``: a shape and axis from the pools, a dtype, and values ``3 N(0,1) + 2`` (as a
    float64 NumPy array: the tests cast in NumPy, since every eager JAX op on a new shape compiles)."""
    shape = draw(st.sampled_from(shapes))
    axis = draw(st.sampled_from(sorted({a % len(shape) - len(shape) for a in axes})))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.RandomState(draw(st.integers(0, 2**31 - 1)))
    return 3 * rng.randn(*shape) + 2, axis, dtype, rng


def cast(a, dtype):
    """A NumPy array of ``dtype`` (bfloat16 included), for the jitted layers."""
    return np.asarray(a).astype(dtype)


def x64_if(dtype):
    """Float64 examples run with 64-bit floats enabled, only for their own duration."""
    return jax.enable_x64(True) if dtype == jnp.float64 else contextlib.nullcontext()


def _held(x):
    """The values an array of any float dtype holds, as float64 NumPy."""
    return np.asarray(x).astype(np.float64)


def _finite(*arrays):
    return all(bool(np.all(np.isfinite(_held(a)))) for a in arrays)


def _random_layer(rng, c, var_lo=0.2):
    params = {"scale": rng.randn(c).astype(np.float32), "bias": rng.randn(c).astype(np.float32)}
    stats = {"mean": rng.randn(c).astype(np.float32), "var": rng.uniform(var_lo, 3, c).astype(np.float32)}
    return params, stats


def _fresh_layer(c, dtype=np.float32):
    """``batch_norm_init(c)`` in NumPy (no eager JAX op)."""
    return ({"scale": np.ones(c, dtype), "bias": np.zeros(c, dtype)},
            {"mean": np.zeros(c, dtype), "var": np.ones(c, dtype)})


# ----------------------------------------------------------------------------------------------------
# Batch norm and its variants
# ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(inputs(((4, 3), (3, 2, 4))), st.floats(0.0, 1.0), st.floats(0.0, 0.6))
def test_batch_norm_train_output_is_normalised_and_stats_follow_the_ema(data, momentum, drop):
    # A mask drops whole slices along the first reduced axis (a fraction ~drop of them, at least two kept);
    # the dropped entries hold NaN, which must reach nothing.
    x_np, axis, dtype, rng = data
    with x64_if(dtype):
        feat = axis % x_np.ndim
        red = tuple(i for i in range(x_np.ndim) if i != feat)
        mshape = tuple(s if i == red[0] else 1 for i, s in enumerate(x_np.shape))
        keep_m = rng.rand(*mshape) >= drop
        keep_m.flat[:2] = True
        keep = np.broadcast_to(keep_m, x_np.shape)
        x = cast(np.where(keep, x_np, np.nan), dtype)
        params, stats = _fresh_layer(x_np.shape[feat])
        y, new = BN(params, stats, x, True, axis=axis, momentum=momentum, mask=keep_m)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert new["mean"].dtype == new["var"].dtype == jnp.float32 and _finite(new["mean"], new["var"])
        yv = np.where(keep, _held(y), np.nan)
        assert np.all(np.isfinite(yv[keep]))
        xq = np.where(keep, _held(x), np.nan)
        mean, var = np.nanmean(xq, axis=red), np.nanvar(xq, axis=red)
        tol = TOL[dtype] * 4
        np.testing.assert_allclose(np.nanmean(yv, axis=red), 0.0, atol=tol)
        np.testing.assert_allclose(np.nanvar(yv, axis=red), var / (var + 1e-5), rtol=tol, atol=tol)
        np.testing.assert_allclose(new["mean"], (1 - momentum) * mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(new["var"], momentum + (1 - momentum) * var, rtol=1e-4, atol=1e-4)


def _eval_probe(params, stats, x, *, layer, axis):
    """Eval-mode outputs at ``x``, at zeros and at ones."""
    fn = getattr(bnjax, layer)
    kw = {"virtual_batch_size": 1} if layer == "ghost_batch_norm" else {}
    return [fn(params, stats, v, False, axis=axis, **kw)[0] for v in (x, jnp.zeros_like(x), jnp.ones_like(x))]


EVAL_PROBE = jax.jit(_eval_probe, static_argnames=("layer", "axis"))


@SETTINGS
@given(inputs(((5,), (3, 2, 4))), st.sampled_from(["batch_norm", "ghost_batch_norm", "batch_renorm"]))
def test_eval_mode_is_a_per_feature_affine_map(data, layer):
    # y(x) = a * x + b with one (a, b) per feature: read a, b off y(1) - y(0) and y(0), check that they are
    # the same at every non-feature position, then predict y(x).
    x_np, axis, dtype, rng = data
    if layer != "batch_norm":  # the variants delegate eval to batch norm: one combination each is enough
        axis, dtype = -1, jnp.float32
    with x64_if(dtype):
        c = x_np.shape[axis]
        params, stats = _random_layer(rng, c)
        x = cast(x_np, dtype)
        y, y0, y1 = EVAL_PROBE(params, stats, x, layer=layer, axis=axis)
        assert y.shape == x_np.shape and y.dtype == dtype
        b = _held(y0)
        a = _held(y1) - b
        for coef in (a, b):
            flat = np.moveaxis(coef, axis, -1).reshape(-1, c)
            np.testing.assert_allclose(flat, np.broadcast_to(flat[:1], flat.shape), rtol=TOL[dtype], atol=TOL[dtype])
        pred = a * _held(x) + b
        np.testing.assert_allclose(_held(y), pred, atol=TOL[dtype] * 4 * max(1.0, float(np.max(np.abs(pred)))))


def _converge(params, stats, x, momentum, *, axis, unbiased, steps=32):
    def body(_, s):
        return bnjax.batch_norm(params, s, x, True, axis=axis, momentum=momentum, unbiased_var=unbiased)[1]

    stats = jax.lax.fori_loop(0, steps, body, stats)
    y_train = bnjax.batch_norm(params, stats, x, True, axis=axis, momentum=momentum)[0]
    return y_train, bnjax.batch_norm(params, stats, x, False, axis=axis)[0]


CONVERGE = jax.jit(_converge, static_argnames=("axis", "unbiased", "steps"))


@SETTINGS
@given(inputs(((4, 3), (3, 2, 4)), axes=(-1,), dtypes=(jnp.float32, jnp.float64)), st.floats(0.0, 0.6),
       st.booleans())
def test_train_and_eval_agree_once_running_stats_converge(data, momentum, unbiased):
    # Repeated train steps on one batch: after 32 steps the initial statistics weigh momentum**32 <= 8e-8,
    # so eval mode reproduces the train output (up to the n/(n-1) factor of an unbiased stored variance).
    x_np, axis, dtype, rng = data
    with x64_if(dtype):
        c = x_np.shape[axis]
        params = {"scale": cast(rng.randn(c), dtype), "bias": cast(rng.randn(c), dtype)}
        _, stats = _fresh_layer(c, dtype)
        y_train, y_eval = CONVERGE(params, stats, cast(x_np, dtype), momentum, axis=axis, unbiased=unbiased)
        bias = _held(params["bias"]).reshape(tuple(c if i == axis % x_np.ndim else 1 for i in range(x_np.ndim)))
        n = x_np.size // c
        ratio = np.sqrt((n - 1) / n) if unbiased else 1.0
        tol = max(TOL[dtype], 1e-6) * 10
        np.testing.assert_allclose(_held(y_eval) - bias, (_held(y_train) - bias) * ratio, rtol=tol, atol=tol)


@SETTINGS
@given(inputs(((4, 3), (2, 2, 3)), dtypes=LOW), st.sampled_from([1, 2]), st.floats(0.0, 1.0))
def test_ghost_batch_norm_normalises_each_ghost_batch(data, ghosts, momentum):
    x_np, _, dtype, _ = data
    n = x_np.shape[0]
    scales = np.repeat(np.arange(1, ghosts + 1), n).reshape((-1,) + (1,) * (x_np.ndim - 1))
    x = cast(np.concatenate([x_np] * ghosts) * scales, dtype)  # ghost batches on different scales
    params, stats = _fresh_layer(x.shape[-1])
    y, new = GHOST(params, stats, x, True, virtual_batch_size=n, momentum=momentum)
    assert y.shape == x.shape and y.dtype == dtype and _finite(y, new["mean"], new["var"])
    red = tuple(range(x.ndim - 1))
    for k in range(ghosts):
        np.testing.assert_allclose(_held(y)[k * n:(k + 1) * n].mean(axis=red), 0.0, atol=TOL[dtype] * 4)


def _renorm_both(params, stats, x, momentum, *, axis):
    y_train, new = bnjax.batch_renorm(params, stats, x, True, axis=axis, rmax=1e6, dmax=1e6, momentum=momentum)
    return y_train, new, bnjax.batch_renorm(params, stats, x, False, axis=axis)[0]


RENORM_BOTH = jax.jit(_renorm_both, static_argnames=("axis",))


@SETTINGS
@given(inputs(((4, 3), (3, 2, 4)), dtypes=LOW), st.floats(0.5, 0.99))
def test_renorm_without_active_clips_trains_like_it_evaluates(data, momentum):
    # With rmax, dmax too large to clip, the renorm training output is the eval-mode output (Ioffe 2017).
    x_np, axis, dtype, rng = data
    x = cast(x_np, dtype)
    params, stats = _random_layer(rng, x.shape[axis], var_lo=0.5)
    y_train, new, y_eval = RENORM_BOTH(params, stats, x, momentum, axis=axis)
    assert y_train.shape == x.shape and y_train.dtype == dtype and _finite(y_train, new["mean"], new["var"])
    scale = max(1.0, float(np.max(np.abs(_held(y_eval)))))
    np.testing.assert_allclose(_held(y_train), _held(y_eval), atol=TOL[dtype] * 4 * scale)


# ----------------------------------------------------------------------------------------------------
# Per-sample norms
# ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(inputs(((4, 3), (3, 2, 4)), axes=(-1,)), st.sampled_from([(-1,), (-2, -1)]), st.floats(0.0, 0.6))
def test_layer_norm_normalises_each_sample_on_its_valid_entries(data, feats, drop):
    x_np, _, dtype, rng = data
    with x64_if(dtype):
        feats = tuple(f % x_np.ndim for f in feats)
        keep = rng.rand(*x_np.shape) >= drop
        first = tuple(slice(0, 2) if i == feats[-1] else slice(None) for i in range(x_np.ndim))
        keep[first] = True  # at least two valid values per sample
        x = cast(np.where(keep, x_np, np.inf), dtype)  # masked-out entries are inf
        fshape = tuple(x_np.shape[a] for a in feats)
        params = {"scale": np.ones(fshape, np.float32), "bias": np.zeros(fshape, np.float32)}
        y, out_stats = LN(params, {}, x, True, axis=feats, mask=keep)
        assert y.shape == x.shape and y.dtype == dtype and out_stats == {}
        yv = np.where(keep, _held(y), np.nan)
        assert np.all(np.isfinite(yv[keep]))
        var = np.nanvar(np.where(keep, _held(x), np.nan), axis=feats)
        tol = TOL[dtype] * 4
        np.testing.assert_allclose(np.nanmean(yv, axis=feats), 0.0, atol=tol)
        np.testing.assert_allclose(np.nanvar(yv, axis=feats), var / (var + 1e-5), rtol=tol, atol=tol)


@SETTINGS
@given(inputs(((3, 4), (2, 3, 2, 4)), dtypes=LOW), st.sampled_from([1, 2, 4]))
def test_group_norm_normalises_each_group(data, groups):
    x_np, _, dtype, _ = data
    c = x_np.shape[-1]
    x = cast(x_np, dtype)
    params = {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
    y, _ = GN(params, {}, x, True, num_groups=groups)
    assert y.shape == x.shape and y.dtype == dtype and _finite(y)
    grouped = x.shape[:-1] + (groups, c // groups)
    yg, var = _held(y).reshape(grouped), _held(x).reshape(grouped).var(axis=tuple(range(1, x.ndim - 1)) + (x.ndim,))
    red = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    tol = TOL[dtype] * 4
    np.testing.assert_allclose(yg.mean(axis=red), 0.0, atol=tol)
    np.testing.assert_allclose(yg.var(axis=red), var / (var + 1e-5), rtol=tol, atol=tol)


@SETTINGS
@given(inputs(((4, 3), (3, 2, 4)), axes=(-1,)), st.sampled_from([1e-6, 1e-2]))
def test_rms_norm_gives_unit_mean_square(data, eps):
    x_np, axis, dtype, _ = data
    with x64_if(dtype):
        x = cast(x_np, dtype)
        y, _ = RMS({"scale": np.ones(x.shape[axis], np.float32)}, {}, x, True, axis=axis, eps=eps)
        assert y.shape == x.shape and y.dtype == dtype and _finite(y)
        ms = np.mean(_held(x) ** 2, axis=axis)
        np.testing.assert_allclose(np.mean(_held(y) ** 2, axis=axis), ms / (ms + eps), rtol=TOL[dtype] * 4)


# ----------------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------------


def _dropout_both(x, rate, seed, *, broadcast_dims):
    y, out_stats = bnjax.dropout({}, {}, x, True, key=jax.random.key(seed), rate=rate, broadcast_dims=broadcast_dims)
    return y, out_stats, bnjax.dropout({}, {}, x, False, rate=rate)[0]


DROP_BOTH = jax.jit(_dropout_both, static_argnames=("broadcast_dims",))


@SETTINGS
@given(inputs(((5,), (3, 2, 4)), axes=(0,), dtypes=LOW), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_dropout_keeps_or_zeroes_each_unit_and_is_the_identity_in_eval(data, rate, seed):
    # rate is traced here (the vmappable path, rate = 1 included); Flax-parity of the Python-float path and
    # float64 are tested in test_flax_drop_in.py (each PRNG combination compiles slowly on CPU).
    x_np, _, dtype, _ = data
    with x64_if(dtype):
        bdims = (0,) if x_np.ndim > 1 else ()  # a mask shared along axis 0 for the rank-3 input
        x = cast(x_np + 10.0, dtype)  # no zeros, so a zero output means "dropped"
        y, out_stats, y_eval = DROP_BOTH(x, rate, seed, broadcast_dims=bdims)
        assert y.shape == x.shape and y.dtype == dtype and out_stats == {}
        kept = _held(y) != 0
        if rate < 1.0:
            np.testing.assert_allclose(_held(y)[kept], _held(x)[kept] / (1.0 - rate), rtol=TOL[dtype])
        else:
            assert not kept.any()
        for d in bdims:  # one mask value along each broadcast axis
            assert np.all(kept == np.take(kept, [0], axis=d))
        np.testing.assert_array_equal(y_eval, x)
