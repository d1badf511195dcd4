"""The training step, optimizers, schedules, TrainConfig checks, single-model train_ensemble runs, and any
Layer (not only an MLPSpec) through the engine."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mlp_reference import mlp_forward, softmax_cross_entropy
from train_helpers import TOY_CFG, TOY_SPEC, toy_data

import bnjax
from bnjax import mlp
from bnjax.train import (
    TrainConfig,
    init_ensemble,
    init_train_state,
    l2_penalty,
    lr_factor,
    make_optimizer,
    make_shared_batch_ensemble_step,
    make_train_step,
    resolve_members,
    train_ensemble,
)


def _batch(n=16, seed=0):
    d = toy_data()
    return jnp.asarray(d.x_train[:n]), jnp.asarray(d.y_train[:n])


@pytest.mark.usefixtures("highest_precision")  # float32 against a float64 reference: no TF32
def test_step_lowers_loss_and_updates_stats():
    step = jax.jit(make_train_step(TOY_SPEC, TOY_CFG, steps_per_epoch=4))
    state = init_train_state(TOY_SPEC, TOY_CFG, seed=0)
    batch = _batch()
    s1, m1 = step(state, batch)
    s2, m2 = step(s1, batch)
    assert float(m2["loss"]) < float(m1["loss"])
    assert int(s2.step) == 2 and int(s2.diverged_step) == -1
    # The loss of step 1 is the train-mode loss of the initial parameters (independent NumPy forward).
    logits, new_stats, _ = mlp_forward(state.params, state.batch_stats, np.asarray(batch[0]), True,
                                       hidden=TOY_SPEC.hidden, norm="batch")
    assert float(m1["loss"]) == pytest.approx(softmax_cross_entropy(logits, np.asarray(batch[1])), rel=1e-5)
    np.testing.assert_allclose(s1.batch_stats["bn_0"]["mean"], new_stats["bn_0"]["mean"], rtol=1e-5, atol=1e-6)


def test_jit_equals_no_jit():
    spec, cfg = TOY_SPEC.replace(hidden=(4,), norm="none"), TOY_CFG.replace(optimizer="momentum", l2=1e-2)
    step = make_train_step(spec, cfg, steps_per_epoch=4)
    state = init_train_state(spec, cfg, seed=3)
    batch = _batch(8)
    eager_state, eager_m = step(state, batch)
    jit_state, jit_m = jax.jit(step)(state, batch)
    np.testing.assert_allclose(eager_m["loss"], jit_m["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(eager_state), jax.tree.leaves(jit_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, reference", [
    ("sgd", lambda lr: optax.sgd(lr)),
    ("momentum", lambda lr: optax.sgd(lr, momentum=0.8)),
    ("adam", lambda lr: optax.adam(lr)),
    ("adamw", None),
])
def test_update_equals_optax(key, name, reference):
    """params - lr * direction (per-member lr) equals optax's own optimizer with that lr, over 3 updates."""
    cfg = TrainConfig(optimizer=name, momentum=0.8, weight_decay=0.1 if name == "adamw" else 0.0)
    params = {"dense_0": {"weight": jax.random.normal(key, (3, 4)), "bias": jnp.ones(3)},
              "bn_0": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}}
    if reference is None:  # decoupled decay on dense weights only
        mask = {"dense_0": {"weight": True, "bias": False}, "bn_0": {"scale": False, "bias": False}}
        ref = optax.adamw(0.05, weight_decay=0.1, mask=mask)
    else:
        ref = reference(0.05)
    opt = make_optimizer(cfg)
    p_ours, s_ours = params, opt.init(params)
    p_ref, s_ref = params, ref.init(params)
    for i in range(3):
        g = jax.tree.map(lambda a, i=i: jnp.sin(a * (i + 1)), p_ours)
        d, s_ours = opt.update(g, s_ours, p_ours)
        p_ours = jax.tree.map(lambda p, u: p - 0.05 * u, p_ours, d)
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_schedules():
    spe = 5
    decay = TrainConfig(schedule="epoch_decay", lr_decay=0.5)
    assert [float(lr_factor(decay, t, spe)) for t in (0, 4, 5, 12)] == [1.0, 1.0, 0.5, 0.25]
    cos = TrainConfig(schedule="cosine", epochs=2)
    for t in (0, 3, 10):
        assert float(lr_factor(cos, t, spe)) == pytest.approx(0.5 * (1 + np.cos(np.pi * t / 10)), abs=1e-6)
    assert float(lr_factor(TrainConfig(), 99, spe)) == 1.0


