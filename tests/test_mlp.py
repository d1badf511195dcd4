"""MLPSpec / mlp_init / mlp_apply / mlp against an independent NumPy forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mlp_reference import mlp_forward

import bnjax
from bnjax import MLPSpec, mlp, mlp_apply, mlp_init

# One compiled program per configuration instead of op-by-op dispatch (much faster on a busy CPU).
apply_jit = jax.jit(mlp_apply, static_argnames=("train", "spec"))
init_jit = jax.jit(mlp_init, static_argnames=("spec",))


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def _perturb(params, seed=1):
    """Non-trivial BN/LN scale and shift (init is 1 and 0, which would hide mistakes)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, layer in params.items():
        out[name] = dict(layer)
        if name.startswith(("bn_", "ln_")):
            out[name]["scale"] = jnp.asarray(1 + 0.3 * rng.standard_normal(layer["scale"].shape), jnp.float32)
            out[name]["bias"] = jnp.asarray(0.2 * rng.standard_normal(layer["bias"].shape), jnp.float32)
        if name.startswith("dense_") and "bias" in layer:
            out[name]["bias"] = jnp.asarray(0.1 * rng.standard_normal(layer["bias"].shape), jnp.float32)
    return out


def test_init_layout_batch_norm_has_no_dense_bias(key):
    spec = MLPSpec(in_features=7, hidden=(5, 4), num_classes=3, norm="batch")
    params, stats = init_jit(key, spec)
    assert _shapes(params) == {
        "dense_0": {"weight": (5, 7)},
        "bn_0": {"scale": (5,), "bias": (5,)},
        "dense_1": {"weight": (4, 5)},
        "bn_1": {"scale": (4,), "bias": (4,)},
        "dense_2": {"weight": (3, 4), "bias": (3,)},
    }
    assert _shapes(stats) == {"bn_0": {"mean": (5,), "var": (5,)}, "bn_1": {"mean": (4,), "var": (4,)}}
    np.testing.assert_array_equal(params["bn_0"]["scale"], 1.0)
    np.testing.assert_array_equal(stats["bn_1"]["var"], 1.0)


@pytest.mark.parametrize("norm, extra", [("none", {}), ("layer", {"ln_0": {"scale": (5,), "bias": (5,)}})])
def test_init_layout_without_batch_norm(key, norm, extra):
    spec = MLPSpec(in_features=7, hidden=(5,), num_classes=3, norm=norm)
    params, stats = mlp_init(key, spec)
    assert _shapes(params) == {"dense_0": {"weight": (5, 7), "bias": (5,)}, **extra,
                               "dense_1": {"weight": (3, 5), "bias": (3,)}}
    assert stats == {}


def test_cumulative_average_adds_count(key):
    _, stats = mlp_init(key, MLPSpec(in_features=3, hidden=(2,), norm="batch", bn_average="cumulative"))
    assert int(stats["bn_0"]["count"]) == 0


def test_normal_init_uses_weight_scale_and_traced_override(key):
    spec = MLPSpec(in_features=300, hidden=(200,), weight_scale=2e-2)
    params, _ = init_jit(key, spec)
    assert abs(float(jnp.std(params["dense_0"]["weight"])) - 2e-2) < 1e-3
    scales = jnp.array([1e-3, 1e-1])
    swept, _ = jax.jit(jax.vmap(lambda ws: mlp_init(key, spec, weight_scale=ws)))(scales)
    w = np.asarray(swept["dense_0"]["weight"])
    np.testing.assert_allclose(w[1], 100.0 * w[0], rtol=1e-5)
    np.testing.assert_allclose(w[1], np.asarray(params["dense_0"]["weight"]) * 5.0, rtol=1e-5)


def test_he_init_std(key):
    params, _ = mlp_init(key, MLPSpec(in_features=400, hidden=(300,), init="he"))
    assert abs(float(jnp.std(params["dense_0"]["weight"])) - np.sqrt(2 / 400)) < 3e-3


# ReLU with batch norm is also checked against NumPy in the dropout tests below.
CASES = [("batch", "tanh"), ("layer", "gelu"), ("none", "sigmoid")]


