"""Folding eval-mode batch norm into the preceding dense/conv layer and into a whole MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax.nn._batch_norm import batch_norm, batch_norm_init
from bnjax.nn._dense import dense
from bnjax.nn._fold import fold_batch_norm, fold_mlp
from bnjax.nn._mlp import MLPSpec, mlp_apply, mlp_init

# Folded and unfolded layers multiply different float32 matrices and are compared to ~1e-5 (and with float64
# closed forms): true float32 matmuls, not the TF32 of JAX's default precision on NVIDIA GPUs (~1e-3).
pytestmark = pytest.mark.usefixtures("highest_precision")


def _random_bn(rng, c, dtype=np.float32):
    params = {"scale": rng.uniform(0.5, 2.0, c).astype(dtype), "bias": rng.randn(c).astype(dtype)}
    stats = {"mean": (3 * rng.randn(c)).astype(dtype), "var": rng.uniform(0.1, 5.0, c).astype(dtype)}
    return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, stats)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fold_dense_matches_eval_batch_norm(with_bias):
    rng = np.random.RandomState(0)
    d_in, d_out = 7, 5
    dense_params = {"weight": jnp.asarray(rng.randn(d_out, d_in).astype(np.float32))}
    if with_bias:
        dense_params["bias"] = jnp.asarray(rng.randn(d_out).astype(np.float32))
    bn_params, stats = _random_bn(rng, d_out)
    x = jnp.asarray(rng.randn(32, d_in).astype(np.float32))

    z, _ = dense(dense_params, {}, x, False)
    y_ref, _ = batch_norm(bn_params, stats, z, False, eps=1e-3)
    folded = fold_batch_norm(dense_params, bn_params, stats, eps=1e-3)
    y, _ = dense(folded, {}, x, False)

    assert set(folded) == {"weight", "bias"} and folded["weight"].dtype == jnp.float32
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    # The closed form, in float64.
    a = np.float64(bn_params["scale"]) / np.sqrt(np.float64(stats["var"]) + 1e-3)
    c = np.float64(dense_params["bias"]) if with_bias else 0.0
    np.testing.assert_allclose(folded["weight"], a[:, None] * np.float64(dense_params["weight"]), rtol=1e-6)
    np.testing.assert_allclose(
        folded["bias"], a * c + np.float64(bn_params["bias"]) - a * np.float64(stats["mean"]), rtol=1e-6, atol=1e-6
    )


def test_fold_conv_weight_output_channels_first():
    # OIHW conv weight, NCHW input, batch norm over channel axis 1.
    rng = np.random.RandomState(1)
    w = jnp.asarray(rng.randn(4, 3, 3, 3).astype(np.float32))
    bn_params, stats = _random_bn(rng, 4)
    x = jnp.asarray(rng.randn(2, 3, 6, 6).astype(np.float32))

    def conv(weight, bias):
        y = jax.lax.conv_general_dilated(x, weight, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + bias[None, :, None, None]

    y_ref, _ = batch_norm(bn_params, stats, conv(w, jnp.zeros(4)), False, axis=1)
    folded = fold_batch_norm({"weight": w}, bn_params, stats)
    np.testing.assert_allclose(conv(folded["weight"], folded["bias"]), y_ref, rtol=1e-5, atol=1e-5)


def test_fold_under_jit_and_vmap_over_ensemble():
    rng = np.random.RandomState(2)
    members, d_in, d_out = 3, 4, 6
    w = jnp.asarray(rng.randn(members, d_out, d_in).astype(np.float32))
    scale = jnp.asarray(rng.uniform(0.5, 2, (members, d_out)).astype(np.float32))
    shift = jnp.asarray(rng.randn(members, d_out).astype(np.float32))
    mean = jnp.asarray(rng.randn(members, d_out).astype(np.float32))
    var = jnp.asarray(rng.uniform(0.5, 2, (members, d_out)).astype(np.float32))
    x = jnp.asarray(rng.randn(8, d_in).astype(np.float32))

    def fold_one(w, s, b, m, v):
        return fold_batch_norm({"weight": w}, {"scale": s, "bias": b}, {"mean": m, "var": v})

    folded = jax.jit(jax.vmap(fold_one))(w, scale, shift, mean, var)
    for k in range(members):
        y_ref, _ = batch_norm(
            {"scale": scale[k], "bias": shift[k]}, {"mean": mean[k], "var": var[k]}, x @ w[k].T, False
        )
        y = x @ folded["weight"][k].T + folded["bias"][k]
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_fold_ignores_cumulative_count():
    rng = np.random.RandomState(3)
    params, stats = batch_norm_init(3, average="cumulative")
    stats = {**stats, "mean": jnp.asarray(rng.randn(3), jnp.float32), "count": jnp.asarray(5, jnp.int32)}
    w = jnp.asarray(rng.randn(3, 2), jnp.float32)
    x = jnp.asarray(rng.randn(4, 2), jnp.float32)
    y_ref, _ = batch_norm(params, stats, x @ w.T, False, average="cumulative")
    y, _ = dense(fold_batch_norm({"weight": w}, params, stats), {}, x, False)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)


def test_fold_errors():
    params, stats = batch_norm_init(3)
    with pytest.raises(ValueError, match=r"bn_params\['scale'\] has shape \(3,\), expected \(4,\)"):
        fold_batch_norm({"weight": jnp.ones((4, 2))}, params, stats)
    with pytest.raises(ValueError, match="dense_params must be a dict with a 'weight'"):
        fold_batch_norm({"kernel": jnp.ones((2, 3))}, params, stats)
    with pytest.raises(ValueError, match=r"unexpected keys \['scale'\]"):
        fold_batch_norm({"weight": jnp.ones((3, 2)), "scale": jnp.ones(3)}, params, stats)


def _trained_like_stats(spec, params, stats, rng):
    """Random (non-trivial) BN parameters and running statistics, as after training."""
    params, stats = dict(params), dict(stats)
    for i, h in enumerate(spec.hidden):
        params[f"bn_{i}"], stats[f"bn_{i}"] = _random_bn(rng, h)
    return params, stats


def test_fold_mlp_matches_eval_output_and_removes_norm(key):
    spec = MLPSpec(in_features=12, hidden=(16, 8), num_classes=5, norm="batch", dropout=0.3, init="he", bn_eps=1e-4)
    params, stats = jax.jit(lambda k: mlp_init(k, spec))(key)
    params, stats = _trained_like_stats(spec, params, stats, np.random.RandomState(4))
    x = jnp.asarray(np.random.RandomState(5).randn(64, 12).astype(np.float32)) * 2.0 + 1.0

    folded, folded_spec = fold_mlp(spec, params, stats)
    y_ref, (y, new_stats) = jax.jit(
        lambda: (mlp_apply(params, stats, x, False, spec=spec)[0], mlp_apply(folded, {}, x, False, spec=folded_spec))
    )()

    assert folded_spec.norm == "none" and folded_spec.hidden == spec.hidden and folded_spec.bn_eps == spec.bn_eps
    assert set(folded) == {"dense_0", "dense_1", "dense_2"} and new_stats == {}
    assert all(set(p) == {"weight", "bias"} for p in folded.values())
    err = float(jnp.max(jnp.abs(y - y_ref)) / jnp.max(jnp.abs(y_ref)))
    assert err < 1e-5, err


def test_fold_mlp_errors(key):
    spec = MLPSpec(in_features=3, hidden=(4,), num_classes=2, norm="layer")
    params, stats = jax.eval_shape(lambda k: mlp_init(k, spec), key)  # errors need only the structure
    with pytest.raises(ValueError, match="spec.norm='layer' cannot be folded"):
        fold_mlp(spec, params, stats)
    with pytest.raises(TypeError, match="spec must be an MLPSpec"):
        fold_mlp({"norm": "batch"}, params, stats)
    spec_bn = spec.replace(norm="batch")
    params, stats = jax.eval_shape(lambda k: mlp_init(k, spec_bn), key)
    with pytest.raises(ValueError, match="has no 'bn_0'"):
        fold_mlp(spec_bn, params, {})