def test_l2_penalty_counts_dense_weights_only():
    params = {"dense_0": {"weight": jnp.full((2, 3), 2.0), "bias": jnp.ones(2)},
              "bn_0": {"scale": jnp.full(2, 5.0), "bias": jnp.ones(2)},
              "dense_1": {"weight": jnp.ones((1, 2))}}
    assert float(l2_penalty(params)) == pytest.approx(0.5 * (6 * 4.0 + 2.0))


@pytest.mark.parametrize("kwargs, match", [
    ({"optimizer": "rmsprop"}, r"optimizer='rmsprop' is not a valid option"),
    ({"schedule": "step"}, r"schedule='step' is not a valid option"),
    ({"lr_decay": 0.9}, r"lr_decay=0.9 only acts with schedule='epoch_decay'"),
    ({"learning_rate": 0.0}, r"learning_rate=0.0 must be a positive finite number"),
    ({"weight_decay": 0.1}, r"weight_decay=0.1 is the decoupled decay of optimizer='adamw'"),
    ({"batch_size": 0}, r"batch_size=0 must be a positive int"),
    ({"precise_bn_batches": -1}, r"precise_bn_batches=-1 must be an int >= 0"),
    ({"momentum": 1.0}, r"momentum=1.0 must be in \[0, 1\)"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match="TrainConfig: " + match):
        TrainConfig(**kwargs)


def test_single_model_run_history_and_callback():
    data = toy_data()
    seen = []
    cfg = TOY_CFG.replace(precise_bn_batches=2)
    r = train_ensemble(TOY_SPEC, cfg, data, callback=lambda e, m: seen.append((e, sorted(m), m["val_acc"].shape)))
    names = {f"{s}_{m}{p}" for s in ("train", "val", "test") for m in ("acc", "loss") for p in ("", "_precise")}
    assert set(r.history) == names
    assert all(v.shape == (1, 3) for v in r.history.values())
    assert r.loss_history.shape == (1, 2 * 4) and r.steps_per_epoch == 4
    assert [e for e, _, _ in seen] == [0, 1, 2] and seen[0][2] == (1,)  # epoch 0 reported before training
    assert "loss" not in seen[0][1] and "loss" in seen[1][1] and "val_acc_precise" in seen[1][1]
    assert r.diverged_step.tolist() == [-1]
    assert r.members == [{"seed": 0, "weight_scale": 0.3, "dropout": 0.0, "learning_rate": 1e-2, "bn_momentum": 0.9}]
    assert r.history["train_loss"][0, -1] < r.history["train_loss"][0, 0]
    assert jax.tree.leaves(r.params)[0].shape[0] == 1
    # Epoch-0 accuracy is the eval-mode accuracy of the initial model on the fixed train subset.
    js = r.to_json()
    assert js["diverged_step"] == [-1] and len(js["history"]["val_acc"][0]) == 3


def test_same_seed_is_bit_identical():
    data = toy_data()
    a = train_ensemble(TOY_SPEC, TOY_CFG, data)
    b = train_ensemble(TOY_SPEC, TOY_CFG, data)
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k])
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    c = train_ensemble(TOY_SPEC, TOY_CFG.replace(seed=1), data)
    assert not np.array_equal(a.loss_history, c.loss_history)


def test_data_errors():
    data = toy_data()
    with pytest.raises(ValueError, match=r"the data has 6 features per example .* spec.in_features=5; set MLPSpec\(in_features=6\)"):
        train_ensemble(TOY_SPEC.replace(in_features=5), TOY_CFG, data)
    with pytest.raises(ValueError, match=r"data has 3 classes but spec.num_classes=4"):
        train_ensemble(TOY_SPEC.replace(num_classes=4), TOY_CFG, data)
    with pytest.raises(ValueError, match=r"TrainConfig: batch_size=100 is larger than the training set \(64 examples\)"):
        train_ensemble(TOY_SPEC, TOY_CFG.replace(batch_size=100), data)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        train_ensemble(TOY_SPEC, TOY_CFG, data, resume=True)


