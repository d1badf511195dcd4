"""Group norm: NumPy formula, flax.linen.GroupNorm parity, three-way gradients, errors."""

from functools import partial

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax.nn._gradcheck import _three_way
from bnjax.nn._group_norm import group_norm, group_norm_init


def _np_group_norm(x, scale, bias, groups, eps):
    x = np.asarray(x, np.float64)
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    xhat = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return xhat * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)


@pytest.mark.parametrize(
    "shape,kwargs,groups",
    [((4, 6), {"num_groups": 3}, 3), ((2, 5, 5, 8), {"group_size": 2}, 4), ((3, 4, 64), {}, 32)],
)
def test_group_norm_matches_numpy(shape, kwargs, groups):
    rng = np.random.RandomState(0)
    c = shape[-1]
    x = (3 * rng.randn(*shape) + 2).astype(np.float32)
    scale, bias = rng.randn(c).astype(np.float32), rng.randn(c).astype(np.float32)
    y, stats = group_norm({"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}, {}, x, True, **kwargs)
    assert stats == {} and y.shape == x.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, _np_group_norm(x, scale, bias, groups, 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,groups", [((4, 8), 2), ((2, 3, 3, 6), 3)])
def test_group_norm_matches_flax(shape, groups):
    rng = np.random.RandomState(1)
    x = jnp.asarray((2 * rng.randn(*shape) + 1).astype(np.float32))
    module = fnn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False)
    variables = module.init(jax.random.key(0), x)
    c = shape[-1]
    # Same variable layout as group_norm_init: params/{scale, bias} of shape (C,).
    assert jax.tree.map(jnp.shape, variables) == {"params": jax.tree.map(jnp.shape, group_norm_init(c)[0])}
    variables = {"params": {"scale": jnp.asarray(rng.randn(c), jnp.float32), "bias": jnp.asarray(rng.randn(c), jnp.float32)}}
    y_flax = module.apply(variables, x)
    y, _ = group_norm(variables["params"], {}, x, False, num_groups=groups)
    np.testing.assert_allclose(y, y_flax, atol=1e-6, rtol=1e-6)


def test_group_norm_extremes_are_layer_and_instance_norm():
    rng = np.random.RandomState(2)
    x = jnp.asarray(rng.randn(3, 4, 6).astype(np.float32))
    params, _ = group_norm_init(6)
    y1, _ = group_norm(params, {}, x, True, num_groups=1)
    flat = np.asarray(x, np.float64).reshape(3, -1)
    ln = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y1, ln.reshape(x.shape), atol=1e-5)
    y_in, _ = group_norm(params, {}, x, True, group_size=1)
    xs = np.asarray(x, np.float64)
    inorm = (xs - xs.mean(1, keepdims=True)) / np.sqrt(xs.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y_in, inorm, atol=1e-5)


def test_group_norm_three_way_gradients(x64):
    rng = np.random.RandomState(231)
    shape, c = (3, 2, 6), 6
    x = jnp.asarray(5 * rng.randn(*shape) + 12)
    scale, bias, dy = jnp.asarray(rng.randn(c)), jnp.asarray(rng.randn(c)), jnp.asarray(rng.randn(*shape))

    @partial(jax.jit, static_argnames="grad")
    def gn(x, s, b, grad):
        return group_norm({"scale": s, "bias": b}, {}, x, True, num_groups=3, grad=grad)[0]

    for row in _three_way("group_norm", gn, (x, scale, bias), dy, ("x", "scale", "bias"), 1e-5):
        assert row.analytic_vs_autodiff <= 1e-10, row
        assert row.analytic_vs_numeric <= 1e-7 and row.autodiff_vs_numeric <= 1e-7, row


def test_group_norm_jit_vmap_bf16():
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.randn(5, 4, 8).astype(np.float32))
    params, _ = group_norm_init(8)
    y, _ = group_norm(params, {}, x, True, num_groups=4)
    y_jit, _ = jax.jit(lambda x: group_norm(params, {}, x, True, num_groups=4))(x)
    y_vmap = jax.vmap(lambda xi: group_norm(params, {}, xi[None], True, num_groups=4)[0][0])(x)
    np.testing.assert_allclose(y_jit, y, atol=1e-6)
    np.testing.assert_allclose(y_vmap, y, atol=1e-6)
    y_bf16, _ = group_norm(params, {}, x.astype(jnp.bfloat16), True, num_groups=4)
    assert y_bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y_bf16, np.float32), y, atol=5e-2)


def test_group_norm_errors():
    params, _ = group_norm_init(6)
    x = jnp.ones((2, 6))
    with pytest.raises(ValueError, match=r"num_groups=32 \(the default\) does not divide the 6 channels.*\[1, 2, 3, 6\]"):
        group_norm(params, {}, x, True)
    with pytest.raises(ValueError, match=r"num_groups=4 does not divide the 6 channels"):
        group_norm(params, {}, x, True, num_groups=4)
    with pytest.raises(ValueError, match=r"group_size=4 does not divide the 6 channels"):
        group_norm(params, {}, x, True, group_size=4)
    with pytest.raises(ValueError, match="got both num_groups=2 and group_size=3"):
        group_norm(params, {}, x, True, num_groups=2, group_size=3)
    with pytest.raises(ValueError, match=r"group_norm_init\(6\)"):
        group_norm(group_norm_init(4)[0], {}, x, True, num_groups=2)
    with pytest.raises(ValueError, match="needs a batch axis and a channel axis"):
        group_norm(params, {}, jnp.ones(6), True, num_groups=2)
    with pytest.raises(ValueError, match="num_channels=0 must be a positive int"):
        group_norm_init(0)