@pytest.mark.parametrize("norm, activation", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_forward_matches_numpy(key, norm, activation, train):
    spec = MLPSpec(in_features=6, hidden=(5, 4), num_classes=3, norm=norm, activation=activation,
                   weight_scale=0.5, bn_momentum=0.8)
    params, stats = init_jit(key, spec)
    params = _perturb(params)
    if norm == "batch":  # running statistics other than the init values
        stats = {k: {"mean": v["mean"] + 0.3, "var": v["var"] * 2.0} for k, v in stats.items()}
    x = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32) * 2 + 1
    logits, new_stats = apply_jit(params, stats, jnp.asarray(x), train, spec=spec)
    ref_logits, ref_stats, _ = mlp_forward(params, stats, x, train, hidden=spec.hidden, norm=norm,
                                           activation=activation, momentum=0.8)
    np.testing.assert_allclose(logits, ref_logits, rtol=2e-5, atol=2e-5)
    if norm == "batch" and train:
        for name, s in ref_stats.items():
            np.testing.assert_allclose(new_stats[name]["mean"], s["mean"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(new_stats[name]["var"], s["var"], rtol=1e-5, atol=1e-6)
    else:
        assert jax.tree.structure(new_stats) == jax.tree.structure(stats)


@pytest.mark.parametrize("where, layers", [("last", (2,)), ("all", (0, 1, 2))])
def test_dropout_placement_and_keys(key, where, layers):
    spec = MLPSpec(in_features=5, hidden=(6, 6, 6), num_classes=2, norm="batch", dropout=0.4,
                   dropout_layers=where, weight_scale=0.5)
    params, stats = init_jit(key, spec)
    x = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    dkey = jax.random.key(42)
    logits, _ = apply_jit(params, stats, jnp.asarray(x), True, spec=spec, key=dkey)
    # Documented key derivation: layer i draws its mask from fold_in(key, i).
    masks = {i: np.asarray(jax.random.bernoulli(jax.random.fold_in(dkey, i), 0.6, (8, 6))) for i in layers}
    ref, _, _ = mlp_forward(params, stats, x, True, hidden=spec.hidden, norm="batch", masks=masks, keep=0.6)
    np.testing.assert_allclose(logits, ref, rtol=2e-5, atol=2e-5)
    # Eval mode ignores dropout.
    ev, _ = apply_jit(params, stats, jnp.asarray(x), False, spec=spec)
    ref_ev, _, _ = mlp_forward(params, stats, x, False, hidden=spec.hidden, norm="batch")
    np.testing.assert_allclose(ev, ref_ev, rtol=2e-5, atol=2e-5)


def test_traced_dropout_and_momentum_under_vmap(key):
    spec = MLPSpec(in_features=4, hidden=(8, 8), num_classes=3, norm="batch", dropout=0.1)
    params, stats = init_jit(key, spec)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((10, 4)), jnp.float32)
    dkey = jax.random.key(3)
    rates, moms = jnp.array([0.0, 0.3, 0.7]), jnp.array([0.5, 0.9, 0.99])
    fn = jax.jit(lambda r, m: mlp_apply(params, stats, x, True, spec=spec, key=dkey, dropout=r, bn_momentum=m))
    logits, new = jax.jit(jax.vmap(fn))(rates, moms)
    for i in range(3):
        one, one_stats = fn(rates[i], moms[i])
        np.testing.assert_allclose(logits[i], one, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(new["bn_1"]["mean"][i], one_stats["bn_1"]["mean"], rtol=1e-6, atol=1e-7)
    # A traced override equals the spec value given as a Python constant.
    const, _ = apply_jit(params, stats, x, True, spec=spec.replace(dropout=0.3, bn_momentum=0.9), key=dkey)
    np.testing.assert_allclose(logits[1], const, rtol=1e-6, atol=1e-6)


def test_mlp_layer_matches_functions(key):
    spec = MLPSpec(in_features=3, hidden=(4,), num_classes=2, norm="layer")
    layer = mlp(spec)
    assert isinstance(layer, bnjax.Layer) and layer.name == "mlp"
    p, s = layer.init(key)
    p2, s2 = mlp_init(key, spec)
    x = jnp.ones((2, 3))
    np.testing.assert_array_equal(layer.apply(p, s, x, False)[0], mlp_apply(p2, s2, x, False, spec=spec)[0])


def test_train_mode_dropout_needs_key(key):
    spec = MLPSpec(in_features=3, hidden=(4,), dropout=0.5)
    p, s = mlp_init(key, spec)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        mlp_apply(p, s, jnp.ones((2, 3)), True, spec=spec)


def test_input_shape_error(key):
    spec = MLPSpec(in_features=3, hidden=(4,))
    p, s = mlp_init(key, spec)
    with pytest.raises(ValueError, match=r"expected \(N, 3\); flatten"):
        mlp_apply(p, s, jnp.ones((2, 1, 3)), False, spec=spec)


@pytest.mark.parametrize("field, value, match", [
    ("norm", "bn", r"norm='bn' is not a valid option; use one of \('none', 'batch', 'layer'\)"),
    ("activation", "swish", r"activation='swish'"),
    ("init", "xavier", r"init='xavier'"),
    ("dropout_layers", "first", r"dropout_layers='first'"),
    ("bn_average", "mean", r"bn_average='mean'"),
    ("dropout", 1.0, r"dropout=1.0 is the drop probability and must be in \[0, 1\)"),
    ("bn_momentum", 1.5, r"bn_momentum=1.5 must be in \[0, 1\]"),
    ("hidden", (10, 0), r"hidden=\(10, 0\) must be a tuple of positive ints"),
    ("in_features", 0, r"in_features=0 must be a positive int"),
    ("weight_scale", -1.0, r"weight_scale=-1.0 must be a positive number"),
    ("bn_unbiased", 1, r"bn_unbiased=1 must be True or False"),
])
def test_spec_validation(field, value, match):
    kwargs = {"in_features": 4, field: value}
    with pytest.raises(ValueError, match=r"MLPSpec: " + match):
        MLPSpec(**kwargs)


def test_spec_accepts_list_hidden_and_is_hashable():
    spec = MLPSpec(in_features=4, hidden=[3, 2])
    assert spec.hidden == (3, 2) and spec.num_layers == 3
    assert hash(spec) == hash(MLPSpec(in_features=4, hidden=(3, 2)))
    with pytest.raises(ValueError, match="norm='x'"):
        spec.replace(norm="x")
