"""MLPSpec / mlp against an independent NumPy forward pass, and mlp(spec) == the equivalent serial(...)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mlp_reference import mlp_forward

import bnjax
from bnjax import MLPSpec, mlp


def _apply(spec):
    return jax.jit(mlp(spec).apply, static_argnums=3)


def _init(spec, **options):
    return jax.jit(lambda k: mlp(spec).init(k, **options))


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def _perturb(params, seed=1):
    """Non-trivial norm scales and shifts (init is 1 and 0, which would hide mistakes)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, layer in params.items():
        out[name] = dict(layer)
        if not name.startswith("dense_"):
            out[name]["scale"] = jnp.asarray(1 + 0.3 * rng.standard_normal(layer["scale"].shape), jnp.float32)
            if "bias" in layer:
                out[name]["bias"] = jnp.asarray(0.2 * rng.standard_normal(layer["bias"].shape), jnp.float32)
        if name.startswith("dense_") and "bias" in layer:
            out[name]["bias"] = jnp.asarray(0.1 * rng.standard_normal(layer["bias"].shape), jnp.float32)
    return out


def test_init_layout_batch_norm_has_no_dense_bias(key):
    spec = MLPSpec(in_features=7, hidden=(5, 4), num_classes=3, norm="batch")
    params, stats = _init(spec)(key)
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
    # After the activation, batch norm cannot absorb the dense bias: it stays.
    after, _ = mlp(spec.replace(norm_position="after")).init(key)
    assert "bias" in after["dense_0"]


@pytest.mark.parametrize("norm, extra", [
    ("none", {}),
    ("layer", {"ln_0": {"scale": (6,), "bias": (6,)}}),
    ("group", {"gn_0": {"scale": (6,), "bias": (6,)}}),
    ("rms", {"rms_0": {"scale": (6,)}}),
])
def test_init_layout_of_per_example_norms(key, norm, extra):
    spec = MLPSpec(in_features=7, hidden=(6,), num_classes=3, norm=norm, groups=3 if norm == "group" else None)
    params, stats = mlp(spec).init(key)
    assert _shapes(params) == {"dense_0": {"weight": (6, 7), "bias": (6,)}, **extra,
                               "dense_1": {"weight": (3, 6), "bias": (3,)}}
    assert stats == {}


def test_cumulative_average_adds_count(key):
    _, stats = mlp(MLPSpec(in_features=3, hidden=(2,), norm="batch", bn_average="cumulative")).init(key)
    assert int(stats["bn_0"]["count"]) == 0


def test_init_keys_follow_serial_positions(key):
    """Layer j of the list (dense_0, bn_0, relu_0, dropout_0, dense_1, ...) draws from fold_in(key, j)."""
    spec = MLPSpec(in_features=4, hidden=(3,), num_classes=2, norm="batch", init="normal", weight_scale=0.5)
    params, _ = mlp(spec).init(key)
    for name, position, shape in (("dense_0", 0, (3, 4)), ("dense_1", 4, (2, 3))):
        want = 0.5 * jax.random.normal(jax.random.fold_in(key, position), shape)
        np.testing.assert_allclose(params[name]["weight"], want, rtol=1e-6)


def test_normal_init_uses_weight_scale_and_traced_override(key):
    spec = MLPSpec(in_features=300, hidden=(200,), weight_scale=2e-2)
    params, _ = _init(spec)(key)
    assert abs(float(jnp.std(params["dense_0"]["weight"])) - 2e-2) < 1e-3
    scales = jnp.array([1e-3, 1e-1])
    swept, _ = jax.jit(jax.vmap(lambda ws: mlp(spec).init(key, weight_scale=ws)))(scales)
    w = np.asarray(swept["dense_0"]["weight"])
    np.testing.assert_allclose(w[1], 100.0 * w[0], rtol=1e-5)
    np.testing.assert_allclose(w[1], np.asarray(params["dense_0"]["weight"]) * 5.0, rtol=1e-5)


def test_he_init_std(key):
    params, _ = mlp(MLPSpec(in_features=400, hidden=(300,), init="he")).init(key)
    assert abs(float(jnp.std(params["dense_0"]["weight"])) - np.sqrt(2 / 400)) < 3e-3


