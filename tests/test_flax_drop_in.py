"""bnjax.flax against flax.linen itself where Flax's tests found differences: a rank-1 input (Flax's own
``test_bind_stateful`` included), degenerate shapes, complex inputs, NaN padding under a mask, and dropout masks
under ``jax_enable_x64``.

Training on one value per feature (where Flax silently returns the bias) computes what Flax does and warns; the
full list of differences is in the docstring of ``bnjax/flax.py``.
"""

import warnings

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
import bnjax.flax as bnn


def _reads_well(msg):
    # (reference.assert_reads_well would flag the dotted names bnjax.flax.BatchNorm as a missing space.)
    assert "  " not in msg and msg.endswith(".")


def _close(a, b, tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert u.shape == v.shape and u.dtype == v.dtype, (u.shape, u.dtype, v.shape, v.dtype)
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def test_batch_norm_rank1_input_in_init_and_eval_as_flax():
    x = jnp.asarray(np.random.RandomState(0).randn(3).astype(np.float32)) * 2 + 1
    for use_ra in (False, True):
        (y_ref, v_ref), (y, v) = (m(use_running_average=use_ra).init_with_output(jax.random.key(0), x)
                                  for m in (fnn.BatchNorm, bnn.BatchNorm))
        _close(v, v_ref, 0)
        _close(y, y_ref, 1e-6)  # train-mode init: Flax returns the bias (variance 0); eval: x / sqrt(1 + eps)
    v = {"params": {"scale": jnp.asarray([1.5, -2.0, 0.5]), "bias": jnp.asarray([0.1, 0.2, -0.3])},
         "batch_stats": {"mean": jnp.asarray([0.5, -1.0, 2.0]), "var": jnp.asarray([2.0, 0.5, 1.0])}}
    _close(bnn.BatchNorm(use_running_average=True).apply(v, x), fnn.BatchNorm(use_running_average=True).apply(v, x),
           1e-6)
    # Training: Flax returns the bias and updates the running mean towards x, the variance towards 0. The drop-in
    # does the same (bnjax.batch_norm refuses), and says why the output is constant.
    want = fnn.BatchNorm(use_running_average=False).apply(v, x, mutable=["batch_stats"])
    with pytest.warns(UserWarning, match=r"bnjax.flax.BatchNorm: training on x of shape \(3,\) gives 1 value per "
                                         r"feature.*use_running_average=True") as record:
        got = bnn.BatchNorm(use_running_average=False).apply(v, x, mutable=["batch_stats"])
    assert len(record) == 1
    _reads_well(str(record[0].message))
    _close(got, want, 1e-6)
    np.testing.assert_array_equal(got[0], v["params"]["bias"])
    def grad(m):
        return jax.grad(lambda x: jnp.sum(m(use_running_average=False).apply(v, x, mutable=["batch_stats"])[0] ** 3))(x)

    with pytest.warns(UserWarning):
        _close(grad(bnn.BatchNorm), grad(fnn.BatchNorm), 0)
    with pytest.raises(ValueError, match=r"1 value per feature"):  # the functional layer keeps refusing
        bnjax.batch_norm(*bnjax.batch_norm_init(3), x, True)


def test_flax_test_bind_stateful_passes_with_the_drop_in():
    # The body of flax's tests/linen/linen_module_test.py::ModuleTest::test_bind_stateful (google/flax), run with
    # flax.linen.BatchNorm and with bnjax.flax.BatchNorm: training on the (3,) output of Dense(3).
    def test_bind_stateful(batch_norm):
        class Foo(fnn.Module):
            def setup(self):
                self.a = fnn.Dense(3)
                self.bn = batch_norm()
                self.b = fnn.Dense(1)

        def f(foo, x):
            x = foo.a(x)
            x = foo.bn(x, use_running_average=False)
            return foo.b(x)

        foo = Foo()
        x = jnp.ones((4,))
        f_init = fnn.init_with_output(f, foo)
        y1, variables = f_init(jax.random.key(0), x)
        foo_b = foo.bind(variables, mutable="batch_stats")
        y2 = f(foo_b, x)
        y3, new_state = fnn.apply(f, foo, mutable="batch_stats")(variables, x)
        np.testing.assert_array_equal(y1, y2)  # flax: self.assertEqual(y1, y2) on these one-element arrays
        np.testing.assert_array_equal(y2, y3)
        bs_1 = new_state["batch_stats"]
        bs_2 = foo_b.variables["batch_stats"]
        for x, y in zip(jax.tree_util.tree_leaves(bs_1), jax.tree_util.tree_leaves(bs_2)):
            np.testing.assert_allclose(x, y)
        return y1, variables, new_state

    want = test_bind_stateful(fnn.BatchNorm)
    with pytest.warns(UserWarning, match=r"shape \(3,\) gives 1 value per feature"):
        got = test_bind_stateful(bnn.BatchNorm)
    _close(got, want, 1e-6)


@pytest.mark.parametrize("shape, train", [((1, 1, 3), True), ((0, 3), True), ((4, 0), True), ((4, 0), False)])
def test_batch_norm_degenerate_shapes_as_flax(shape, train):
    # One value per feature, an empty batch (Flax's statistics are NaN) and no features at all (which raised
    # ZeroDivisionError): outputs, running statistics and input gradients equal Flax's.
    x = jnp.asarray(np.random.RandomState(4).randn(*shape).astype(np.float32))

    def run(m):
        v = m(use_running_average=not train).init(jax.random.key(0), x)
        f = lambda x: m(use_running_average=not train).apply(v, x, mutable=["batch_stats"])  # noqa: E731
        return v, f(x), jax.grad(lambda x: jnp.sum(f(x)[0] ** 3))(x)

    want = run(fnn.BatchNorm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the one-value warning, tested above
        got = run(bnn.BatchNorm)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-6)  # NaN where Flax's is


@pytest.mark.parametrize("shape", [(1,), (0, 3), (2, 0)])
def test_layer_norm_degenerate_shapes_as_flax(shape):
    x = jnp.asarray(np.random.RandomState(5).randn(*shape).astype(np.float32))

    def run(m):
        v = m().init(jax.random.key(0), x)
        return m().apply(v, x), jax.grad(lambda x: jnp.sum(m().apply(v, x) ** 3))(x)

    _close(run(bnn.LayerNorm), run(fnn.LayerNorm), 2e-5)  # the two-pass variance: rounding only


def test_batch_norm_rank1_examples_under_vmap_with_axis_name_as_flax():
    # Per-example code vmapped over the batch, statistics shared across the named axis: each call sees (C,).
    x = jnp.asarray(np.random.RandomState(1).randn(6, 3).astype(np.float32)) * 2 + 1
    v = fnn.BatchNorm(use_running_average=False).init(jax.random.key(0), x[0])

    def run(mod):
        def one(xi):
            return mod(use_running_average=False, axis_name="batch", momentum=0.8).apply(v, xi, mutable=["batch_stats"])
        return jax.vmap(one, axis_name="batch", out_axes=(0, None))(x)

    (y_ref, s_ref), (y, s) = jax.jit(lambda: (run(fnn.BatchNorm), run(bnn.BatchNorm)))()
    _close(y, y_ref, 1e-5)
    _close(s, s_ref, 1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_batch_norm_complex_input_as_flax(masked):
    r = np.random.RandomState(2)
    x = jnp.asarray((r.randn(4, 3, 2) + 1j * r.randn(4, 3, 2) + (0.5 - 1j)).astype(np.complex64))
    m = jnp.asarray(r.rand(4, 3, 1) > 0.3).at[0].set(True) if masked else None
    x_in = jnp.where(m, x, jnp.nan) if masked else x  # Flax's own test fills the masked-out entries with NaN
    kw = dict(momentum=0.9, use_running_average=False, dtype=jnp.complex64)
    v = fnn.BatchNorm(**kw).init(jax.random.key(0), x_in, mask=m)

    @jax.jit
    def run(v):
        outs = [mod(**kw).apply(v, x_in, mask=m, mutable=["batch_stats"]) for mod in (fnn.BatchNorm, bnn.BatchNorm)]
        evals = [mod(use_running_average=True).apply({**v, **outs[0][1]}, x) for mod in (fnn.BatchNorm, bnn.BatchNorm)]
        return outs, evals

    ((y_ref, s_ref), (y, s)), (e_ref, e) = run(v)
    keep = np.broadcast_to(np.asarray(m), x.shape) if masked else np.ones(x.shape, bool)
    assert y.dtype == y_ref.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(y)[keep], np.asarray(y_ref)[keep], rtol=1e-5, atol=1e-5)
    # The running mean turns complex after the first update, as Flax's does; the variance stays real.
    assert s["batch_stats"]["mean"].dtype == jnp.complex64 and s["batch_stats"]["var"].dtype == jnp.float32
    _close(s, s_ref, 1e-5)
    _close(e, e_ref, 1e-5)


def test_layer_norm_complex_input_as_flax():
    r = np.random.RandomState(3)
    x = jnp.asarray((r.randn(3, 5) + 1j * r.randn(3, 5)).astype(np.complex64))
    v = fnn.LayerNorm().init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: a + jnp.asarray(r.randn(*a.shape), a.dtype), v)
    y_ref, y = (m(use_fast_variance=False).apply(v, x) for m in (fnn.LayerNorm, bnn.LayerNorm))
    _close(y, y_ref, 1e-5)


