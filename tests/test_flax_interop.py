"""bnjax.flax: drop-in flax.linen BatchNorm/LayerNorm/Dropout -- same variables, outputs, updates, gradients."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bnjax.flax as bnn


def make_net(mod):
    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x, train: bool):
            x = fnn.Dense(8)(x)
            x = mod.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = fnn.relu(x)
            x = mod.Dropout(0.3)(x, deterministic=not train)
            x = fnn.Dense(6)(x)
            x = mod.LayerNorm()(x)
            x = mod.BatchNorm()(x, use_running_average=not train)  # flax default momentum 0.99
            return fnn.Dense(3)(x)

    return Net()


def _max_err(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.usefixtures("highest_precision")  # float32 against a Flax reference: no TF32
def test_flax_model_switches_by_import_and_keeps_checkpoint():
    flax_net, bnjax_net = make_net(fnn), make_net(bnn)
    rng = np.random.RandomState(0)
    x = jnp.asarray((2 * rng.randn(16, 5) + 1).astype(np.float32))
    target = jnp.asarray(rng.randn(16, 3).astype(np.float32))

    variables = jax.jit(lambda k: flax_net.init(k, x, train=False))(jax.random.key(0))
    # Same tree, names (BatchNorm_0, LayerNorm_0, ...), shapes and dtypes: checkpoints load unchanged.
    # (eval_shape: no second compile of the random initialisers, which is slow on CPU.)
    ours_init = jax.eval_shape(lambda k: bnjax_net.init(k, x, train=False), jax.random.key(0))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(lambda a: (a.shape, a.dtype), ours_init)
    tx = optax.sgd(0.1)

    def train_step(net, variables, opt_state):
        def loss_fn(params):
            out, upd = net.apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"],
            )
            return jnp.mean((out - target) ** 2), (out, upd["batch_stats"])

        (loss, (out, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state)
        params = optax.apply_updates(variables["params"], updates)
        return {"params": params, "batch_stats": stats}, out, grads

    @jax.jit
    def both(variables):
        opt = tx.init(variables["params"])
        v_flax, out_flax, g_flax = train_step(flax_net, variables, opt)
        v_ours, out_ours, g_ours = train_step(bnjax_net, variables, opt)
        # The flax-trained checkpoint evaluated by the bnjax modules.
        evals = flax_net.apply(v_flax, x, train=False), bnjax_net.apply(v_flax, x, train=False)
        return (v_flax, out_flax, g_flax), (v_ours, out_ours, g_ours), evals

    (v_flax, out_flax, g_flax), (v_ours, out_ours, g_ours), (eval_flax, eval_ours) = both(variables)
    assert _max_err(out_flax, out_ours) <= 1e-6
    assert _max_err(v_flax["batch_stats"], v_ours["batch_stats"]) <= 1e-6
    assert _max_err(g_flax, g_ours) <= 1e-5
    # The running statistics actually moved (with each layer's own momentum).
    assert _max_err(v_ours["batch_stats"], variables["batch_stats"]) > 1e-3
    assert _max_err(eval_flax, eval_ours) <= 1e-5


def test_batch_norm_options_mask_and_dtype():
    rng = np.random.RandomState(1)
    x = jnp.asarray((3 * rng.randn(4, 3, 6) + 2).astype(np.float32))
    mask = jnp.asarray(rng.rand(4, 3, 1) > 0.3)
    kw = dict(use_running_average=False, axis=1, momentum=0.8, epsilon=1e-3, use_fast_variance=False)
    for extra in ({}, {"use_bias": False}, {"use_scale": False}):
        ref_mod, our_mod = fnn.BatchNorm(**kw, **extra), bnn.BatchNorm(**kw, **extra)
        v = ref_mod.init(jax.random.key(0), x)
        assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, our_mod.init(jax.random.key(0), x))
        y_ref, s_ref = ref_mod.apply(v, x, mask=mask, mutable=["batch_stats"])
        y, s = our_mod.apply(v, x, mask=mask, mutable=["batch_stats"])
        assert _max_err(y_ref, y) <= 1e-5 and _max_err(s_ref, s) <= 1e-6
    # bf16 input with float32 parameters gives a float32 output, as in Flax.
    xb = x.astype(jnp.bfloat16)
    v = fnn.BatchNorm(use_running_average=True).init(jax.random.key(0), xb)
    assert bnn.BatchNorm(use_running_average=True).apply(v, xb).dtype == fnn.BatchNorm(use_running_average=True).apply(v, xb).dtype == jnp.float32


def test_batch_norm_init_with_one_row_and_errors():
    x1 = jnp.ones((1, 4))
    v = bnn.BatchNorm(use_running_average=False).init(jax.random.key(0), x1)  # flax allows this; so do we
    assert jax.tree.map(jnp.shape, v) == {"params": {"scale": (4,), "bias": (4,)}, "batch_stats": {"mean": (4,), "var": (4,)}}
    with pytest.raises(ValueError, match="use_running_average"):
        bnn.BatchNorm(use_running_average=True).init(jax.random.key(0), x1, use_running_average=True)
    with pytest.raises(NotImplementedError, match="axis_index_groups"):
        bnn.BatchNorm(use_running_average=True, axis_index_groups=[[0]]).init(jax.random.key(0), x1)


@pytest.mark.parametrize(
    "kwargs", [{}, {"epsilon": 1e-3}, {"reduction_axes": (1, 2), "feature_axes": -1}, {"use_bias": False}]
)
def test_layer_norm_matches_flax(kwargs):
    rng = np.random.RandomState(2)
    x = jnp.asarray((2 * rng.randn(3, 4, 5) + 3).astype(np.float32))
    ref_mod, our_mod = fnn.LayerNorm(use_fast_variance=False, **kwargs), bnn.LayerNorm(**kwargs)
    v = ref_mod.init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: a + jnp.asarray(rng.randn(*a.shape), a.dtype), v)  # non-trivial affine
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, our_mod.init(jax.random.key(0), x))
    mask = jnp.asarray(rng.rand(3, 4, 5) > 0.2)

    @jax.jit
    def run(v):
        outs = [m.apply(v, x) for m in (ref_mod, our_mod)] + [m.apply(v, x, mask=mask) for m in (ref_mod, our_mod)]
        grads = [jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x))))(v) for m in (ref_mod, our_mod)]
        return outs, grads

    (y_ref, y, ym_ref, ym), (g_ref, g) = run(v)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(ym, ym_ref, atol=1e-5, rtol=1e-6)
    assert _max_err(g_ref, g) <= 1e-5


class _TwoDropouts(fnn.Module):
    mod: object
    first_rate: float

    @fnn.compact
    def __call__(self, x, train):
        x = self.mod.Dropout(self.first_rate, deterministic=not train)(x)
        return self.mod.Dropout(0.5, broadcast_dims=(1,))(x, deterministic=not train)


def test_dropout_masks_and_rng_stream_match_flax():
    # A first Dropout with rate 0 / 0.25 / 1 must consume the "dropout" stream exactly as Flax's does, so
    # the second layer's mask is Flax's too. One jit for all cases (the PRNG compiles slowly on CPU).
    x = jnp.asarray(np.random.RandomState(3).randn(6, 4, 8).astype(np.float32)) + 3.0
    rates = (0.0, 0.25, 1.0)

    @jax.jit
    def run(key):
        rngs = {"dropout": key}
        pairs = [
            (_TwoDropouts(fnn, r).apply({}, x, True, rngs=rngs), _TwoDropouts(bnn, r).apply({}, x, True, rngs=rngs))
            for r in rates
        ]
        explicit = (
            fnn.Dropout(0.5).apply({}, x, deterministic=False, rng=key),
            bnn.Dropout(0.5).apply({}, x, deterministic=False, rng=key),
        )
        return pairs, explicit

    pairs, (ref, ours) = run(jax.random.key(7))
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    for rate, (ref, ours) in zip(rates, pairs):
        np.testing.assert_allclose(ours, ref, rtol=1e-6)
        if rate != 1.0:
            assert 0.2 < float(jnp.mean(ours == 0)) < 0.9
        np.testing.assert_array_equal(_TwoDropouts(bnn, rate).apply({}, x, False), x)