# (norm, activation, position, extra spec fields). ReLU with batch norm is also covered by the dropout tests.
CASES = [
    ("batch", "tanh", "before", {}),
    ("batch", "relu", "after", {}),
    ("layer", "gelu", "before", {}),
    ("none", "sigmoid", "before", {}),
    ("group", "relu", "before", {"groups": 2}),
    ("group", "tanh", "after", {"group_size": 1}),
    ("rms", "relu", "before", {}),
    ("ghost", "relu", "before", {"virtual_batch_size": 4}),
    ("renorm", "tanh", "before", {"renorm_rmax": 1.5, "renorm_dmax": 0.5}),
]


@pytest.mark.usefixtures("highest_precision")  # float32 against a float64 reference: no TF32
@pytest.mark.parametrize("norm, activation, position, extra", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_forward_matches_numpy(key, norm, activation, position, extra, train):
    spec = MLPSpec(in_features=6, hidden=(4, 4), num_classes=3, norm=norm, activation=activation,
                   norm_position=position, weight_scale=0.5, bn_momentum=0.8, **extra)
    params, stats = _init(spec)(key)
    params = _perturb(params)
    # Running statistics other than the init values (renorm's r and d depend on them in training too).
    stats = {k: {"mean": v["mean"] + 0.3, "var": v["var"] * 2.0} for k, v in stats.items()}
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32) * 2 + 1
    logits, new_stats = _apply(spec)(params, stats, jnp.asarray(x), train)
    ref_logits, ref_stats, _ = mlp_forward(
        params, stats, x, train, hidden=spec.hidden, norm=norm, position=position, activation=activation,
        momentum=0.8, groups=spec.groups or (4 // spec.group_size if spec.group_size else None),
        virtual_batch_size=spec.virtual_batch_size, rmax=spec.renorm_rmax, dmax=spec.renorm_dmax)
    np.testing.assert_allclose(logits, ref_logits, rtol=2e-5, atol=2e-5)
    if norm in ("batch", "ghost", "renorm") and train:
        for name, s in ref_stats.items():
            np.testing.assert_allclose(new_stats[name]["mean"], s["mean"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(new_stats[name]["var"], s["var"], rtol=1e-5, atol=1e-6)
    else:
        assert jax.tree.structure(new_stats) == jax.tree.structure(stats)


def test_renorm_warmup_starts_as_batch_norm(key):
    """With a warm-up, step 0 has rmax = 1, dmax = 0 (plain batch norm); the option step moves the bounds."""
    spec = MLPSpec(in_features=5, hidden=(4,), num_classes=2, norm="renorm", renorm_warmup_steps=10)
    params, stats = mlp(spec).init(key)
    stats = {"bn_0": {"mean": stats["bn_0"]["mean"] + 2.0, "var": stats["bn_0"]["var"] * 9.0}}
    x = jnp.asarray(np.random.default_rng(3).standard_normal((8, 5)), jnp.float32)
    plain, _ = mlp(spec.replace(norm="batch")).apply({**params, "dense_0": params["dense_0"]}, stats, x, True)
    at0, _ = mlp(spec).apply(params, stats, x, True, step=0)
    at10, _ = mlp(spec).apply(params, stats, x, True, step=10)
    final, _ = mlp(spec.replace(renorm_warmup_steps=0)).apply(params, stats, x, True)
    np.testing.assert_allclose(at0, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(at10, final, rtol=1e-5, atol=1e-6)
    assert not np.allclose(at0, final, atol=1e-3)


@pytest.mark.usefixtures("highest_precision")  # float32 against a float64 reference: no TF32
@pytest.mark.parametrize("where, positions", [("last", {2: 9}), ("all", {0: 3, 1: 7, 2: 11})])
def test_dropout_placement_and_keys(key, where, positions):
    spec = MLPSpec(in_features=5, hidden=(6, 6, 6), num_classes=2, norm="batch", dropout=0.4,
                   dropout_layers=where, weight_scale=0.5)
    params, stats = _init(spec)(key)
    x = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    dkey = jax.random.key(42)
    logits, _ = _apply(spec)(params, stats, jnp.asarray(x), True, key=dkey)
    # serial's key derivation: the dropout layer at position j of the list (dense, bn, relu, dropout, dense,
    # ...) draws its mask from fold_in(key, j).
    masks = {i: np.asarray(jax.random.bernoulli(jax.random.fold_in(dkey, j), 0.6, (8, 6)))
             for i, j in positions.items()}
    ref, _, _ = mlp_forward(params, stats, x, True, hidden=spec.hidden, norm="batch", masks=masks, keep=0.6)
    np.testing.assert_allclose(logits, ref, rtol=2e-5, atol=2e-5)
    # Eval mode ignores dropout.
    ev, _ = _apply(spec)(params, stats, jnp.asarray(x), False)
    ref_ev, _, _ = mlp_forward(params, stats, x, False, hidden=spec.hidden, norm="batch")
    np.testing.assert_allclose(ev, ref_ev, rtol=2e-5, atol=2e-5)


def test_traced_dropout_and_momentum_under_vmap(key):
    spec = MLPSpec(in_features=4, hidden=(8, 8), num_classes=3, norm="batch", dropout=0.1)
    params, stats = _init(spec)(key)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((10, 4)), jnp.float32)
    dkey = jax.random.key(3)
    rates, moms = jnp.array([0.0, 0.3, 0.7]), jnp.array([0.5, 0.9, 0.99])
    fn = jax.jit(lambda r, m: mlp(spec).apply(params, stats, x, True, key=dkey, dropout=r, bn_momentum=m))
    logits, new = jax.jit(jax.vmap(fn))(rates, moms)
    for i in range(3):
        one, one_stats = fn(rates[i], moms[i])
        np.testing.assert_allclose(logits[i], one, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(new["bn_1"]["mean"][i], one_stats["bn_1"]["mean"], rtol=1e-6, atol=1e-7)
    # A traced override equals the spec value given as a Python constant.
    const, _ = _apply(spec.replace(dropout=0.3, bn_momentum=0.9))(params, stats, x, True, key=dkey)
    np.testing.assert_allclose(logits[1], const, rtol=1e-6, atol=1e-6)


def _equivalent_serial(spec):
    """The documented block structure written out with the public factories."""
    act = bnjax.Activation(jnp.tanh, "tanh")
    bn = dict(momentum=spec.bn_momentum, eps=spec.bn_eps)
    return bnjax.serial(
        bnjax.Dense(5, 4, init="normal", weight_scale=0.5, use_bias=False), bnjax.BatchNorm(4, **bn), act,
        bnjax.Dropout(0.2),
        bnjax.Dense(4, 3, init="normal", weight_scale=0.5, use_bias=False), bnjax.BatchNorm(3, **bn), act,
        bnjax.Dropout(0.2),
        bnjax.Dense(3, 2, init="normal", weight_scale=0.5),
    )


def test_mlp_is_the_equivalent_serial(key):
    spec = MLPSpec(in_features=5, hidden=(4, 3), num_classes=2, norm="batch", activation="tanh", dropout=0.2,
                   weight_scale=0.5)
    layer, ref = mlp(spec), _equivalent_serial(spec)
    assert isinstance(layer, bnjax.Layer) and layer.name == "mlp"
    p, s = layer.init(key)
    p2, s2 = ref.init(key)
    assert jax.tree.structure((p, s)) == jax.tree.structure((p2, s2))
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((p2, s2))):
        np.testing.assert_array_equal(a, b)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((6, 5)), jnp.float32)
    for train in (True, False):
        y, st = layer.apply(p, s, x, train, key=jax.random.key(9), bn_momentum=0.7)
        y2, st2 = ref.apply(p2, s2, x, train, key=jax.random.key(9), bn_momentum=0.7)
        np.testing.assert_array_equal(y, y2)
        for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(st2)):
            np.testing.assert_array_equal(a, b)


def test_norm_layer_builds_each_norm():
    assert bnjax.norm_layer("none", 4) is None
    names = {n: bnjax.norm_layer(n, 4, groups=2, virtual_batch_size=2).name
             for n in ("batch", "ghost", "renorm", "layer", "group", "rms")}
    assert names == {"batch": "bn", "ghost": "bn", "renorm": "bn", "layer": "ln", "group": "gn", "rms": "rms"}
    with pytest.raises(ValueError, match="norm='ghost' needs virtual_batch_size"):
        bnjax.norm_layer("ghost", 4)


def test_train_mode_dropout_needs_key(key):
    spec = MLPSpec(in_features=3, hidden=(4,), dropout=0.5)
    p, s = mlp(spec).init(key)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        mlp(spec).apply(p, s, jnp.ones((2, 3)), True)


def test_input_shape_and_missing_size_errors(key):
    spec = MLPSpec(in_features=3, hidden=(4,))
    p, s = mlp(spec).init(key)
    with pytest.raises(ValueError, match=r"expected \(N, 3\); flatten"):
        mlp(spec).apply(p, s, jnp.ones((2, 1, 3)), False)
    with pytest.raises(ValueError, match=r"mlp: spec.in_features is None; set it"):
        mlp(MLPSpec(hidden=(4,)))


@pytest.mark.parametrize("fields, match", [
    ({"norm": "bn"}, r"norm='bn' is not a valid option; use one of \('none', 'batch', 'layer', 'group'"),
    ({"norm_position": "middle"}, r"norm_position='middle' is not a valid option; use one of \('before', 'after'\)"),
    ({"activation": "swish"}, r"activation='swish'"),
    ({"init": "xavier"}, r"init='xavier'"),
    ({"dropout_layers": "first"}, r"dropout_layers='first'"),
    ({"bn_average": "mean"}, r"bn_average='mean'"),
    ({"dropout": 1.0}, r"dropout=1.0 is the drop probability and must be in \[0, 1\)"),
    ({"bn_momentum": 1.5}, r"bn_momentum=1.5 must be in \[0, 1\]"),
    ({"hidden": (10, 0)}, r"hidden=\(10, 0\) must be a tuple of positive ints"),
    ({"in_features": 0}, r"in_features=0 must be a positive int"),
    ({"weight_scale": -1.0}, r"weight_scale=-1.0 must be a positive finite number"),
    ({"bn_unbiased": 1}, r"bn_unbiased=1 must be True or False"),
    ({"norm": "group"}, r"groups=None is unset: norm='group' needs groups"),
    ({"norm": "group", "hidden": (6, 4), "groups": 3}, r"groups=3 does not divide the hidden width 4 .* \[1, 2\]"),
    ({"norm": "group", "groups": 2, "group_size": 5}, r"group_size=5 is set together with groups=2"),
    ({"norm": "ghost"}, r"virtual_batch_size=None is unset: norm='ghost' needs"),
    ({"norm": "ghost", "virtual_batch_size": 1}, r"virtual_batch_size=1 must be >= 2"),
    ({"renorm_rmax": 0.5}, r"renorm_rmax=0.5 must be a number >= 1"),
    ({"renorm_dmax": -1.0}, r"renorm_dmax=-1.0 must be a number >= 0"),
    ({"renorm_warmup_steps": -1}, r"renorm_warmup_steps=-1 must be an int >= 0"),
    ({"groups": 0}, r"groups=0 must be a positive int"),
])
def test_spec_validation(fields, match):
    with pytest.raises(ValueError, match=r"MLPSpec: " + match):
        MLPSpec(**{"in_features": 4, **fields})


def test_keys_of_other_norms_are_ignored():
    spec = MLPSpec(in_features=4, hidden=(6,), norm="batch", groups=4, virtual_batch_size=3)
    assert [n for n, _ in mlp(spec).layers] == ["dense_0", "bn_0", "relu_0", "dropout_0", "dense_1"]


def test_spec_accepts_list_hidden_and_is_hashable():
    spec = MLPSpec(in_features=4, hidden=[3, 2])
    assert spec.hidden == (3, 2) and spec.num_layers == 3
    assert hash(spec) == hash(MLPSpec(in_features=4, hidden=(3, 2)))
    with pytest.raises(ValueError, match="norm='x'"):
        spec.replace(norm="x")