def test_functional_layers_refuse_complex_input_saying_what_to_do():
    params, stats = bnjax.batch_norm_init(2)
    with pytest.raises(TypeError, match=r"complex64.*real floating.*x.real, x.imag.*BatchNorm/LayerNorm of bnjax.flax") as info:
        bnjax.batch_norm(params, stats, jnp.ones((3, 2), jnp.complex64), True)
    _reads_well(str(info.value))


@pytest.mark.parametrize("grad", ["analytic", "autodiff"])
def test_nan_padding_under_a_mask_matches_flax_on_finite_padding(grad):
    # With NaN padding flax.linen's gradients turn NaN (y * 0 where y is NaN); bnjax's equal Flax's on the
    # same data with finite padding, and so do the outputs at valid entries and the running statistics.
    r = np.random.RandomState(4)
    x = jnp.asarray((3 * r.randn(6, 4) + 1).astype(np.float32))
    rows = jnp.asarray(np.array([1, 1, 0, 1, 0, 1], bool)[:, None])
    entries = jnp.asarray(r.rand(6, 4) > 0.3).at[:, :2].set(True)
    dy = jnp.asarray(r.randn(6, 4).astype(np.float32))
    cases = [(fnn.BatchNorm(use_running_average=False, momentum=0.8), bnn.BatchNorm(use_running_average=False,
              momentum=0.8, grad=grad), rows), (fnn.LayerNorm(), bnn.LayerNorm(grad=grad), entries)]

    @jax.jit
    def run():
        out = []
        for ref_mod, our_mod, m in cases:
            v = ref_mod.init(jax.random.key(0), x)
            v = {**v, "params": jax.tree.map(lambda a: a + jnp.asarray(r.randn(*a.shape), a.dtype), v["params"])}

            def loss(params, xs, mod, m=m, v=v):
                y, upd = mod.apply({**v, "params": params}, xs, mask=m, mutable=["batch_stats"])
                return jnp.sum(jnp.where(m, y * dy, 0.0)), (y, upd)

            grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
            ref_finite = grad_fn(v["params"], jnp.where(m, x, 0.0), ref_mod)
            ref_nan = grad_fn(v["params"], jnp.where(m, x, jnp.nan), ref_mod)
            filler = jnp.where(jnp.arange(4) % 2 == 0, jnp.nan, jnp.inf)
            ours_nan = grad_fn(v["params"], jnp.where(m, x, filler), our_mod)
            out.append((ref_finite, ref_nan, ours_nan, m))
        return out

    for ((_, (y_ref, s_ref)), g_ref), (_, g_flax_nan), ((_, (y, s)), g), m in run():
        assert not np.all(np.isfinite(np.asarray(g_flax_nan[0]["scale"])))  # the leak this guards against
        keep = np.broadcast_to(np.asarray(m), x.shape)
        np.testing.assert_allclose(np.asarray(y)[keep], np.asarray(y_ref)[keep], rtol=1e-5, atol=1e-5)
        _close(s, s_ref, 1e-6)
        _close(g[0], g_ref[0], 1e-4)
        np.testing.assert_allclose(np.asarray(g[1])[keep], np.asarray(g_ref[1])[keep], rtol=1e-4, atol=1e-4)
        assert np.all(np.asarray(g[1])[~keep] == 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dropout_masks_equal_flax_under_x64(x64, dtype):
    # Flax forms keep = 1 - rate in Python, so bernoulli draws in float64 under x64; so must bnjax.
    x = jnp.asarray(np.random.RandomState(5).rand(16, 8, 4) + 1.0, dtype)
    key = jax.random.key(11)
    for rate, bdims in ((0.3, ()), (0.5, (1,)), (0.9, (0, 2)), (0.1, ())):
        y_ref = fnn.Dropout(rate, broadcast_dims=bdims).apply({}, x, deterministic=False, rng=key)
        y = bnn.Dropout(rate, broadcast_dims=bdims).apply({}, x, deterministic=False, rng=key)
        y_fn, _ = bnjax.dropout({}, {}, x, True, key=key, rate=rate, broadcast_dims=bdims)
        assert y.dtype == y_fn.dtype == y_ref.dtype == dtype
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(y_fn, y_ref)
