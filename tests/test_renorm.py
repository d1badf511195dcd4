"""Batch renormalization: NumPy reference with clipping, reduction to batch norm, gradients, schedule."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
from bnjax.nn._batch_norm import batch_norm, batch_norm_init
from bnjax.nn._gradcheck import _three_way, numeric_vjp, rel_error
from bnjax.nn._renorm import batch_renorm, renorm_schedule


def _np_renorm(x, scale, bias, mu, var_run, rmax, dmax, eps):
    x = np.asarray(x, np.float64)
    mean_b, var_b = x.mean(0), x.var(0)
    sigma_b, sigma = np.sqrt(var_b + eps), np.sqrt(np.asarray(var_run, np.float64) + eps)
    r = np.clip(sigma_b / sigma, 1 / rmax, rmax)
    d = np.clip((mean_b - mu) / sigma, -dmax, dmax)
    return scale * ((x - mean_b) / sigma_b * r + d) + bias, mean_b, var_b, r, d


def test_batch_renorm_matches_numpy_with_some_clipping():
    rng = np.random.RandomState(0)
    c = 6
    x = (rng.randn(16, c) * np.array([1, 1, 5, 0.1, 1, 1]) + np.array([0, 0, 0, 0, 30, -30])).astype(np.float32)
    scale, bias = rng.randn(c).astype(np.float32), rng.randn(c).astype(np.float32)
    mu, var = rng.randn(c).astype(np.float32) * 0.1, rng.uniform(0.8, 1.2, c).astype(np.float32)
    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    stats = {"mean": jnp.asarray(mu), "var": jnp.asarray(var)}

    y, new = batch_renorm(params, stats, x, True, rmax=2.0, dmax=3.0, momentum=0.9)
    y_ref, mean_b, var_b, r, d = _np_renorm(x, scale, bias, mu, var, 2.0, 3.0, 1e-5)
    # The data was built so that r is clipped (features 2, 3) and d is clipped (4, 5) on some features only.
    assert np.isclose(r[2], 2.0) and np.isclose(r[3], 0.5) and np.isclose(d[4], 3.0) and np.isclose(d[5], -3.0)
    assert 0.5 < r[0] < 2.0 and abs(d[0]) < 3.0
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["mean"], 0.9 * mu + 0.1 * mean_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * var + 0.1 * var_b, rtol=1e-5, atol=1e-5)


def test_mask_with_nan_filler_matches_numpy_on_valid_rows():
    # NaN/inf padding rows change neither the clipped output, the running statistics nor the gradients
    # (reference: NumPy renorm of the valid rows; gradients: the unmasked call on the valid rows).
    rng = np.random.RandomState(8)
    c = 4
    x = (rng.randn(10, c) * np.array([1, 5, 0.1, 1]) + np.array([0, 0, 0, 20])).astype(np.float32)
    valid = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1], bool)
    x_f = x.copy()
    x_f[~valid] = np.nan
    x_f[2, 1] = np.inf
    scale, bias = rng.randn(c).astype(np.float32), rng.randn(c).astype(np.float32)
    stats = {"mean": jnp.asarray(rng.randn(c) * 0.1, jnp.float32), "var": jnp.asarray(rng.uniform(0.8, 1.2, c), jnp.float32)}
    dy = rng.randn(10, c).astype(np.float32)

    def loss(p, x, m):
        y, new = batch_renorm(p, stats, x, True, rmax=2.0, dmax=3.0, momentum=0.9, mask=m)
        return jnp.sum(jnp.where(m, y * dy[: x.shape[0]], 0.0)), (y, new)

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    (_, (y, new)), (dp, dx) = f(params, jnp.asarray(x_f), jnp.asarray(valid[:, None]))
    y_ref, mean_b, var_b, _, _ = _np_renorm(x[valid], scale, bias, stats["mean"], stats["var"], 2.0, 3.0, 1e-5)
    np.testing.assert_allclose(np.asarray(y)[valid], y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["mean"], 0.9 * stats["mean"] + 0.1 * mean_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * stats["var"] + 0.1 * var_b, rtol=1e-5, atol=1e-5)
    dy_valid = dy[valid]

    def loss_valid(p, xv):
        y, _ = batch_renorm(p, stats, xv, True, rmax=2.0, dmax=3.0, momentum=0.9)
        return jnp.sum(y * dy_valid)

    dp_ref, dx_ref = jax.jit(jax.grad(loss_valid, argnums=(0, 1)))(params, jnp.asarray(x[valid]))
    assert np.all(np.asarray(dx)[~valid] == 0.0)
    np.testing.assert_allclose(np.asarray(dx)[valid], dx_ref, rtol=1e-4, atol=1e-5)
    for k in ("scale", "bias"):
        np.testing.assert_allclose(dp[k], dp_ref[k], rtol=1e-4, atol=1e-5)


def test_unclipped_renorm_training_output_equals_eval_output():
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(32, 4).astype(np.float32))
    params, _ = batch_norm_init(4)
    stats = {"mean": jnp.asarray(rng.randn(4) * 0.2, jnp.float32), "var": jnp.asarray(rng.uniform(0.7, 1.3, 4), jnp.float32)}
    y_train, _ = batch_renorm(params, stats, x, True, rmax=10.0, dmax=10.0)
    y_eval, same = batch_renorm(params, stats, x, False)
    np.testing.assert_allclose(y_train, y_eval, atol=1e-5)
    assert same is stats


def test_rmax_1_dmax_0_is_batch_norm():
    rng = np.random.RandomState(2)
    x = jnp.asarray((3 * rng.randn(10, 2, 5) + 1).astype(np.float32))
    params = {"scale": jnp.asarray(rng.randn(5), jnp.float32), "bias": jnp.asarray(rng.randn(5), jnp.float32)}
    stats = {"mean": jnp.asarray(rng.randn(5), jnp.float32), "var": jnp.asarray(rng.uniform(1, 3, 5), jnp.float32)}
    kw = dict(momentum=0.7, unbiased_var=True)

    def loss(fn, p, x, **extra):
        y, new = fn(p, stats, x, True, **kw, **extra)
        return jnp.sum(jnp.sin(y)), (y, new)

    (_, (y_r, s_r)), g_r = jax.value_and_grad(
        lambda p, x: loss(batch_renorm, p, x, rmax=1.0, dmax=0.0), argnums=(0, 1), has_aux=True
    )(params, x)
    (_, (y_b, s_b)), g_b = jax.value_and_grad(lambda p, x: loss(batch_norm, p, x), argnums=(0, 1), has_aux=True)(params, x)
    np.testing.assert_allclose(y_r, y_b, atol=1e-6)
    for k in ("mean", "var"):
        np.testing.assert_allclose(s_r[k], s_b[k], atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_r), jax.tree.leaves(g_b)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_renorm_three_way_gradients_when_clipped(x64):
    # With r and d both clipped they are locally constant, so the finite differences of the full forward
    # (which recomputes r and d) must equal the stop-gradient VJP.
    rng = np.random.RandomState(231)
    x = jnp.asarray(5 * rng.randn(6, 4) + 12)
    scale, bias, dy = jnp.asarray(rng.randn(4)), jnp.asarray(rng.randn(4)), jnp.asarray(rng.randn(6, 4))
    stats = {"mean": jnp.zeros(4), "var": jnp.full(4, 0.01)}  # sigma_B/sigma ~ 50 -> r = rmax; d = dmax

    @partial(jax.jit, static_argnames="grad")
    def brn(x, s, b, grad):
        return batch_renorm({"scale": s, "bias": b}, stats, x, True, rmax=2.0, dmax=1.5, grad=grad)[0]

    for row in _three_way("batch_renorm", brn, (x, scale, bias), dy, ("x", "scale", "bias"), 1e-5):
        assert row.analytic_vs_autodiff <= 1e-10, row
        assert row.analytic_vs_numeric <= 1e-7 and row.autodiff_vs_numeric <= 1e-7, row


def test_renorm_gradients_unclipped_treat_r_d_as_constants(x64):
    rng = np.random.RandomState(7)
    x = jnp.asarray(rng.randn(8, 3) + 0.3)
    scale, bias, dy = jnp.asarray(rng.randn(3)), jnp.asarray(rng.randn(3)), jnp.asarray(rng.randn(8, 3))
    stats = {"mean": jnp.asarray([0.1, 0.2, 0.4]), "var": jnp.asarray([0.8, 1.1, 1.3])}

    @partial(jax.jit, static_argnames="grad")
    def brn(x, s, b, grad):
        return batch_renorm({"scale": s, "bias": b}, stats, x, True, rmax=3.0, dmax=5.0, grad=grad)[0]

    _, vjp_an = jax.vjp(lambda *a: brn(*a, "analytic"), x, scale, bias)
    _, vjp_ad = jax.vjp(lambda *a: brn(*a, "autodiff"), x, scale, bias)
    g_an, g_ad = vjp_an(dy), vjp_ad(dy)
    for a, b in zip(g_an, g_ad):
        assert rel_error(a, b) <= 1e-10

    # Reference: r and d frozen at their values for the given x (what stop_gradient means), NumPy forward.
    _, _, _, r0, d0 = _np_renorm(x, 1.0, 0.0, np.asarray(stats["mean"]), np.asarray(stats["var"]), 3.0, 5.0, 1e-5)
    assert np.all((r0 > 1 / 3) & (r0 < 3)) and np.all(np.abs(d0) < 5)

    def frozen(z):
        xhat = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
        return np.asarray(scale) * (xhat * r0 + d0) + np.asarray(bias)

    assert rel_error(g_an[0], numeric_vjp(frozen, np.asarray(x), np.asarray(dy))) <= 1e-7
    xhat = (np.asarray(x) - np.asarray(x).mean(0)) / np.sqrt(np.asarray(x).var(0) + 1e-5)
    np.testing.assert_allclose(g_an[1], np.sum(np.asarray(dy) * (xhat * r0 + d0), 0), rtol=1e-10)
    np.testing.assert_allclose(g_an[2], np.sum(np.asarray(dy), 0), rtol=1e-12)


def test_traced_rmax_dmax_under_jit_and_vmap():
    rng = np.random.RandomState(3)
    x = jnp.asarray((4 * rng.randn(8, 3) + 5).astype(np.float32))
    params, stats = batch_norm_init(3)
    bounds = [renorm_schedule(s, warmup_steps=10) for s in (0, 5, 10)]
    rmaxes, dmaxes = jnp.stack([b[0] for b in bounds]), jnp.stack([b[1] for b in bounds])

    @jax.jit
    def run(rmax, dmax):
        return batch_renorm(params, stats, x, True, rmax=rmax, dmax=dmax)[0]

    ys = jax.vmap(run)(rmaxes, dmaxes)
    for k in range(3):
        ref, *_ = _np_renorm(x, 1.0, 0.0, 0.0, np.ones(3), float(rmaxes[k]), float(dmaxes[k]), 1e-5)
        np.testing.assert_allclose(ys[k], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ys[0], batch_norm(params, stats, x, True)[0], atol=1e-5)


def test_renorm_schedule_paper_setting():
    kw = dict(hold_steps=5000, warmup_steps=35000, dmax_warmup_steps=20000)
    assert [float(v) for v in renorm_schedule(0, **kw)] == [1.0, 0.0]
    assert [float(v) for v in renorm_schedule(5000, **kw)] == [1.0, 0.0]
    np.testing.assert_allclose(renorm_schedule(15000, **kw), (1 + 2 * 10 / 35, 5 * 10 / 20), rtol=1e-6)
    np.testing.assert_allclose(renorm_schedule(25000, **kw), (1 + 2 * 20 / 35, 5.0), rtol=1e-6)
    np.testing.assert_allclose(renorm_schedule(40000, **kw), (3.0, 5.0), rtol=1e-6)
    np.testing.assert_allclose(renorm_schedule(10**6, **kw), (3.0, 5.0), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda s: renorm_schedule(s, warmup_steps=4))(jnp.int32(2)), (2.0, 2.5))


def test_unbounded_clips_are_eval_normalisation_and_ramp_without_nan():
    # rmax = dmax = inf (an accepted config value, model.renorm_rmax = inf): no clip, so the training output is
    # the eval output; the warm-up holds batch norm's bounds, then jumps to the unbounded ones (0 * inf is no NaN).
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.randn(32, 4).astype(np.float32) * 3 + 1)
    params, _ = batch_norm_init(4)
    stats = {"mean": jnp.asarray(rng.randn(4), jnp.float32), "var": jnp.asarray(rng.uniform(0.2, 5, 4), jnp.float32)}
    y_train, _ = batch_renorm(params, stats, x, True, rmax=float("inf"), dmax=float("inf"))
    np.testing.assert_allclose(y_train, batch_renorm(params, stats, x, False)[0], atol=1e-5)
    inf = float("inf")
    kw = dict(hold_steps=5, warmup_steps=10, rmax_final=inf, dmax_final=inf)
    got = [tuple(float(v) for v in renorm_schedule(t, **kw)) for t in (0, 5, 6, 15, 100)]
    assert got == [(1.0, 0.0), (1.0, 0.0), (inf, inf), (inf, inf), (inf, inf)]
    layer = bnjax.BatchRenorm(4, rmax=inf, dmax=inf, warmup_steps=10, hold_steps=5)
    for step in (0, 20):
        y, new = layer.apply(params, stats, x, True, step=step)
        assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(new["var"])).all()


def test_renorm_errors():
    params, stats = batch_norm_init(3)
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"rmax=0.5 is outside \[1.0, inf\]"):
        batch_renorm(params, stats, x, True, rmax=0.5)
    with pytest.raises(ValueError, match=r"dmax=-1.0 is outside \[0.0, inf\]"):
        batch_renorm(params, stats, x, True, dmax=-1.0)
    with pytest.raises(ValueError, match="1 value per feature"):
        batch_renorm(params, stats, jnp.ones((1, 3)), True)
    with pytest.raises(ValueError, match="warmup_steps=0 must be a positive int"):
        renorm_schedule(3, warmup_steps=0)
    with pytest.raises(ValueError, match="rmax_final=0.5 must be >= 1"):
        renorm_schedule(3, warmup_steps=10, rmax_final=0.5)
    with pytest.raises(ValueError, match="rmax_final=nan must be >= 1"):
        renorm_schedule(3, warmup_steps=10, rmax_final=float("nan"))
