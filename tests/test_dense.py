"""Tests of bnjax.dense / dense_init: the (out, in) layout, the three inits and the forward map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
from reference import assert_reads_well


def test_init_layout_and_forward(key):
    params, stats = bnjax.dense_init(key, 3, 4)
    assert stats == {}
    assert params["weight"].shape == (4, 3) and params["bias"].shape == (4,)
    assert params["weight"].dtype == params["bias"].dtype == jnp.float32
    np.testing.assert_array_equal(params["bias"], 0)
    r = np.random.RandomState(50)
    params = {"weight": jnp.asarray(r.randn(4, 3), jnp.float32), "bias": jnp.asarray(r.randn(4), jnp.float32)}
    x = r.randn(5, 2, 3)
    y, st = bnjax.dense(params, {}, jnp.asarray(x, jnp.float32), True, precision="highest")  # vs float64: no TF32
    assert y.shape == (5, 2, 4) and st == {}
    want = x @ np.asarray(params["weight"], np.float64).T + np.asarray(params["bias"], np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_no_bias(key):
    params, _ = bnjax.dense_init(key, 3, 2, use_bias=False)
    assert set(params) == {"weight"}
    x = jnp.ones((1, 3))
    np.testing.assert_allclose(bnjax.dense(params, {}, x, False)[0], x @ params["weight"].T, rtol=1e-6)


@pytest.mark.parametrize(
    "init, in_f, out_f, std",
    [("he", 400, 300, np.sqrt(2 / 400)), ("glorot", 400, 300, np.sqrt(2 / 700)), ("normal", 400, 300, 0.05)],
)
def test_init_scales(key, init, in_f, out_f, std):
    params, _ = bnjax.dense_init(key, in_f, out_f, init=init, weight_scale=0.05)
    w = np.asarray(params["weight"], np.float64)
    assert w.shape == (out_f, in_f)
    assert abs(w.std() / std - 1) < 0.01  # 120000 draws: the sample std is within ~0.2% of the true one
    assert abs(w.mean()) < 3 * std / np.sqrt(w.size) + 1e-12


def test_weight_scale_may_be_traced(key):
    scales = jnp.asarray([1e-3, 1e-1])
    ws = jax.vmap(lambda s: bnjax.dense_init(key, 50, 40, init="normal", weight_scale=s)[0]["weight"])(scales)
    np.testing.assert_allclose(ws[1] / ws[0], 100.0, rtol=1e-4)  # same draws, scaled
    np.testing.assert_allclose(np.asarray(ws[1]).std(), 0.1, rtol=0.05)


def test_errors(key):
    for exc, match, call in [
        (ValueError, r"init='xavier' is not a valid option.*'normal', 'he', 'glorot'",
         lambda: bnjax.dense_init(key, 3, 4, init="xavier")),
        (ValueError, r"in_features=0 must be a positive int", lambda: bnjax.dense_init(key, 0, 4)),
        (ValueError, r"x has 5 features.*shape \(4, 3\) \(out, in\).*dense_init\(key, 5, out_features\)",
         lambda: bnjax.dense(bnjax.dense_init(key, 3, 4)[0], {}, jnp.ones((2, 5)), True)),
    ]:
        with pytest.raises(exc, match=match) as info:
            call()
        assert_reads_well(str(info.value))
