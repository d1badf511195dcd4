"""Tests of bnjax.dropout: rate is the drop probability, inverted scaling, explicit keys, traced rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
import reference as ref
from reference import assert_reads_well

# Jitted once; rate and key are traced, so the tests below on (500, 500) float32 inputs share one compile.
drop = jax.jit(bnjax.dropout, static_argnums=3, static_argnames=("broadcast_dims",))
SHAPE = (500, 500)


@pytest.mark.parametrize("rate", [0.2, 0.7])
def test_rate_is_the_drop_probability(key, rate):
    y, stats = drop({}, {}, jnp.ones(SHAPE), True, key=key, rate=rate)
    assert stats == {}
    assert abs(float(jnp.mean(y == 0)) - rate) <= 0.01


def test_kept_units_are_scaled_by_inverse_keep(key):
    r = np.random.RandomState(40)
    x = r.randn(*SHAPE) + 10  # no zeros, so the keep mask can be read off the output
    y, _ = drop({}, {}, jnp.asarray(x, jnp.float32), True, key=key, rate=0.3)
    keep = np.asarray(y) != 0
    np.testing.assert_allclose(y, ref.dropout_forward(x, keep, 0.3), rtol=1e-6)


def test_train_mean_is_preserved(key):
    x = jnp.asarray(np.random.RandomState(41).randn(*SHAPE) + 10, jnp.float32)
    y, _ = drop({}, {}, x, True, key=key, rate=0.3)
    assert abs(float(jnp.mean(y)) - 10) <= 0.05


def test_eval_is_identity_and_needs_no_key():
    x = jnp.asarray(np.random.RandomState(42).randn(3, 4), jnp.float32)
    stats = {"unchanged": jnp.ones(2)}
    y, new = bnjax.dropout({}, stats, x, False, rate=0.5)
    np.testing.assert_array_equal(y, x)
    assert new is stats


def test_rate_zero_is_identity_without_key():
    x = jnp.asarray(np.random.RandomState(43).randn(3, 4), jnp.float32)
    y, _ = bnjax.dropout({}, {}, x, True, rate=0.0)
    np.testing.assert_array_equal(y, x)


def test_rate_one_gives_zeros_and_zero_gradients(key):
    x = jnp.asarray(np.random.RandomState(44).randn(*SHAPE), jnp.float32)
    y, _ = drop({}, {}, x, True, key=key, rate=1.0)
    np.testing.assert_array_equal(y, 0)
    x = x[:6, :5]
    g = jax.jit(jax.grad(lambda x: jnp.sum(bnjax.dropout({}, {}, x, True, key=key, rate=1.0)[0] * 3.0)))(x)
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(g == 0))


def test_traced_rate_swept_by_vmap(key):
    rates = jnp.asarray([0.0, 0.1, 0.5, 1.0])
    ys = jax.jit(jax.vmap(lambda r: bnjax.dropout({}, {}, jnp.ones(SHAPE), True, key=key, rate=r)[0]))(rates)
    fractions = np.asarray(jnp.mean(ys == 0, axis=(1, 2)))
    np.testing.assert_allclose(fractions, np.asarray(rates), atol=0.01)
    assert fractions[0] == 0 and fractions[-1] == 1
    for y, r in zip(ys[1:3], rates[1:3]):  # kept units carry the traced 1 / (1 - rate)
        np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - float(r)), rtol=1e-6)


def test_broadcast_dims_share_the_mask(key):
    x = jnp.asarray(np.random.RandomState(45).rand(16, 4, 4, 8) + 1, jnp.float32)
    y, _ = drop({}, {}, x, True, key=key, rate=0.5, broadcast_dims=(1, 2))
    zero = np.asarray(y == 0)
    per_channel = zero.reshape(16, 16, 8)
    assert np.all(per_channel.all(axis=1) | (~per_channel).all(axis=1))  # whole channels dropped together
    assert 0.35 < zero.mean() < 0.65


def test_keys_decide_the_mask(key):
    x = jnp.ones(SHAPE)
    a, _ = drop({}, {}, x, True, key=key, rate=0.5)
    b, _ = drop({}, {}, x, True, key=key, rate=0.5)
    c, _ = drop({}, {}, x, True, key=jax.random.key(1), rate=0.5)
    np.testing.assert_array_equal(a, b)
    assert bool(jnp.any(a != c))


def test_gradient_matches_reference_and_numeric(x64):
    key, rate = jax.random.key(7), 0.4
    r = np.random.RandomState(46)
    x, dy = jnp.asarray(r.randn(6, 5) + 10), r.randn(6, 5)
    f = jax.jit(lambda x: bnjax.dropout({}, {}, x, True, key=key, rate=rate)[0])
    y, vjp = jax.vjp(f, x)
    keep = np.asarray(y) != 0
    (dx,) = vjp(jnp.asarray(dy))
    dx_ref = ref.dropout_backward(dy, keep, rate)
    dx_num = bnjax.numeric_vjp(lambda z: np.asarray(f(jnp.asarray(z))), np.asarray(x), dy)
    errs = bnjax.rel_error(dx, dx_ref), bnjax.rel_error(dx, dx_num)
    print(f"dropout dx rel errors (vs closed form, vs numeric): {errs}")
    assert errs[0] <= 1e-12 and errs[1] <= 1e-7


def test_init():
    assert bnjax.dropout_init() == ({}, {})


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert_reads_well(str(info.value))
    return str(info.value)


def test_errors(key):
    x = jnp.ones((3, 4))
    _raises(ValueError, r"rate=1.5 is outside \[0.0, 1.0\]", bnjax.dropout, {}, {}, x, True, key=key, rate=1.5)
    _raises(ValueError, r"rate=-0.1 is outside \[0.0, 1.0\]", bnjax.dropout, {}, {}, x, False, rate=-0.1)
    msg = _raises(ValueError, r"rate=0.5 needs a PRNG key", bnjax.dropout, {}, {}, x, True, rate=0.5)
    assert "key=jax.random.key(0)" in msg and "train=False" in msg
    _raises(TypeError, r"x has dtype int32.*astype\(jnp.float32\)", bnjax.dropout, {}, {}, jnp.ones((3, 4), jnp.int32),
            True, key=key)
