"""Tests of the layer factories and ``serial``: tree names, state threading, per-layer keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
import reference as ref
from reference import assert_reads_well


def _model():
    return bnjax.serial(
        bnjax.Dense(3, 4, use_bias=False),
        bnjax.BatchNorm(4, momentum=0.5),
        bnjax.Activation(jax.nn.relu),
        bnjax.Dropout(0.25),
        bnjax.Dense(4, 2),
        bnjax.LayerNorm(2),
    )


def test_tree_names_and_init_layout(key):
    params, stats = _model().init(key)
    assert list(params) == ["dense_0", "bn_0", "dense_1", "ln_0"]  # parameter-free layers are left out
    assert list(stats) == ["bn_0"]
    assert set(params["dense_0"]) == {"weight"} and params["dense_0"]["weight"].shape == (4, 3)
    assert params["dense_1"]["weight"].shape == (2, 4) and params["dense_1"]["bias"].shape == (2,)
    assert set(params["bn_0"]) == {"scale", "bias"} and set(stats["bn_0"]) == {"mean", "var"}
    assert params["ln_0"]["scale"].shape == (2,)


def test_state_threads_through_serial(key):
    model = _model()
    params, stats = model.init(key)
    x = jnp.asarray(np.random.RandomState(60).randn(8, 3) * 2 + 1, jnp.float32)
    y, new = jax.jit(model.apply, static_argnums=3)(params, stats, x, True, key=key)
    assert y.shape == (8, 2) and list(new) == ["bn_0"]
    h = np.asarray(x, np.float64) @ np.asarray(params["dense_0"]["weight"], np.float64).T
    # BatchNorm(4, momentum=0.5) from mean 0 / var 1: new = 0.5 * old + 0.5 * batch
    np.testing.assert_allclose(new["bn_0"]["mean"], 0.5 * h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["bn_0"]["var"], 0.5 + 0.5 * h.var(0), rtol=1e-5)

    # Eval: dropout is off, batch norm uses the running stats, and the stats come back unchanged.
    y_eval, same = jax.jit(model.apply, static_argnums=3)(params, new, x, False)
    for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(new)):
        np.testing.assert_array_equal(a, b)
    out, _, _, _ = ref.batchnorm_forward(h, 1.0, 0.0, {"mode": "test", "running_mean": np.asarray(new["bn_0"]["mean"]),
                                                       "running_var": np.asarray(new["bn_0"]["var"])})
    z = np.maximum(out, 0) @ np.asarray(params["dense_1"]["weight"], np.float64).T
    want, _ = ref.layernorm_forward(z, 1.0, 0.0)
    np.testing.assert_allclose(y_eval, want, rtol=1e-4, atol=1e-4)


def test_layers_get_distinct_keys(key):
    model = bnjax.serial(bnjax.Dropout(0.5), bnjax.Dropout(0.5), names=("a", "b"))
    x = jnp.ones((64, 64))

    @jax.jit
    def both(x, key):
        # The documented per-layer key is jax.random.fold_in(key, i).
        a, _ = bnjax.dropout({}, {}, x, True, key=jax.random.fold_in(key, 0), rate=0.5)
        b, _ = bnjax.dropout({}, {}, a, True, key=jax.random.fold_in(key, 1), rate=0.5)
        return model.apply({}, {}, x, True, key=key)[0], b

    first, b = both(x, key)
    np.testing.assert_array_equal(first, b)
    # Distinct keys: two independent masks keep ~1/4 of the units (one shared mask would keep ~1/2).
    assert abs(float(jnp.mean(first != 0)) - 0.25) < 0.03


def test_init_keys_are_per_layer_and_stable(key):
    p1, _ = bnjax.serial(bnjax.Dense(3, 3), bnjax.Dropout(0.1), bnjax.Dense(3, 3)).init(key)
    assert not np.allclose(p1["dense_0"]["weight"], p1["dense_1"]["weight"])
    # Replacing layer 1 by another parameter-free layer does not change the other layers' draws.
    p2, _ = bnjax.serial(bnjax.Dense(3, 3), bnjax.Activation(jnp.tanh), bnjax.Dense(3, 3)).init(key)
    np.testing.assert_array_equal(p1["dense_1"]["weight"], p2["dense_1"]["weight"])


def test_cumulative_batch_norm_factory_and_custom_names(key):
    model = bnjax.serial(bnjax.BatchNorm(2, average="cumulative"), names=("norm",))
    params, stats = model.init(key)
    assert int(stats["norm"]["count"]) == 0
    x = jnp.asarray([[0.0, 1.0], [2.0, 5.0]])
    _, stats = jax.jit(model.apply, static_argnums=3)(params, stats, x, True)
    np.testing.assert_allclose(stats["norm"]["mean"], [1.0, 3.0])
    np.testing.assert_allclose(stats["norm"]["var"], [1.0, 4.0])
    assert int(stats["norm"]["count"]) == 1


def test_activation_name_and_apply():
    layer = bnjax.Activation(jnp.tanh)
    assert layer.name == "tanh" and layer.init(None) == ({}, {})
    y, s = layer.apply({}, {"k": 1}, jnp.asarray([0.5]), True)
    np.testing.assert_allclose(y, np.tanh([0.5]), rtol=1e-6)
    assert s == {"k": 1}


def test_serial_names_error():
    with pytest.raises(ValueError, match=r"serial: names=\('a', 'a'\) must be 2 distinct strings") as info:
        bnjax.serial(bnjax.Dropout(0.1), bnjax.Dropout(0.1), names=("a", "a"))
    assert_reads_well(str(info.value))