def test_shared_batch_step_equals_vmapped_step():
    """The one-matmul first layer gives the vmapped per-member step's results (also with dropout, with no
    hidden layer, where dense_0 is the output layer with a bias, and for a serial Layer that starts with Dense)."""
    batch = _batch()
    layer = bnjax.serial(bnjax.Dense(6, 8, use_bias=False), bnjax.BatchNorm(8), bnjax.Activation(jnp.tanh),
                         bnjax.Dropout(0.2), bnjax.Dense(8, 3))
    for spec, drop in ((TOY_SPEC.replace(dropout=0.3, hidden=(8,)), True),
                       (TOY_SPEC.replace(hidden=(), norm="none"), False), (layer, True)):
        members = resolve_members(spec, TOY_CFG, {"seed": [0, 1, 2], "learning_rate": [1e-2, 1e-3, 3e-2]})
        states = init_ensemble(spec, TOY_CFG, members)
        fast = jax.jit(make_shared_batch_ensemble_step(spec, TOY_CFG, 4, use_dropout=drop))
        ref = jax.jit(jax.vmap(make_train_step(spec, TOY_CFG, 4, use_dropout=drop), in_axes=(0, None)))
        a, b = states, states
        for _ in range(3):
            a, ma = fast(a, batch)
            b, mb = ref(b, batch)
            np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5, atol=1e-6)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_nonfinite_parameter_hidden_by_relu_is_detected():
    """A -inf weight whose unit ReLU maps to 0 leaves the loss finite; the pre-activation sentinel catches it."""
    spec = TOY_SPEC.replace(norm="none", hidden=(4,))
    step = jax.jit(make_train_step(spec, TOY_CFG, steps_per_epoch=4))
    state = init_train_state(spec, TOY_CFG, seed=0)
    x, y = _batch()
    x = jnp.abs(x) + 0.1  # positive inputs: unit 0 gets -inf pre-activation for every example
    w = state.params["dense_0"]["weight"].at[0, :].set(-jnp.inf)
    bad = state._replace(params={**state.params, "dense_0": {**state.params["dense_0"], "weight": w}})
    logits, _ = jax.jit(lambda p: mlp(spec).apply(p, {}, x, True))(bad.params)
    assert np.all(np.isfinite(logits))  # the ReLU hides it from the loss ...
    new, m = step(bad, (x, y))
    assert int(new.diverged_step) == 0 and np.isnan(float(m["loss"]))  # ... not from the sentinel
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(bad.params)):
        np.testing.assert_array_equal(a, b)  # frozen
    healthy, m2 = step(state, (x, y))
    assert int(healthy.diverged_step) == -1 and np.isfinite(float(m2["loss"]))


def test_empty_validation_split_gives_nan_metrics():
    full = toy_data()
    data = dataclasses.replace(full, x_val=full.x_val[:0], y_val=full.y_val[:0])
    r = train_ensemble(TOY_SPEC, TOY_CFG, data)
    assert np.all(np.isnan(r.history["val_acc"])) and np.all(np.isfinite(r.history["test_acc"]))
    assert r.to_json()["history"]["val_loss"] == [[None, None, None]]


# ------------------------------------------------------------------------------------------ any normalizer

NORM_SPECS = {
    "none": {}, "batch": {}, "layer": {}, "rms": {},
    "group": {"groups": 2},
    "ghost": {"virtual_batch_size": 4},
    "renorm": {"renorm_warmup_steps": 2, "renorm_hold_steps": 1},
}


# Every normalizer also trains through `bnjax run` in tests/test_runner.py (default suite); here the Python API
# keeps two in the default suite and the rest under `slow`.
@pytest.mark.parametrize("norm", [n if n in ("batch", "group") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(NORM_SPECS)])
def test_every_normalizer_trains(norm):
    spec = TOY_SPEC.replace(norm=norm, norm_position="after" if norm == "group" else "before",
                            **NORM_SPECS[norm])
    r = train_ensemble(spec, TOY_CFG.replace(epochs=1, precise_bn_batches=2), toy_data(), {"seed": [0, 1]})
    assert np.all(np.isfinite(r.loss_history)) and r.diverged_step.tolist() == [-1, -1]
    assert np.all(r.history["train_loss"][:, 1] < r.history["train_loss"][:, 0])
    assert np.all(np.isfinite(r.history["val_acc_precise"]))


# ------------------------------------------------------------------------------------------- Layer models

