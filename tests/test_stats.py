"""Tests of bnjax/nn/_stats.py: statistics, the shared normalisation and its VJP, running-stats rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
from bnjax.nn._stats import compute_dtype, group_count, normalize_affine_autodiff
import reference as ref

from reference import jit_vjp

rng = np.random.RandomState(0)


@pytest.mark.parametrize(
    "shape, axes",
    [((6, 5), (0,)), ((6, 5), (1,)), ((2, 3, 3, 4), (0, 1, 2)), ((2, 4, 3, 3), (0, 2, 3))],
)
def test_compute_stats_matches_numpy(shape, axes):
    x = 3 * rng.randn(*shape) + 2
    mean, var, count = bnjax.nn.compute_stats(jnp.asarray(x, jnp.float32), axes)
    keep = tuple(1 if i in axes else d for i, d in enumerate(shape))
    assert mean.shape == var.shape == count.shape == keep
    assert mean.dtype == var.dtype == jnp.float32
    np.testing.assert_allclose(mean, x.mean(axis=axes, keepdims=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, x.var(axis=axes, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(count, np.full(keep, np.prod([shape[a] for a in axes])))


def test_compute_stats_mask_leaves_entries_out():
    x = rng.randn(7, 3)
    mask = np.array([1, 1, 0, 1, 0, 1, 1], bool)[:, None]
    mean, var, count = bnjax.nn.compute_stats(jnp.asarray(x, jnp.float32), (0,), mask=jnp.asarray(mask))
    kept = x[mask[:, 0]]
    np.testing.assert_allclose(mean[0], kept.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var[0], kept.var(0), rtol=1e-5)
    np.testing.assert_array_equal(count, [[5, 5, 5]])


@pytest.mark.parametrize("mask_dtype", [bool, np.float32])
def test_compute_stats_nan_and_inf_filler_is_selected_away(mask_dtype):
    # Padding is often garbage: NaN/inf where the mask is 0 must not reach the mean, variance or count.
    x = rng.randn(7, 3)
    keep = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 1, 0], [1, 0, 1]], bool)
    filled = np.where(keep, x, np.nan)
    filled[2, 0], filled[1, 1] = np.inf, -np.inf
    mean, var, count = bnjax.nn.compute_stats(jnp.asarray(filled, jnp.float32), (0,), mask=jnp.asarray(keep, mask_dtype))
    for c in range(3):
        kept = x[keep[:, c], c]
        np.testing.assert_allclose(mean[0, c], kept.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var[0, c], kept.var(), rtol=1e-5)
        assert count[0, c] == kept.size


@pytest.mark.parametrize("masked", [False, True])
def test_compute_stats_complex_is_flax_abs_square_variance(masked):
    # Flax normalises complex inputs with a complex mean and the real variance mean(|x - mean|^2).
    z = (rng.randn(6, 2) + 1j * rng.randn(6, 2) + (1 - 2j)).astype(np.complex64)
    keep = np.array([1, 0, 1, 1, 0, 1], bool)[:, None] if masked else np.ones((6, 1), bool)
    mean, var, count = bnjax.nn.compute_stats(jnp.asarray(z), (0,), mask=jnp.asarray(keep) if masked else None)
    kept = z[keep[:, 0]].astype(np.complex128)
    assert mean.dtype == jnp.complex64 and var.dtype == count.dtype == jnp.float32
    np.testing.assert_allclose(mean[0], kept.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var[0], np.mean(np.abs(kept - kept.mean(0)) ** 2, axis=0), rtol=1e-5)


def test_compute_stats_axis_name_is_count_weighted():
    # Three "devices" with 4, 2 and 3 valid rows: the result must be the statistics of all 9 rows,
    # not the mean of the three per-device means (google/flax#2417).
    x = rng.randn(3, 4, 2) * 2 + 1
    valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], bool)

    def local(xb, mb):
        return bnjax.nn.compute_stats(xb, (0,), axis_name="dev", mask=mb[:, None])

    mean, var, count = jax.vmap(local, axis_name="dev")(jnp.asarray(x, jnp.float32), jnp.asarray(valid))
    rows = x[valid]
    for d in range(3):
        np.testing.assert_allclose(mean[d, 0], rows.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var[d, 0], rows.var(0), rtol=1e-5)
        np.testing.assert_array_equal(count[d, 0], [9, 9])
    naive = np.mean([x[d][valid[d]].mean(0) for d in range(3)], axis=0)
    assert np.max(np.abs(naive - rows.mean(0))) > 1e-2  # the case really distinguishes the two rules


def test_two_pass_variance_survives_large_offset():
    x = 1e4 + np.random.RandomState(1).randn(256, 4)
    _, var, _ = bnjax.nn.compute_stats(jnp.asarray(x, jnp.float32), (0,))
    x32 = x.astype(np.float32).astype(np.float64)  # the values the float32 input actually holds
    np.testing.assert_allclose(var[0], x32.var(0), rtol=1e-4)


def test_low_precision_input_accumulates_in_float32():
    assert compute_dtype(jnp.bfloat16) == jnp.float32
    assert compute_dtype(jnp.float16) == jnp.float32
    assert compute_dtype(jnp.float32) == jnp.float32
    x = jnp.asarray(rng.randn(64, 3) + 5, jnp.bfloat16)
    mean, var, count = bnjax.nn.compute_stats(x, (0,))
    assert mean.dtype == var.dtype == count.dtype == jnp.float32
    xf = np.asarray(x.astype(jnp.float32), np.float64)
    np.testing.assert_allclose(mean[0], xf.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var[0], xf.var(0), rtol=1e-5)


def test_group_count_with_mask_and_axes():
    x = jnp.zeros((3, 4, 2))
    np.testing.assert_array_equal(group_count(x, (0, 1)), np.full((1, 1, 2), 12))
    mask = jnp.asarray(np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], bool)[:, :, None])
    np.testing.assert_array_equal(group_count(x, (0, 1), mask=mask), np.full((1, 1, 2), 9))


# ----------------------------------------------------------------------------------------------------
# normalize_affine: forward and VJP (float64)
# ----------------------------------------------------------------------------------------------------


def _bn_inputs(shape, seed=2):
    r = np.random.RandomState(seed)
    c = shape[-1]
    bshape = (1,) * (len(shape) - 1) + (c,)
    x = 5 * r.randn(*shape) + 12
    return (jnp.asarray(x), jnp.asarray(r.randn(*bshape)), jnp.asarray(r.randn(*bshape)), r)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 3, 4)])
def test_normalize_affine_forward_and_all_cotangents(x64, shape):
    x, scale, bias, r = _bn_inputs(shape)
    axes = tuple(range(len(shape) - 1))
    c = shape[-1]
    dy = r.randn(*shape)
    keep = (1,) * (len(shape) - 1) + (c,)
    dmean, dvar = r.randn(*keep), r.randn(*keep)
    cts = (jnp.asarray(dy), jnp.asarray(dmean), jnp.asarray(dvar))

    (y, mean, var), g_an = jit_vjp(lambda *a: bnjax.nn.normalize_affine(*a, axes, 1e-5), (x, scale, bias), cts)
    (y_ad, _, _), g_ad = jit_vjp(lambda *a: normalize_affine_autodiff(*a, axes, 1e-5), (x, scale, bias), cts)

    out_ref, cache, _, _ = ref.batchnorm_forward(
        x, scale.reshape(c), bias.reshape(c), {"mode": "train", "running_mean": 0.0, "running_var": 1.0}
    )
    np.testing.assert_allclose(y, out_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y_ad, rtol=1e-14, atol=1e-14)
    x2 = np.asarray(x).reshape(-1, c)
    np.testing.assert_allclose(mean.reshape(c), x2.mean(0), rtol=1e-13)
    np.testing.assert_allclose(var.reshape(c), x2.var(0), rtol=1e-12)

    dx_ref, dg_ref, db_ref = ref.batchnorm_backward(dy, cache, dmean.reshape(c), dvar.reshape(c))
    for a, b, want in zip(g_an, g_ad, (dx_ref, dg_ref, db_ref)):
        assert a.shape == b.shape
        assert bnjax.rel_error(a, b) <= 1e-10
        assert bnjax.rel_error(np.asarray(a).reshape(np.shape(want)), want) <= 1e-10


def test_normalize_affine_mask_vjp_matches_autodiff(x64):
    x, scale, bias, r = _bn_inputs((6, 3), seed=3)
    mask = jnp.asarray(np.array([1, 0, 1, 1, 0, 1], bool)[:, None])
    cts = tuple(jnp.asarray(r.randn(*s)) for s in ((6, 3), (1, 3), (1, 3)))

    def run(fn):
        return jit_vjp(lambda *a: fn(*a, (0,), 1e-5, None, mask), (x, scale, bias), cts)

    (y, mean, _), g_an = run(bnjax.nn.normalize_affine)
    (y_ad, _, _), g_ad = run(normalize_affine_autodiff)
    np.testing.assert_allclose(mean[0], np.asarray(x)[np.asarray(mask[:, 0])].mean(0), rtol=1e-13)
    np.testing.assert_allclose(y, y_ad, rtol=1e-14)
    for a, b in zip(g_an, g_ad):
        assert bnjax.rel_error(a, b) <= 1e-10


def _column_reference(x, scale, bias, dy, keep, dmean, dvar):
    """The CS231n NumPy forward/backward of each feature column on its valid rows only (float64)."""
    n, c = x.shape
    y, dx = np.zeros((n, c)), np.zeros((n, c))
    mean, var, dscale, dbias = (np.zeros(c) for _ in range(4))
    for j in range(c):
        rows = keep[:, j]
        xj = x[rows, j:j + 1]
        out, cache, _, _ = ref.batchnorm_forward(
            xj, scale[j:j + 1], bias[j:j + 1], {"mode": "train", "running_mean": 0.0, "running_var": 1.0}
        )
        y[rows, j] = out[:, 0]
        mean[j], var[j] = xj.mean(), xj.var()
        dxj, dsj, dbj = ref.batchnorm_backward(dy[rows, j:j + 1], cache, dmean[j:j + 1], dvar[j:j + 1])
        dx[rows, j], dscale[j], dbias[j] = dxj[:, 0], dsj[0], dbj[0]
    return y, mean, var, dx, dscale, dbias


@pytest.mark.parametrize("grad", ["analytic", "autodiff"])
@pytest.mark.parametrize("pattern", ["rows", "entries"])
def test_normalize_affine_nan_filler_changes_nothing(x64, grad, pattern):
    # Masked-out x hold NaN/inf, and the cotangent of their outputs is NaN too: the valid outputs, the
    # statistics and every gradient must equal the NumPy computation on the valid entries alone, and the
    # masked-out entries' own cotangent must be exactly 0.
    r = np.random.RandomState(7)
    n, c = 9, 3
    x = 3 * r.randn(n, c) + 2
    scale, bias, dy = r.randn(c), r.randn(c), r.randn(n, c)
    dmean, dvar = r.randn(c), r.randn(c)
    if pattern == "rows":
        keep_arg = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1], bool)[:, None]
    else:
        keep_arg = r.rand(n, c) > 0.35
        keep_arg[:2] = True  # at least two valid values per feature
    keep = np.broadcast_to(keep_arg, (n, c))
    x_f = np.where(keep, x, np.nan)
    x_f[~keep & (np.arange(n)[:, None] % 2 == 0)] = np.inf
    dy_f = np.where(keep, dy, np.nan)
    fn = bnjax.nn.normalize_affine if grad == "analytic" else normalize_affine_autodiff
    cts = (jnp.asarray(dy_f), jnp.asarray(dmean[None]), jnp.asarray(dvar[None]))
    (y, mean, var), (dx, dscale, dbias) = jit_vjp(
        lambda *a: fn(*a, (0,), 1e-5, None, jnp.asarray(keep_arg)),
        (jnp.asarray(x_f), jnp.asarray(scale[None]), jnp.asarray(bias[None])), cts,
    )
    y_ref, mean_ref, var_ref, dx_ref, ds_ref, db_ref = _column_reference(x, scale, bias, dy, keep, dmean, dvar)
    np.testing.assert_allclose(np.asarray(y)[keep], y_ref[keep], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean[0], mean_ref, rtol=1e-13)
    np.testing.assert_allclose(var[0], var_ref, rtol=1e-12)
    assert np.all(np.asarray(dx)[~keep] == 0.0)
    assert bnjax.rel_error(np.asarray(dx)[keep], dx_ref[keep]) <= 1e-10
    assert bnjax.rel_error(dscale[0], ds_ref) <= 1e-10 and bnjax.rel_error(dbias[0], db_ref) <= 1e-10


def test_normalize_affine_axis_name_under_vmap(x64):
    # A batch of 12 rows split into 3 members of 4 rows, statistics synchronised over the named axis:
    # the forward equals the batch norm of all 12 rows and the VJP equals autodiff.
    x, scale, bias, r = _bn_inputs((3, 4, 5), seed=4)
    scale, bias = scale[0], bias[0]  # (1, 5): shared by every member
    dy = jnp.asarray(r.randn(3, 4, 5))

    def sync(fn):
        def f(x, s, b):
            per_member = lambda xb: fn(xb, s, b, (0,), 1e-5, "b")[0]  # noqa: E731
            return jax.vmap(per_member, axis_name="b")(x)

        return jit_vjp(f, (x, scale, bias), dy)

    y, g_an = sync(bnjax.nn.normalize_affine)
    y_ad, g_ad = sync(normalize_affine_autodiff)
    out_ref, cache, _, _ = ref.batchnorm_forward(
        np.asarray(x).reshape(12, 5), scale[0], bias[0], {"mode": "train", "running_mean": 0.0, "running_var": 1.0}
    )
    np.testing.assert_allclose(np.asarray(y).reshape(12, 5), out_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y_ad, rtol=1e-13, atol=1e-13)
    for a, b in zip(g_an, g_ad):
        assert bnjax.rel_error(a, b) <= 1e-10
    dx_ref, _, _ = ref.batchnorm_backward(np.asarray(dy).reshape(12, 5), cache)
    assert bnjax.rel_error(np.asarray(g_an[0]).reshape(12, 5), dx_ref) <= 1e-10


# ----------------------------------------------------------------------------------------------------
# update_running_stats
# ----------------------------------------------------------------------------------------------------


def test_ema_rule_matches_closed_form_after_k_steps():
    init = {"mean": jnp.asarray([0.5, -1.0, 2.0]), "var": jnp.asarray([1.0, 3.0, 0.5])}
    r = np.random.RandomState(5)
    means = [r.randn(3) for _ in range(6)]
    vars_ = [r.rand(3) + 0.1 for _ in range(6)]
    stats = init
    for mu, var in zip(means, vars_):
        mu, var = jnp.asarray(mu, jnp.float32), jnp.asarray(var, jnp.float32)
        stats = bnjax.nn.update_running_stats(stats, mu, var, momentum=0.8)
    np.testing.assert_allclose(stats["mean"], ref.ema_closed_form(init["mean"], means, 0.8), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], ref.ema_closed_form(init["var"], vars_, 0.8), rtol=1e-5)
    assert stats["mean"].dtype == stats["var"].dtype == jnp.float32


def test_ema_momentum_may_be_traced():
    stats = {"mean": jnp.zeros(2), "var": jnp.ones(2)}
    moms = jnp.asarray([0.0, 0.5, 0.9, 1.0])
    out = jax.vmap(lambda m: bnjax.nn.update_running_stats(stats, jnp.ones(2) * 4, jnp.ones(2) * 3, momentum=m))(moms)
    np.testing.assert_allclose(out["mean"][:, 0], 4 * (1 - np.asarray(moms)), rtol=1e-6)
    np.testing.assert_allclose(out["var"][:, 0], np.asarray(moms) + 3 * (1 - np.asarray(moms)), rtol=1e-6)


def test_cumulative_rule_is_plain_mean_and_counts():
    stats = {"mean": jnp.full(3, 7.0), "var": jnp.full(3, 9.0), "count": jnp.zeros((), jnp.int32)}
    r = np.random.RandomState(6)
    means = [r.randn(3) for _ in range(5)]
    vars_ = [r.rand(3) for _ in range(5)]
    for mu, var in zip(means, vars_):
        stats = bnjax.nn.update_running_stats(stats, jnp.asarray(mu), jnp.asarray(var), average="cumulative")
    np.testing.assert_allclose(stats["mean"], np.mean(means, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], np.mean(vars_, 0), rtol=1e-5)
    assert int(stats["count"]) == 5 and stats["count"].dtype == jnp.int32
