"""Ensembles under vmap: equal to training each member alone; divergence isolated; member checks."""

import jax
import numpy as np
import pytest
from train_helpers import TOY_CFG, TOY_SPEC, toy_data

from bnjax.train import Member, TrainConfig, resolve_members, train_ensemble

MEMBERS = {
    "seed": [0, 1, 2],
    "learning_rate": [1e-2, 3e-3, 2e-2],
    "weight_scale": [0.3, 0.1, 0.5],
    "bn_momentum": [0.9, 0.5, 0.99],
    "dropout": [0.05, 0.2, 0.1],
}


def _member(members, k):
    return {name: [values[k]] for name, values in members.items()}


def _assert_member_equal(ens, k, single, tol):
    for name, hist in ens.history.items():
        np.testing.assert_allclose(hist[k], single.history[name][0], rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_allclose(ens.loss_history[k], single.loss_history[0], rtol=tol, atol=tol)
    for a, b in zip(jax.tree.leaves(ens.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(a[k], b[0], rtol=tol, atol=tol)
    assert ens.members[k] == single.members[0]


@pytest.mark.parametrize("shared", [False, True])
def test_vmap_equals_loop_of_single_members(shared):
    data = toy_data()
    members = MEMBERS if not shared else {k: v[:2] for k, v in MEMBERS.items() if k != "dropout"}
    ens = train_ensemble(TOY_SPEC, TOY_CFG, data, members, shared_batches=shared)
    assert ens.loss_history.shape == (len(members["seed"]), 8)
    for k in range(len(members["seed"])):
        single = train_ensemble(TOY_SPEC, TOY_CFG, data, _member(members, k), shared_batches=shared)
        _assert_member_equal(ens, k, single, tol=1e-5)
    # Members really differ (own seed, order, hyperparameters).
    assert not np.allclose(ens.loss_history[0], ens.loss_history[1])


@pytest.mark.parametrize("shared", [False, True])
def test_diverging_member_is_frozen_and_isolated(shared):
    data = toy_data()
    spec = TOY_SPEC.replace(norm="none")
    cfg = TrainConfig(optimizer="sgd", learning_rate=0.05, batch_size=16, epochs=2, eval_train_samples=40,
                      eval_batch_size=16)
    members = {"seed": [0, 1, 2], "learning_rate": [0.05, 1e30, 0.1]}
    ens = train_ensemble(spec, cfg, data, members, shared_batches=shared)
    assert ens.diverged_step[0] == -1 and ens.diverged_step[2] == -1
    d = int(ens.diverged_step[1])
    assert 0 <= d < 8
    assert np.all(np.isfinite(ens.loss_history[1, :d]))
    assert not np.isfinite(ens.loss_history[1, d]) and np.all(np.isnan(ens.loss_history[1, d + 1:]))
    # Frozen at the last finite state: its parameters are finite and its metrics stay put.
    assert all(np.all(np.isfinite(leaf[1])) for leaf in jax.tree.leaves(ens.params))
    assert ens.member(1)["diverged_step"] == d
    # The other members equal a run without the diverging one.
    healthy = {"seed": [0, 2], "learning_rate": [0.05, 0.1]}
    ref = train_ensemble(spec, cfg, data, healthy, shared_batches=shared)
    for k_ens, k_ref in ((0, 0), (2, 1)):
        for name in ens.history:
            np.testing.assert_allclose(ens.history[name][k_ens], ref.history[name][k_ref], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ens.loss_history[k_ens], ref.loss_history[k_ref], rtol=1e-6, atol=1e-6)
    assert ens.to_json()["loss_history"][1][-1] is None  # NaN -> null in JSON


@pytest.mark.parametrize("members, match", [
    ({"seeds": [0]}, r"members has unknown keys \['seeds'\]; valid keys are"),
    ({"seed": [0, 1], "dropout": [0.1]}, r"one common length, got lengths \{'seed': 2, 'dropout': 1\}"),
    ({"dropout": [1.0]}, r"members\['dropout'\]\[0\]=1.0 is the drop probability and must be in \[0, 1\)"),
    ({"learning_rate": [0.1, -1.0]}, r"members\['learning_rate'\]\[1\]=-1.0 must be > 0"),
    ({"seed": [1.5]}, r"members\['seed'\]\[0\]=1.5 must be an int >= 0"),
    ({"bn_momentum": [float("nan")]}, r"must be a finite number"),
    ([{"seed": 0}], r"members must be a dict of equal-length lists .* or a non-empty list of bnjax.train.Member"),
])
def test_member_validation(members, match):
    with pytest.raises((ValueError, TypeError), match=match):
        train_ensemble(TOY_SPEC, TOY_CFG, toy_data(), members)


def test_missing_member_keys_take_defaults():
    resolved = resolve_members(TOY_SPEC, TOY_CFG.replace(seed=7), {"learning_rate": [0.1, 0.2]})
    assert resolved == [
        Member(seed=7, weight_scale=0.3, dropout=0.0, learning_rate=lr, bn_momentum=0.9) for lr in (0.1, 0.2)
    ]
    # A list of Member is the same request; unset options take the spec's values.
    assert resolve_members(TOY_SPEC, TOY_CFG, [Member(seed=7, learning_rate=lr) for lr in (0.1, 0.2)]) == resolved


@pytest.mark.parametrize("field, value, match", [
    ("seed", -1, r"Member: seed=-1 must be an int >= 0"),
    ("dropout", 1.0, r"Member: dropout=1.0 is the drop probability and must be in \[0, 1\)"),
    ("bn_momentum", 2.0, r"Member: bn_momentum=2.0 must be in \[0, 1\]"),
    ("weight_scale", 0.0, r"Member: weight_scale=0.0 must be > 0"),
    ("learning_rate", float("inf"), r"Member: learning_rate=inf must be a finite number"),
])
def test_member_is_validated_once_at_construction(field, value, match):
    with pytest.raises(ValueError, match=match):
        Member(**{field: value})
    assert Member(seed=3, dropout=0.5).to_dict() == {"seed": 3, "learning_rate": 1e-3, "dropout": 0.5}
