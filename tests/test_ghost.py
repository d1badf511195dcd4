"""Ghost batch norm: NumPy reference per ghost batch, running-statistics rule, gradients, errors."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax.nn._batch_norm import batch_norm, batch_norm_init
from bnjax.nn._ghost import ghost_batch_norm
from bnjax.nn._gradcheck import _three_way


def _np_ghost(x, scale, bias, v, eps):
    """Reference: batch norm of each consecutive chunk of v rows, features on the last axis."""
    x = np.asarray(x, np.float64)
    ys, means, vars_ = [], [], []
    red = tuple(range(x.ndim - 1))
    for k in range(x.shape[0] // v):
        chunk = x[k * v:(k + 1) * v]
        mean, var = chunk.mean(axis=red), chunk.var(axis=red)
        ys.append((chunk - mean) / np.sqrt(var + eps) * scale + bias)
        means.append(mean)
        vars_.append(var)
    return np.concatenate(ys), np.mean(means, 0), np.mean(vars_, 0), chunk[0].size * v // x.shape[-1]


@pytest.mark.parametrize("shape,v", [((12, 5), 4), ((8, 3, 3, 2), 2), ((6, 4), 6)])
def test_ghost_batch_norm_matches_numpy(shape, v):
    rng = np.random.RandomState(0)
    c = shape[-1]
    x = (3 * rng.randn(*shape) + 2).astype(np.float32)
    params = {"scale": jnp.asarray(rng.randn(c), jnp.float32), "bias": jnp.asarray(rng.randn(c), jnp.float32)}
    _, stats = batch_norm_init(c)
    stats = {"mean": jnp.asarray(rng.randn(c), jnp.float32), "var": jnp.asarray(rng.uniform(1, 2, c), jnp.float32)}

    y, new = ghost_batch_norm(params, stats, x, True, virtual_batch_size=v, momentum=0.8)
    y_ref, mean_b, var_b, _ = _np_ghost(x, np.float64(params["scale"]), np.float64(params["bias"]), v, 1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["mean"], 0.8 * np.float64(stats["mean"]) + 0.2 * mean_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.8 * np.float64(stats["var"]) + 0.2 * var_b, rtol=1e-5, atol=1e-6)


def test_ghost_unbiased_and_cumulative():
    rng = np.random.RandomState(1)
    x = rng.randn(12, 3).astype(np.float32)
    params, stats = batch_norm_init(3, average="cumulative")
    _, new = ghost_batch_norm(params, stats, x, True, virtual_batch_size=3, average="cumulative", unbiased_var=True)
    _, mean_b, var_b, n = _np_ghost(x, 1.0, 0.0, 3, 1e-5)
    # count 0 -> the cumulative average is exactly the first batch's statistics.
    np.testing.assert_allclose(new["mean"], mean_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], var_b * n / (n - 1), rtol=1e-5)
    assert int(new["count"]) == 1


def test_ghost_full_batch_is_batch_norm_and_eval_is_batch_norm():
    rng = np.random.RandomState(2)
    x = jnp.asarray(rng.randn(8, 4).astype(np.float32))
    params, stats = batch_norm_init(4)
    y_g, s_g = ghost_batch_norm(params, stats, x, True, virtual_batch_size=8)
    y_b, s_b = batch_norm(params, stats, x, True)
    np.testing.assert_allclose(y_g, y_b, atol=1e-6)
    np.testing.assert_allclose(s_g["var"], s_b["var"], atol=1e-6)
    stats = {"mean": jnp.full(4, 0.5), "var": jnp.full(4, 2.0)}
    y_e, s_e = ghost_batch_norm(params, stats, x, False, virtual_batch_size=3)  # eval ignores v
    np.testing.assert_allclose(y_e, (x - 0.5) / np.sqrt(2.0 + 1e-5), atol=1e-6)
    assert s_e is stats


def test_ghost_feature_axis_1_and_jit():
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.randn(6, 3, 4).astype(np.float32))  # (N, C, L), features on axis 1
    params, stats = batch_norm_init(3)
    y, _ = jax.jit(lambda x: ghost_batch_norm(params, stats, x, True, virtual_batch_size=2, axis=1))(x)
    y_ref, *_ = _np_ghost(np.moveaxis(np.asarray(x), 1, -1), 1.0, 0.0, 2, 1e-5)
    np.testing.assert_allclose(y, np.moveaxis(y_ref, -1, 1), atol=1e-5)


def test_ghost_three_way_gradients(x64):
    rng = np.random.RandomState(231)
    shape, c = (6, 2, 3), 3
    x = jnp.asarray(5 * rng.randn(*shape) + 12)
    scale, bias, dy = jnp.asarray(rng.randn(c)), jnp.asarray(rng.randn(c)), jnp.asarray(rng.randn(*shape))
    stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}

    @partial(jax.jit, static_argnames="grad")
    def gbn(x, s, b, grad):
        return ghost_batch_norm({"scale": s, "bias": b}, stats, x, True, virtual_batch_size=2, grad=grad)[0]

    for row in _three_way("ghost_batch_norm", gbn, (x, scale, bias), dy, ("x", "scale", "bias"), 1e-5):
        assert row.analytic_vs_autodiff <= 1e-10, row
        assert row.analytic_vs_numeric <= 1e-7 and row.autodiff_vs_numeric <= 1e-7, row


def test_ghost_errors():
    params, stats = batch_norm_init(3)
    x = jnp.ones((10, 3))
    with pytest.raises(ValueError, match=r"virtual_batch_size=4 must be a positive int dividing the batch size N=10"):
        ghost_batch_norm(params, stats, x, True, virtual_batch_size=4)
    with pytest.raises(ValueError, match="virtual_batch_size=1 leaves 1 value per feature"):
        ghost_batch_norm(params, stats, x, True, virtual_batch_size=1)
    with pytest.raises(ValueError, match="axis=0 is the batch axis 0"):
        ghost_batch_norm(batch_norm_init(10)[0], batch_norm_init(10)[1], x, True, virtual_batch_size=5, axis=0)
    with pytest.raises(ValueError, match=r"batch_norm_init\(3, average='cumulative'\)"):
        ghost_batch_norm(params, stats, x, True, virtual_batch_size=5, average="cumulative")
