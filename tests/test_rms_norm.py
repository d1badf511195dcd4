"""RMS norm: NumPy formula, flax.linen.RMSNorm parity, three-way gradients of the custom_vjp, errors."""

from functools import partial

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax.nn._gradcheck import _three_way, numeric_vjp, rel_error
from bnjax.nn._rms_norm import normalize_rms, normalize_rms_autodiff, rms_norm, rms_norm_init


@pytest.mark.parametrize("shape,axis", [((4, 6), -1), ((2, 3, 5), (1, 2)), ((3, 5, 2), 1)])
def test_rms_norm_matches_numpy(shape, axis):
    rng = np.random.RandomState(0)
    x = (2 * rng.randn(*shape) + 1).astype(np.float32)
    axes = (axis,) if isinstance(axis, int) else axis
    fshape = tuple(shape[a] for a in axes)
    scale = rng.randn(*fshape).astype(np.float32)
    y, stats = rms_norm({"scale": jnp.asarray(scale)}, {}, x, True, axis=axis, eps=1e-6)
    xd = np.asarray(x, np.float64)
    ms = (xd**2).mean(axis=axes, keepdims=True)
    bshape = tuple(shape[i] if i in [a % len(shape) for a in axes] else 1 for i in range(len(shape)))
    ref = xd / np.sqrt(ms + 1e-6) * scale.reshape(bshape)
    assert stats == {} and y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 16)])
def test_rms_norm_matches_flax(shape):
    rng = np.random.RandomState(1)
    x = jnp.asarray((2 * rng.randn(*shape) + 0.5).astype(np.float32))
    module = fnn.RMSNorm(use_fast_variance=False)  # epsilon=1e-6, bnjax's default too
    variables = module.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == {"params": jax.tree.map(jnp.shape, rms_norm_init(shape[-1])[0])}
    variables = {"params": {"scale": jnp.asarray(rng.randn(shape[-1]), jnp.float32)}}
    y, _ = rms_norm(variables["params"], {}, x, False)
    np.testing.assert_allclose(y, module.apply(variables, x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape,axis", [((4, 5), -1), ((2, 3, 4), (1, 2))])
def test_rms_norm_three_way_gradients(x64, shape, axis):
    rng = np.random.RandomState(231)
    axes = (axis,) if isinstance(axis, int) else axis
    fshape = tuple(shape[a] for a in axes)
    x = jnp.asarray(5 * rng.randn(*shape) + 12)
    scale, dy = jnp.asarray(rng.randn(*fshape)), jnp.asarray(rng.randn(*shape))

    @partial(jax.jit, static_argnames="grad")
    def rms(x, s, grad):
        return rms_norm({"scale": s}, {}, x, True, axis=axis, grad=grad)[0]

    for row in _three_way("rms_norm", rms, (x, scale), dy, ("x", "scale"), 1e-5):
        assert row.analytic_vs_autodiff <= 1e-10, row
        assert row.analytic_vs_numeric <= 1e-7 and row.autodiff_vs_numeric <= 1e-7, row


def test_normalize_rms_vjp_includes_mean_square_output(x64):
    # The returned mean square has its own cotangent; the custom backward must honour it.
    rng = np.random.RandomState(5)
    x = jnp.asarray(rng.randn(3, 4) + 2)
    scale = jnp.asarray(rng.randn(1, 4))
    dy, dms = jnp.asarray(rng.randn(3, 4)), jnp.asarray(rng.randn(3, 1))
    _, vjp_an = jax.vjp(lambda x, s: normalize_rms(x, s, (1,), 1e-6), x, scale)
    _, vjp_ad = jax.vjp(lambda x, s: normalize_rms_autodiff(x, s, (1,), 1e-6), x, scale)
    (dx_an, ds_an), (dx_ad, ds_ad) = vjp_an((dy, dms)), vjp_ad((dy, dms))
    assert rel_error(dx_an, dx_ad) <= 1e-10 and rel_error(ds_an, ds_ad) <= 1e-10

    fwd = jax.jit(lambda z: jnp.concatenate(normalize_rms_autodiff(z, scale, (1,), 1e-6), axis=1))

    def f(z):
        return np.asarray(fwd(jnp.asarray(z)))

    dx_num = numeric_vjp(f, np.asarray(x), np.concatenate([np.asarray(dy), np.asarray(dms)], axis=1))
    assert rel_error(dx_an, dx_num) <= 1e-7


def test_rms_norm_grad_of_grad_and_jit(x64):
    rng = np.random.RandomState(6)
    x = jnp.asarray(rng.randn(4, 5))
    params, _ = rms_norm_init(5)

    def loss(x, grad):
        return jnp.sum(jnp.sin(rms_norm(params, {}, x, True, grad=grad)[0]))

    g_an = jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(loss)(x, "analytic") ** 2)))(x)
    g_ad = jax.grad(lambda x: jnp.sum(jax.grad(loss)(x, "autodiff") ** 2))(x)
    assert rel_error(g_an, g_ad) <= 1e-9


def test_rms_norm_errors():
    params, _ = rms_norm_init(4)
    with pytest.raises(ValueError, match=r"create params with rms_norm_init\(\(5,\)\)"):
        rms_norm(params, {}, jnp.ones((2, 5)), True)
    with pytest.raises(ValueError, match="grad='manual' is not a valid option"):
        rms_norm(params, {}, jnp.ones((2, 4)), True, grad="manual")
    with pytest.raises(TypeError, match="x has dtype int32"):
        rms_norm(params, {}, jnp.ones((2, 4), jnp.int32), True)
    with pytest.raises(ValueError, match=r"shape=\(\) must be a positive int"):
        rms_norm_init(())
