"""recompute_batch_stats against the average of per-batch statistics computed by a NumPy forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mlp_reference import mlp_forward

import bnjax
from bnjax import MLPSpec, mlp
from bnjax.train import recompute_batch_stats

SPEC = MLPSpec(in_features=5, hidden=(7, 6), num_classes=3, norm="batch", weight_scale=0.5)


def _model(key, spec=SPEC):
    params, stats = mlp(spec).init(key)
    rng = np.random.default_rng(0)
    for name in ("bn_0", "bn_1"):  # non-trivial affine parameters so layer 1's input depends on them
        params[name] = {"scale": jnp.asarray(1 + 0.5 * rng.standard_normal(params[name]["scale"].shape), jnp.float32),
                        "bias": jnp.asarray(rng.standard_normal(params[name]["bias"].shape), jnp.float32)}
    return params, stats


def _numpy_average(params, stats, x, bs, nb, unbiased):
    sums = {i: [0.0, 0.0] for i in range(2)}
    for b in range(nb):
        _, _, moments = mlp_forward(params, stats, x[b * bs:(b + 1) * bs], True, hidden=SPEC.hidden, norm="batch")
        for i, (mu, var) in moments.items():
            sums[i][0] = sums[i][0] + mu
            sums[i][1] = sums[i][1] + (var * bs / (bs - 1) if unbiased else var)
    return {f"bn_{i}": {"mean": m / nb, "var": v / nb} for i, (m, v) in sums.items()}


@pytest.mark.usefixtures("highest_precision")  # float32 against a float64 reference: no TF32
@pytest.mark.parametrize("unbiased", [False, True])
def test_equals_numpy_average_of_batch_statistics(key, unbiased):
    params, stats = _model(key)
    x = (np.random.default_rng(1).standard_normal((45, 5)) * 2 + 0.5).astype(np.float32)
    # Running statistics that differ from the answer: the result must not depend on them.
    stats = jax.tree.map(lambda a: a + 3.0, stats)
    got = recompute_batch_stats(SPEC, params, stats, x, batch_size=8, num_batches=5, unbiased=unbiased)
    want = _numpy_average(params, stats, x, bs=8, nb=5, unbiased=unbiased)
    assert jax.tree.structure(got) == jax.tree.structure(stats)
    for name in want:
        for k in ("mean", "var"):
            np.testing.assert_allclose(got[name][k], want[name][k], rtol=2e-5, atol=1e-6, err_msg=f"{name}.{k}")


@pytest.mark.usefixtures("highest_precision")  # float32 against a float64 reference: no TF32
def test_default_uses_every_full_batch_and_num_samples(key):
    params, stats = _model(key)
    x = np.random.default_rng(2).standard_normal((45, 5)).astype(np.float32)
    all_batches = recompute_batch_stats(SPEC, params, stats, x, batch_size=8)  # 5 full batches, 5 rows left
    by_samples = recompute_batch_stats(SPEC, params, stats, x, batch_size=8, num_samples=40)
    want = _numpy_average(params, stats, x, bs=8, nb=5, unbiased=False)
    for name in want:
        np.testing.assert_allclose(all_batches[name]["var"], want[name]["var"], rtol=2e-5, atol=1e-6)
        np.testing.assert_array_equal(all_batches[name]["var"], by_samples[name]["var"])


def test_cumulative_model_keeps_count(key):
    spec = SPEC.replace(bn_average="cumulative")
    params, stats = _model(key, spec)
    x = np.random.default_rng(3).standard_normal((24, 5)).astype(np.float32)
    got = recompute_batch_stats(spec, params, stats, x, batch_size=8)
    assert int(got["bn_0"]["count"]) == 3


def test_dropout_option_changes_statistics(key):
    spec = SPEC.replace(dropout=0.5)
    params, stats = _model(key, spec)
    x = np.random.default_rng(4).standard_normal((24, 5)).astype(np.float32)
    plain = recompute_batch_stats(spec, params, stats, x, batch_size=8)
    with_drop = recompute_batch_stats(spec, params, stats, x, batch_size=8, dropout=True, key=jax.random.key(0))
    np.testing.assert_array_equal(plain["bn_0"]["mean"], with_drop["bn_0"]["mean"])  # dropout acts after bn_0
    assert not np.allclose(plain["bn_1"]["var"], with_drop["bn_1"]["var"])


def test_errors(key):
    params, stats = _model(key)
    x = np.zeros((10, 5), np.float32)
    with pytest.raises(ValueError, match=r"3 batches of 8 need 24 rows, x has 10"):
        recompute_batch_stats(SPEC, params, stats, x, batch_size=8, num_batches=3)
    with pytest.raises(ValueError, match="not both"):
        recompute_batch_stats(SPEC, params, stats, x, num_batches=1, num_samples=8)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        recompute_batch_stats(SPEC, params, stats, x, batch_size=5, dropout=0.3)
    with pytest.raises(ValueError, match=r"expected \(N, 5\)"):
        recompute_batch_stats(SPEC, params, stats, x[:, :4])


@pytest.mark.usefixtures("highest_precision")  # float32 against a float64 reference: no TF32
def test_layer_model_with_ghost_batch_norm(key):
    """Any Layer: statistics of a ghost BN inside serial are the average over batches of the mean ghost
    statistics (NumPy), and the input keeps its example shape."""
    def flatten(params, batch_stats, x, train, *, key=None):
        return x.reshape(x.shape[0], -1), batch_stats

    model = bnjax.serial(bnjax.Layer(lambda k: ({}, {}), flatten, "flatten"), bnjax.Dense(6, 4, use_bias=False),
                         bnjax.GhostBatchNorm(4, virtual_batch_size=2), bnjax.Activation(jnp.tanh), bnjax.Dense(4, 3))
    params, stats = model.init(key)
    x = np.random.default_rng(6).standard_normal((12, 2, 3)).astype(np.float32)
    got = recompute_batch_stats(model, params, stats, x, batch_size=4)
    h = x.reshape(12, 6).astype(np.float64) @ np.asarray(params["dense_0"]["weight"], np.float64).T
    ghosts = h.reshape(3, 2, 2, 4)  # 3 batches of 4 rows = 2 ghost batches of 2 rows each
    np.testing.assert_allclose(got["bn_0"]["mean"], ghosts.mean(axis=2).mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bn_0"]["var"], ghosts.var(axis=2).mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)


def test_layer_without_batch_norm_options_is_refused(key):
    def init(k):
        return {}, {"mean": jnp.zeros(3), "var": jnp.ones(3)}

    def apply(params, batch_stats, x, train, *, key=None):
        return x, batch_stats

    with pytest.raises(ValueError, match=r"the model's layers take no 'bn_average' option"):
        recompute_batch_stats(bnjax.Layer(init, apply, "mine"), {}, init(key)[1], np.zeros((8, 3), np.float32),
                              batch_size=4)