def _flat_model(example_shape):
    """A serial Layer that flattens its input itself and insists on receiving the example shape."""

    def flatten(params, batch_stats, x, train, *, key=None):
        assert x.shape[1:] == example_shape, x.shape  # the engine must not flatten for a Layer
        return x.reshape(x.shape[0], -1), batch_stats

    d = int(np.prod(example_shape))
    return bnjax.serial(bnjax.Layer(lambda key: ({}, {}), flatten, "flatten"), bnjax.Dense(d, 8),
                        bnjax.BatchNorm(8), bnjax.Activation(jax.nn.relu), bnjax.Dropout(0.1), bnjax.Dense(8, 3))


def test_layer_model_keeps_example_shape_and_sweeps_options():
    flat = toy_data()
    data = dataclasses.replace(flat, x_train=flat.x_train.reshape(-1, 2, 3), x_val=flat.x_val.reshape(-1, 2, 3),
                               x_test=flat.x_test.reshape(-1, 2, 3))
    model = _flat_model((2, 3))
    members = {"seed": [0, 1], "dropout": [0.0, 0.3], "bn_momentum": [0.9, 0.5], "weight_scale": [0.1, 0.2]}
    r = train_ensemble(model, TOY_CFG.replace(precise_bn_batches=2), data, members)
    assert r.members[1] == {"seed": 1, "learning_rate": 1e-2, "weight_scale": 0.2, "dropout": 0.3,
                            "bn_momentum": 0.5}
    assert r.spec is None and r.model is model
    assert r.history["train_loss"][0, -1] < r.history["train_loss"][0, 0]
    # Without options the members keep the layers' own values (none of the three is in the traced state).
    plain = train_ensemble(model, TOY_CFG, data)
    assert plain.members == [{"seed": 0, "learning_rate": 1e-2}]


def test_layer_model_equals_the_spec_it_was_built_from():
    spec = TOY_SPEC.replace(dropout=0.2)
    a = train_ensemble(spec, TOY_CFG, toy_data())
    b = train_ensemble(mlp(spec), TOY_CFG, toy_data())
    np.testing.assert_allclose(a.loss_history, b.loss_history, rtol=1e-6, atol=1e-6)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_layer_model_errors():
    data = toy_data()
    no_dropout = bnjax.serial(bnjax.Dense(6, 3))
    with pytest.raises(ValueError, match=r"members set 'dropout', but the model's apply takes no 'dropout' option"):
        train_ensemble(no_dropout, TOY_CFG, data, {"dropout": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"output of shape \(16, 4\); it must give \(16, 3\) logits"):
        train_ensemble(bnjax.serial(bnjax.Dense(6, 4)), TOY_CFG, data)
    with pytest.raises(TypeError, match=r"the model must be a bnjax.Layer .* or an MLPSpec, got dict"):
        train_ensemble({"init": None}, TOY_CFG, data)

    def own_stats(params, batch_stats, x, train, *, key=None):  # running statistics, but no bn_average option
        return x, batch_stats

    mine = bnjax.serial(bnjax.Layer(lambda k: ({}, {"mean": jnp.zeros(6), "var": jnp.ones(6)}), own_stats, "mine"),
                        bnjax.Dense(6, 3))
    with pytest.raises(ValueError, match=r"train_ensemble: the model's layers take no 'bn_average' option"):
        train_ensemble(mine, TOY_CFG.replace(precise_bn_batches=1), data)


def test_sentinel_of_a_plain_layer_checks_its_output():
    """A model that is not a composition: a non-finite parameter that reaches the output freezes the member."""
    def init(key):
        return {"weight": jax.random.normal(key, (3, 6)) * 0.1}, {}

    def apply(params, batch_stats, x, train, *, key=None):
        return x @ params["weight"].T, batch_stats

    model = bnjax.Layer(init, apply, "linear")
    step = jax.jit(make_train_step(model, TOY_CFG, steps_per_epoch=4))
    state = init_train_state(model, TOY_CFG, seed=0)
    bad = state._replace(params={"weight": state.params["weight"].at[0, 0].set(jnp.nan)})
    new, m = step(bad, _batch())
    assert int(new.diverged_step) == 0 and np.isnan(float(m["loss"]))
    healthy, m2 = step(state, _batch())
    assert int(healthy.diverged_step) == -1 and np.isfinite(float(m2["loss"]))
