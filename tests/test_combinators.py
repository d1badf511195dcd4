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


@pytest.mark.usefixtures("highest_precision")  # float32 against a float64 reference: no TF32
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


def test_options_reach_only_the_layers_that_declare_them(key):
    seen = {}

    def plain(params, batch_stats, x, train, *, key=None):  # declares no option: gets none
        return x, batch_stats

    def greedy(params, batch_stats, x, train, *, key=None, **options):  # takes everything
        seen.update(options)
        return x, batch_stats

    model = bnjax.serial(bnjax.Layer(lambda k: ({}, {}), plain, "plain"), bnjax.Dropout(0.0),
                         bnjax.Layer(lambda k: ({}, {}), greedy, "greedy"))
    x = jnp.ones((4, 1000))
    y, _ = model.apply({}, {}, x, True, key=key, dropout=0.5, bn_momentum=0.3)
    assert seen == {"dropout": 0.5, "bn_momentum": 0.3}
    # The dropout option overrode the layer's rate 0: about half the units are dropped, the rest doubled.
    assert abs(float(jnp.mean(y == 0)) - 0.5) < 0.02 and set(np.unique(np.asarray(y))) == {0.0, 2.0}


def test_an_option_no_layer_reads_is_an_error_naming_it_and_the_options_read(key):
    model = _model()
    params, stats = model.init(key)
    x = jnp.ones((4, 3))
    reads = r"\['axis_name', 'bn_average', 'bn_momentum', 'bn_unbiased', 'dropout', 'row_index'\]"
    with pytest.raises(ValueError, match=r"serial: no layer of the model reads the apply option 'bn_momentom'; its "
                                         r"apply reads " + reads) as info:
        model.apply(params, stats, x, True, key=key, bn_momentom=0.5)  # silently ignored before
    assert_reads_well(str(info.value))
    with pytest.raises(ValueError, match=r"the apply options \['bn_momentom', 'dropuot'\]"):
        model.apply(params, stats, x, True, key=key, bn_momentum=0.5, bn_momentom=0.5, dropuot=0.1)
    with pytest.raises(ValueError, match=r"reads the apply option 'precision'"):  # fixed when a layer is built
        model.apply(params, stats, x, True, key=key, precision="highest")
    with pytest.raises(ValueError, match=r"serial: no layer of the model reads the init option 'weight_scal'; its "
                                         r"init reads \['weight_scale'\]"):
        model.init(key, weight_scal=0.1)
    # A layer that reads no options, and compositions of them (convolution and pooling included).
    cnn = bnjax.serial(bnjax.Conv(1, 2, 3), bnjax.MaxPool(2), bnjax.Flatten(), bnjax.Dense(8, 3))
    p, s = cnn.init(key)
    with pytest.raises(ValueError, match=r"reads the apply option 'dropout'; its apply reads no options"):
        cnn.apply(p, s, jnp.ones((2, 4, 4, 1)), True, dropout=0.5)
    # Nested: the outer composition reads what its parts read; routing is unchanged.
    nested = bnjax.serial(bnjax.serial(bnjax.Dense(3, 4), bnjax.BatchNorm(4)), bnjax.Dropout(0.5))
    p, s = nested.init(key)
    y, _ = nested.apply(p, s, x, True, key=key, dropout=0.0, bn_momentum=0.5)
    assert y.shape == (4, 4)
    with pytest.raises(ValueError, match=r"'step'"):
        nested.apply(p, s, x, True, key=key, step=3)


def test_the_mlp_refuses_options_it_does_not_read(key):
    spec = bnjax.MLPSpec(in_features=3, hidden=(4,), num_classes=2, norm="batch")
    model = bnjax.mlp(spec)
    params, stats = model.init(key)
    with pytest.raises(ValueError, match=r"mlp: no layer of the model reads the apply option 'bn_momentom'"):
        model.apply(params, stats, jnp.ones((4, 3)), True, key=key, bn_momentom=0.5)
    with pytest.raises(ValueError, match=r"mlp: no layer of the model reads the init option 'weight_scal'"):
        model.init(key, weight_scal=0.5)
    with pytest.raises(ValueError, match=r"mlp: .* apply option 'step'; its apply reads \['axis_name', "):
        model.apply(params, stats, jnp.ones((4, 3)), True, key=key, step=1)  # only renorm reads the step
    # A layer that takes **options reads everything: no error.
    greedy = bnjax.Layer(lambda k: ({}, {}), lambda p, s, x, train, *, key=None, **o: (x, s), "greedy")
    assert bnjax.serial(greedy).apply({}, {}, x := jnp.ones(2), True, anything=1)[0] is x


