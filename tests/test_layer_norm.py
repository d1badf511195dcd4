"""Tests of bnjax.layer_norm / layer_norm_init against NumPy (CS231n formulas), Flax and autodiff."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
import reference as ref
from reference import assert_reads_well, jit_vjp
from gradtools import three_way_errors

ln = jax.jit(bnjax.layer_norm, static_argnums=3, static_argnames=("axis", "eps", "grad"))


def _random_params(shape, seed, dtype=np.float64):
    r = np.random.RandomState(seed)
    return {"scale": jnp.asarray(r.randn(*shape).astype(dtype)), "bias": jnp.asarray(r.randn(*shape).astype(dtype))}, r


@pytest.mark.parametrize("shape, axis", [((4, 5), -1), ((2, 3, 4), -1), ((2, 5, 3), 1)])
def test_matches_numpy_reference(x64, shape, axis):
    d = shape[axis]
    params, r = _random_params((d,), seed=30)
    x, dy = 5 * r.randn(*shape) + 12, r.randn(*shape)

    def f(x, s, b):
        return ln({"scale": s, "bias": b}, {}, x, True, axis=axis)[0]

    y, (dx, ds, db) = jit_vjp(f, (jnp.asarray(x), params["scale"], params["bias"]), jnp.asarray(dy))
    out_ref, cache = ref.layernorm_forward(ref.to_last(x, axis), params["scale"], params["bias"], eps=1e-5)
    dx_ref, ds_ref, db_ref = ref.layernorm_backward(ref.to_last(dy, axis), cache)
    np.testing.assert_allclose(y, ref.from_last(out_ref, axis), rtol=1e-12, atol=1e-12)
    assert bnjax.rel_error(dx, ref.from_last(dx_ref, axis)) <= 1e-10
    assert bnjax.rel_error(ds, ds_ref) <= 1e-10
    assert bnjax.rel_error(db, db_ref) <= 1e-10
    # No running statistics: eval mode is the same computation, and the stats come back unchanged.
    y_eval, st = ln({"scale": params["scale"], "bias": params["bias"]}, {}, jnp.asarray(x), False, axis=axis)
    np.testing.assert_array_equal(y_eval, y)
    assert st == {}


def test_two_feature_axes_match_reference(x64):
    params, r = _random_params((3, 4), seed=31)
    x = r.randn(2, 3, 4) * 3 + 1
    y, _ = ln(params, {}, jnp.asarray(x), True, axis=(-2, -1))
    out_ref, _ = ref.layernorm_forward(x.reshape(2, 12), np.asarray(params["scale"]).reshape(12),
                                       np.asarray(params["bias"]).reshape(12))
    np.testing.assert_allclose(y, out_ref.reshape(2, 3, 4), rtol=1e-12, atol=1e-12)


def test_analytic_vjp_matches_autodiff_and_numeric(x64):
    params, r = _random_params((5,), seed=32)
    x, dy = jnp.asarray(5 * r.randn(4, 5) + 12), r.randn(4, 5)
    inputs = (x, params["scale"], params["bias"])

    def f(grad):
        return lambda x, s, b: ln({"scale": s, "bias": b}, {}, x, True, grad=grad)[0]

    worst = three_way_errors(f, inputs, dy)
    print(f"layer_norm (4, 5) rel errors (analytic~autodiff, analytic~numeric): {worst}")
    for name, (e_ad, e_num) in worst.items():
        assert e_ad <= 1e-10, name
        assert e_num <= 1e-7, name


@pytest.mark.parametrize("grad", ["analytic", "autodiff"])
def test_mask_with_nan_filler_equals_each_row_on_its_valid_entries(x64, grad):
    # Masked-out features hold NaN/inf and their output cotangents are NaN: each row's valid outputs and all
    # gradients equal the NumPy layer norm of that row's valid entries; the filler's cotangent is exactly 0.
    params, r = _random_params((6,), seed=37)
    x, dy = 3 * r.randn(5, 6) + 2, r.randn(5, 6)
    keep = r.rand(5, 6) > 0.4
    keep[:, :2] = True
    x_f = np.where(keep, x, np.nan)
    x_f[~keep & (np.arange(6) % 2 == 0)] = np.inf

    def f(x, s, b):
        return bnjax.layer_norm({"scale": s, "bias": b}, {}, x, True, mask=jnp.asarray(keep), grad=grad)[0]

    y, (dx, ds, db) = jit_vjp(f, (jnp.asarray(x_f), params["scale"], params["bias"]),
                              jnp.asarray(np.where(keep, dy, np.nan)))
    s_np, b_np = np.asarray(params["scale"]), np.asarray(params["bias"])
    ds_ref, db_ref = np.zeros(6), np.zeros(6)
    for i in range(5):
        v = keep[i]
        out, cache = ref.layernorm_forward(x[i, v][None], s_np[v], b_np[v], eps=1e-5)
        dxi, dsi, dbi = ref.layernorm_backward(dy[i, v][None], cache)
        np.testing.assert_allclose(np.asarray(y)[i, v], out[0], rtol=1e-12, atol=1e-12)
        assert bnjax.rel_error(np.asarray(dx)[i, v], dxi[0]) <= 1e-10
        ds_ref[v] += dsi
        db_ref[v] += dbi
    assert np.all(np.asarray(dx)[~keep] == 0.0)
    assert bnjax.rel_error(ds, ds_ref) <= 1e-10 and bnjax.rel_error(db, db_ref) <= 1e-10


@pytest.mark.parametrize("shape, axes", [((6, 5), -1), ((2, 3, 4), (-2, -1))])
def test_flax_parity(shape, axes):
    fshape = shape[-1:] if axes == -1 else shape[-2:]
    params, r = _random_params(fshape, seed=33, dtype=np.float32)
    x = jnp.asarray(2 * r.randn(*shape) + 1, jnp.float32)
    layer = fnn.LayerNorm(epsilon=1e-6, use_fast_variance=False, reduction_axes=axes, feature_axes=axes)

    @jax.jit
    def both(params, x):
        return layer.apply({"params": params}, x), bnjax.layer_norm(params, {}, x, True, axis=axes, eps=1e-6)[0]

    y_flax, y = both(params, x)
    err = float(jnp.max(jnp.abs(y - y_flax)))
    print(f"flax LayerNorm parity {shape} axes={axes}: max abs error {err:.2e}")
    assert y.dtype == jnp.float32 and err <= 1e-6


def test_batch_of_one_and_large_offset():
    params, _ = bnjax.layer_norm_init(256)
    x = jnp.asarray(1e4 + np.random.RandomState(34).randn(1, 256), jnp.float32)
    y, _ = ln(params, {}, x, True)
    assert abs(float(np.asarray(y, np.float64).std()) - 1) <= 1e-3


def test_bfloat16_input():
    params, _ = bnjax.layer_norm_init(8)
    x = jnp.asarray(np.random.RandomState(35).randn(4, 8) * 3 + 2, jnp.bfloat16)
    y, _ = ln(params, {}, x, True)
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y)))
    y32, _ = ln(params, {}, x.astype(jnp.float32), True)
    np.testing.assert_allclose(np.asarray(y, np.float32), y32, atol=3e-2)


def test_grad_of_grad(x64):
    params, r = _random_params((3,), seed=36)
    x, w = jnp.asarray(r.randn(2, 3) * 2), jnp.asarray(r.randn(2, 3))

    def outer(grad):
        loss = lambda x: jnp.sum(jnp.sin(bnjax.layer_norm(params, {}, x, True, grad=grad)[0]) * w)  # noqa: E731
        return jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2)))

    assert bnjax.rel_error(outer("analytic")(x), outer("autodiff")(x)) <= 1e-10


def test_init_layout():
    params, stats = bnjax.layer_norm_init((3, 4))
    assert stats == {} and params["scale"].shape == params["bias"].shape == (3, 4)
    np.testing.assert_array_equal(params["scale"], 1)
    np.testing.assert_array_equal(params["bias"], 0)
    assert bnjax.layer_norm_init(5)[0]["scale"].shape == (5,)


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert_reads_well(str(info.value))


def test_errors():
    params, _ = bnjax.layer_norm_init(5)
    x = jnp.ones((4, 5))
    _raises(ValueError, r"params\['scale'\] has shape \(3,\), expected \(5,\).*layer_norm_init\(\(5,\)\)",
            bnjax.layer_norm, bnjax.layer_norm_init(3)[0], {}, x, True)
    _raises(ValueError, r"grad='numeric' is not a valid option.*'analytic', 'autodiff'", bnjax.layer_norm, params, {},
            x, True, grad="numeric")
    _raises(TypeError, r"x has dtype int32.*astype\(jnp.float32\)", bnjax.layer_norm, params, {},
            jnp.ones((4, 5), jnp.int32), True)
    _raises(ValueError, r"x has shape \(5,\) \(rank 1\) but axis=\(-2, -1\) names 2 feature axes",
            bnjax.layer_norm, bnjax.layer_norm_init((1, 5))[0], {}, jnp.ones(5), True, axis=(-2, -1))
    _raises(ValueError, r"params has keys \['scale'\].*\(missing \['bias'\]\)", bnjax.layer_norm,
            {"scale": params["scale"]}, {}, x, True)
    _raises(ValueError, r"shape=0 must be a positive int", bnjax.layer_norm_init, 0)