def test_layer_options_is_the_union_of_the_parts():
    from bnjax.nn._combinators import layer_options

    model = bnjax.serial(bnjax.Dense(3, 4), bnjax.BatchNorm(4), bnjax.Dropout(0.1))
    assert layer_options(model, "init") == {"weight_scale"}
    assert layer_options(model, "apply") == {"bn_momentum", "bn_average", "bn_unbiased", "axis_name", "dropout",
                                             "row_index"}
    assert layer_options(bnjax.serial(bnjax.Dense(3, 4)), "apply") == set()


def test_batch_norm_options_override_the_constructor(key):
    layer = bnjax.BatchNorm(3, momentum=0.9)
    params, stats = layer.init(key)
    x = jnp.asarray(np.random.RandomState(2).randn(6, 3), jnp.float32)
    _, new = layer.apply(params, stats, x, True, bn_momentum=0.25)
    np.testing.assert_allclose(new["mean"], 0.75 * np.asarray(x, np.float64).mean(0), rtol=1e-5, atol=1e-6)
    _, cum = layer.apply(params, {**stats, "count": jnp.zeros((), jnp.int32)}, x, True, bn_average="cumulative")
    np.testing.assert_allclose(cum["mean"], np.asarray(x, np.float64).mean(0), rtol=1e-5, atol=1e-6)


def test_dense_init_option_weight_scale(key):
    layer = bnjax.Dense(5, 4, init="normal", weight_scale=1.0)
    base, _ = layer.init(key)
    scaled, _ = layer.init(key, weight_scale=0.1)
    np.testing.assert_allclose(scaled["weight"], 0.1 * np.asarray(base["weight"]), rtol=1e-6)


@pytest.mark.parametrize("factory, function, init_name", [
    (lambda: bnjax.GroupNorm(4, num_groups=2), lambda p, s, x: bnjax.group_norm(p, s, x, True, num_groups=2), "gn"),
    (lambda: bnjax.RMSNorm(4, eps=1e-5), lambda p, s, x: bnjax.rms_norm(p, s, x, True, eps=1e-5), "rms"),
    (lambda: bnjax.GhostBatchNorm(4, virtual_batch_size=3),
     lambda p, s, x: bnjax.ghost_batch_norm(p, s, x, True, virtual_batch_size=3), "bn"),
    (lambda: bnjax.BatchRenorm(4, rmax=1.5, dmax=0.5),
     lambda p, s, x: bnjax.batch_renorm(p, s, x, True, rmax=1.5, dmax=0.5), "bn"),
])
def test_norm_factories_equal_their_functions(key, factory, function, init_name):
    layer = factory()
    params, stats = layer.init(key)
    assert layer.name == init_name
    if stats:  # running statistics away from the init, so renorm's r and d act
        stats = {"mean": stats["mean"] + 0.5, "var": stats["var"] * 3.0}
    x = jnp.asarray(np.random.RandomState(4).randn(6, 4) * 2 + 1, jnp.float32)
    y, s = layer.apply(params, stats, x, True)
    y2, s2 = function(params, stats, x)
    np.testing.assert_array_equal(y, y2)
    for a, b in zip(jax.tree_util.tree_leaves(s), jax.tree_util.tree_leaves(s2)):
        np.testing.assert_array_equal(a, b)


def test_batch_renorm_schedule_follows_the_step_option(key):
    layer = bnjax.BatchRenorm(4, rmax=2.0, dmax=1.0, warmup_steps=10, hold_steps=5)
    params, stats = layer.init(key)
    stats = {"mean": stats["mean"] + 0.5, "var": stats["var"] * 3.0}
    x = jnp.asarray(np.random.RandomState(5).randn(6, 4), jnp.float32)
    for step in (0, 5, 10, 15, 40):
        rmax, dmax = bnjax.renorm_schedule(step, warmup_steps=10, rmax_final=2.0, dmax_final=1.0, hold_steps=5)
        want, _ = bnjax.batch_renorm(params, stats, x, True, rmax=rmax, dmax=dmax)
        got, _ = jax.jit(lambda t: layer.apply(params, stats, x, True, step=t))(step)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"BatchRenorm: warmup_steps=-1 must be an int >= 0"):
        bnjax.BatchRenorm(4, warmup_steps=-1)


def test_serial_rejects_what_is_not_a_layer():
    with pytest.raises(TypeError, match=r"serial: argument 1 is a \w+, not a bnjax.Layer; build layers with the factories"):
        bnjax.serial(bnjax.Dense(2, 2), jnp.tanh)
