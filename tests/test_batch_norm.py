"""Tests of bnjax.batch_norm / batch_norm_init against NumPy (CS231n formulas), Flax, torch and autodiff."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import bnjax
import reference as ref
from reference import assert_reads_well, jit_vjp
from gradtools import three_way_errors

TRAIN_EVAL = [True, False]

# Jitted batch norm for the numerical tests: eager calls compile every small op separately, which costs
# seconds on a busy CPU. Error, identity and jit-vs-eager tests call bnjax.batch_norm itself.
bn = jax.jit(bnjax.batch_norm, static_argnums=3,
             static_argnames=("axis", "eps", "average", "unbiased_var", "axis_name", "grad"))


def _random_layer(c, seed, dtype=np.float64):
    """Random scale/bias and running mean/var (var > 0), so no default value hides a mistake."""
    r = np.random.RandomState(seed)
    params = {"scale": r.randn(c).astype(dtype), "bias": r.randn(c).astype(dtype)}
    stats = {"mean": r.randn(c).astype(dtype), "var": (r.rand(c) + 0.5).astype(dtype)}
    return params, stats, r


def _jnp(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


# ----------------------------------------------------------------------------------------------------
# Forward and backward against the CS231n NumPy reference (float64)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, axis", [((4, 5), -1), ((2, 3, 3, 4), -1), ((2, 4, 3, 3), 1)])
def test_matches_numpy_reference(x64, shape, axis):
    c = shape[axis]
    params, stats, r = _random_layer(c, seed=10)
    x = 5 * r.randn(*shape) + 12
    dy = r.randn(*shape)

    def f(x, scale, bias):  # train and eval in one program (one compile)
        p = {"scale": scale, "bias": bias}
        return [bnjax.batch_norm(p, _jnp(stats), x, train, axis=axis) for train in TRAIN_EVAL]

    zero_st = jax.tree_util.tree_map(jnp.zeros_like, _jnp(stats))
    outs, (dx, dscale, dbias) = jit_vjp(
        f, (jnp.asarray(x), jnp.asarray(params["scale"]), jnp.asarray(params["bias"])),
        [(jnp.asarray(dy), zero_st), (jnp.zeros(shape), zero_st)],
    )
    caches = {}
    for train, (y, new_stats) in zip(TRAIN_EVAL, outs):
        bn_param = {"mode": "train" if train else "test", "momentum": 0.9, "eps": 1e-5,
                    "running_mean": stats["mean"], "running_var": stats["var"]}
        out_ref, caches[train], rm, rv = ref.batchnorm_forward(ref.to_last(x, axis), params["scale"],
                                                               params["bias"], bn_param)
        np.testing.assert_allclose(y, ref.from_last(out_ref, axis), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(new_stats["mean"], rm, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new_stats["var"], rv, rtol=1e-12)
    # The cotangent above reaches the train output only: the VJP is the train-mode backward.
    dx_ref, dg_ref, db_ref = ref.batchnorm_backward(ref.to_last(dy, axis), caches[True])
    assert bnjax.rel_error(dx, ref.from_last(dx_ref, axis)) <= 1e-10
    assert bnjax.rel_error(dscale, dg_ref) <= 1e-10
    assert bnjax.rel_error(dbias, db_ref) <= 1e-10


def test_eval_mode_gradient_matches_affine_map(x64):
    params, stats, r = _random_layer(4, seed=9)
    x, dy = 5 * r.randn(2, 3, 3, 4) + 12, r.randn(2, 3, 3, 4)
    st = _jnp(stats)
    _, (dx, ds, db) = jit_vjp(lambda x, s, b: bnjax.batch_norm({"scale": s, "bias": b}, st, x, False)[0],
                              (jnp.asarray(x), jnp.asarray(params["scale"]), jnp.asarray(params["bias"])),
                              jnp.asarray(dy))
    inv = 1.0 / np.sqrt(stats["var"] + 1e-5)
    assert bnjax.rel_error(dx, dy * params["scale"] * inv) <= 1e-12
    assert bnjax.rel_error(ds, np.sum(dy * (x - stats["mean"]) * inv, axis=(0, 1, 2))) <= 1e-12
    assert bnjax.rel_error(db, np.sum(dy, axis=(0, 1, 2))) <= 1e-12


# ----------------------------------------------------------------------------------------------------
# Gradients in float64: analytic vs autodiff vs finite differences
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 3, 4)])
def test_analytic_vjp_matches_autodiff_and_numeric(x64, shape):
    c = shape[-1]
    params, stats, r = _random_layer(c, seed=11)
    x, dy = 5 * r.randn(*shape) + 12, r.randn(*shape)
    inputs = (jnp.asarray(x), jnp.asarray(params["scale"]), jnp.asarray(params["bias"]))
    st = _jnp(stats)

    def f(grad):
        return lambda x, s, b: bnjax.batch_norm({"scale": s, "bias": b}, st, x, True, grad=grad)[0]

    worst = three_way_errors(f, inputs, dy)
    print(f"batch_norm {shape} rel errors (analytic~autodiff, analytic~numeric): {worst}")
    for name, (e_ad, e_num) in worst.items():
        assert e_ad <= 1e-10, name
        assert e_num <= 1e-7, name


def test_check_grads_on_analytic_path(x64):
    params, stats, r = _random_layer(3, seed=12)
    x = jnp.asarray(r.randn(4, 2, 3) * 2 + 1)
    st = _jnp(stats)

    def f(x, s, b):
        return bnjax.batch_norm({"scale": s, "bias": b}, st, x, True)[0]

    check_grads(jax.jit(f), (x, jnp.asarray(params["scale"]), jnp.asarray(params["bias"])), order=1, modes=("rev",))


def test_axis_name_and_mask_under_vmap(x64):
    # 3 members of 4 rows with 4, 2 and 3 valid rows and statistics synchronised over "b": the running
    # statistics are those of the 9 valid rows (n = 9 in the unbiased estimate) and the VJP equals autodiff.
    params, stats, r = _random_layer(2, seed=13)
    x = r.randn(3, 4, 2) * 3 + 1
    valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], bool)
    dy = r.randn(3, 4, 2)
    st = _jnp(stats)

    def f(grad):
        def member(xb, mb, s, b):
            return bnjax.batch_norm({"scale": s, "bias": b}, st, xb, True, axis_name="b", mask=mb[:, None],
                                    unbiased_var=True, grad=grad)

        return lambda x, s, b: jax.vmap(member, in_axes=(0, 0, None, None), axis_name="b")(x, jnp.asarray(valid), s, b)

    inputs = (jnp.asarray(x), jnp.asarray(params["scale"]), jnp.asarray(params["bias"]))
    zero_st = jax.tree_util.tree_map(lambda a: jnp.zeros((3,) + a.shape), st)
    (y, new), g_an = jit_vjp(f("analytic"), inputs, (jnp.asarray(dy), zero_st))
    (y_ad, _), g_ad = jit_vjp(f("autodiff"), inputs, (jnp.asarray(dy), zero_st))
    rows = x[valid]
    np.testing.assert_allclose(new["mean"][0], 0.9 * stats["mean"] + 0.1 * rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(new["var"][1], 0.9 * stats["var"] + 0.1 * rows.var(0, ddof=1), rtol=1e-12)
    out_ref, _, _, _ = ref.batchnorm_forward(rows, params["scale"], params["bias"],
                                             {"mode": "train", "running_mean": 0.0, "running_var": 1.0})
    np.testing.assert_allclose(np.asarray(y)[valid], out_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y_ad, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_an, g_ad):
        assert bnjax.rel_error(a, b) <= 1e-10


# ----------------------------------------------------------------------------------------------------
# Flax parity (float32)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, axis", [((8, 5), -1), ((2, 3, 3, 4), -1), ((2, 4, 3, 3), 1)])
def test_flax_parity(shape, axis):
    c = shape[axis]
    params, stats, r = _random_layer(c, seed=14, dtype=np.float32)
    x = jnp.asarray(2 * r.randn(*shape) + 1, jnp.float32)
    variables = {"params": _jnp(params), "batch_stats": _jnp(stats)}

    @jax.jit
    def both(variables, x):
        out = {}
        for train in TRAIN_EVAL:
            layer = fnn.BatchNorm(use_running_average=not train, axis=axis, momentum=0.9, epsilon=1e-5,
                                  use_fast_variance=False)
            y_flax, upd = layer.apply(variables, x, mutable=["batch_stats"])
            stats_flax = upd.get("batch_stats", variables["batch_stats"])
            y, new = bnjax.batch_norm(variables["params"], variables["batch_stats"], x, train, axis=axis,
                                      momentum=0.9, eps=1e-5)
            out[train] = (y, y_flax, new, stats_flax)
        return out

    for train, (y, y_flax, new, stats_flax) in both(variables, x).items():
        err = max(float(jnp.max(jnp.abs(y - y_flax))),
                  *(float(jnp.max(jnp.abs(new[k] - stats_flax[k]))) for k in ("mean", "var")))
        print(f"flax BatchNorm parity {shape} axis={axis} train={train}: max abs error {err:.2e}")
        assert y.dtype == y_flax.dtype == jnp.float32
        assert err <= 1e-6
    np.testing.assert_array_equal(both(variables, x)[False][2]["mean"], stats["mean"])  # eval keeps stats


# ----------------------------------------------------------------------------------------------------
# torch parity of unbiased_var=True and of the cumulative average
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 2, 2)])
def test_unbiased_var_matches_torch_rule(shape):
    # NumPy reference of torch's rule, always run. torch is NCHW: the feature axis is 1.
    params, stats, r = _random_layer(shape[1], seed=15, dtype=np.float32)
    x = (3 * r.randn(*shape) + 2).astype(np.float32)
    y, new = bn(_jnp(params), _jnp(stats), jnp.asarray(x), True, axis=1, momentum=0.9, eps=1e-5, unbiased_var=True)
    rm, rv = ref.torch_running_stats(ref.to_last(x, 1), stats["mean"], stats["var"], momentum=0.1)
    np.testing.assert_allclose(new["mean"], rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], rv, rtol=1e-5)
    out_ref, _, _, _ = ref.batchnorm_forward(ref.to_last(x, 1), params["scale"], params["bias"],
                                             {"mode": "train", "running_mean": 0.0, "running_var": 1.0})
    np.testing.assert_allclose(y, ref.from_last(out_ref, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 2, 2)])
def test_unbiased_var_matches_torch(shape):
    torch = pytest.importorskip("torch")
    params, stats, r = _random_layer(shape[1], seed=15, dtype=np.float32)
    x = (3 * r.randn(*shape) + 2).astype(np.float32)
    rm, rv = torch.tensor(stats["mean"]), torch.tensor(stats["var"])
    y_t = torch.nn.functional.batch_norm(torch.tensor(x), rm, rv, torch.tensor(params["scale"]),
                                         torch.tensor(params["bias"]), training=True, momentum=0.1, eps=1e-5)
    y, new = bn(_jnp(params), _jnp(stats), jnp.asarray(x), True, axis=1, momentum=0.9, eps=1e-5, unbiased_var=True)
    err = max(np.max(np.abs(np.asarray(y) - y_t.numpy())), np.max(np.abs(np.asarray(new["mean"]) - rm.numpy())),
              np.max(np.abs(np.asarray(new["var"]) - rv.numpy())))
    print(f"torch batch_norm parity {shape}: max abs error {err:.2e}")
    np.testing.assert_allclose(y, y_t.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new["mean"], rm.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new["var"], rv.numpy(), rtol=1e-6)  # values up to ~10: 1 ulp is ~1e-6


def test_cumulative_matches_torch_momentum_none():
    torch = pytest.importorskip("torch")
    r = np.random.RandomState(17)
    batches = [(2 * r.randn(6, 3) + k).astype(np.float32) for k in range(4)]
    tbn = torch.nn.BatchNorm1d(3, momentum=None, eps=1e-5)
    tbn.train()
    params, stats = bnjax.batch_norm_init(3, average="cumulative")
    with torch.no_grad():
        for xb in batches:
            y_t = tbn(torch.tensor(xb))
            y, stats = bn(params, stats, jnp.asarray(xb), True, average="cumulative", unbiased_var=True)
            np.testing.assert_allclose(y, y_t.numpy(), atol=1e-5)
    np.testing.assert_allclose(stats["mean"], tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], tbn.running_var.numpy(), rtol=1e-5)
    assert int(stats["count"]) == int(tbn.num_batches_tracked) == 4


# ----------------------------------------------------------------------------------------------------
# Running statistics
# ----------------------------------------------------------------------------------------------------


def test_running_stats_closed_form_after_k_steps():
    r = np.random.RandomState(18)
    params, stats0, _ = _random_layer(3, seed=19, dtype=np.float32)
    batches = [(r.randn(5, 3) * (k + 1) + k).astype(np.float64) for k in range(5)]
    step = jax.jit(lambda s, xb: bnjax.batch_norm(_jnp(params), s, xb, True, momentum=0.8)[1])
    stats = _jnp(stats0)
    for xb in batches:
        stats = step(stats, jnp.asarray(xb, jnp.float32))
    xs = [xb.astype(np.float32).astype(np.float64) for xb in batches]
    np.testing.assert_allclose(stats["mean"], ref.ema_closed_form(stats0["mean"], [b.mean(0) for b in xs], 0.8),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["var"], ref.ema_closed_form(stats0["var"], [b.var(0) for b in xs], 0.8),
                               rtol=1e-5)


def test_cumulative_mode_is_mean_of_batch_stats():
    r = np.random.RandomState(20)
    batches = [(r.randn(2, 2, 2, 3) + k).astype(np.float32) for k in range(3)]
    params, stats = bnjax.batch_norm_init(3, average="cumulative")
    assert stats["count"].shape == () and stats["count"].dtype == jnp.int32
    for xb in batches:
        _, stats = bn(params, stats, jnp.asarray(xb), True, average="cumulative")
    flat = [b.reshape(-1, 3).astype(np.float64) for b in batches]
    np.testing.assert_allclose(stats["mean"], np.mean([b.mean(0) for b in flat], 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], np.mean([b.var(0) for b in flat], 0), rtol=1e-5)
    assert int(stats["count"]) == 3


@pytest.mark.parametrize("momentum", [0.9, 0.99, 1.0])
def test_debiased_mode_is_zero_debiased_ema(momentum):
    # Closed form: H_t = m H_{t-1} + (1-m) b_t from H_0 = 0, reported as H_t / (1 - m**t); m = 1 is the
    # limit, the plain mean of the batch statistics.
    r = np.random.RandomState(22)
    batches = [(0.1 * r.randn(8, 3) + 0.05 * k).astype(np.float32) for k in range(5)]
    params, stats = bnjax.batch_norm_init(3, average="debiased")
    for xb in batches:
        _, stats = bn(params, stats, jnp.asarray(xb), True, average="debiased", momentum=momentum)
    for key, f in (("mean", lambda b: b.mean(0)), ("var", lambda b: b.var(0))):
        vals = [f(b.astype(np.float64)) for b in batches]
        if momentum == 1.0:
            want = np.mean(vals, 0)
        else:
            h = np.zeros(3)
            for v in vals:
                h = momentum * h + (1 - momentum) * v
            want = h / (1 - momentum ** len(vals))
        np.testing.assert_allclose(stats[key], want, rtol=2e-5, atol=1e-7)
    assert int(stats["count"]) == 5
    # Unlike the plain EMA from var = 1, the first debiased update is the batch itself.
    _, first = bn(params, bnjax.batch_norm_init(3, average="debiased")[1], jnp.asarray(batches[0]), True,
                  average="debiased")
    np.testing.assert_allclose(first["var"], batches[0].astype(np.float64).var(0), rtol=1e-5)


def test_eval_mode_keeps_stats_and_uses_them():
    params, stats, r = _random_layer(4, seed=21, dtype=np.float32)
    st = _jnp(stats)
    x = jnp.asarray(r.randn(1, 4), jnp.float32)  # batch of one is fine in eval mode
    y, new = bnjax.batch_norm(_jnp(params), st, x, False)
    assert new is st
    want = params["scale"] * (np.asarray(x, np.float64) - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) + params["bias"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_eval_mode_takes_a_single_example_and_stats_with_a_count():
    # Eval is a per-feature affine map: a (C,) input works as in Flax, and counted statistics
    # (average="cumulative"/"debiased") need no average= argument, since eval never reads it.
    params, stats, r = _random_layer(4, seed=27, dtype=np.float32)
    x = r.randn(4).astype(np.float32)
    want = params["scale"] * (x.astype(np.float64) - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) + params["bias"]
    counted = dict(_jnp(stats), count=jnp.asarray(3, jnp.int32))
    for st in (_jnp(stats), counted):
        y, new = bnjax.batch_norm(_jnp(params), st, jnp.asarray(x), False)
        assert new is st and y.shape == (4,)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
        y2, _ = bnjax.batch_norm(_jnp(params), st, jnp.asarray(x)[None], False, average="cumulative")
        np.testing.assert_allclose(y2[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad", ["analytic", "autodiff"])
def test_mask_with_nan_and_inf_filler_equals_the_valid_rows(x64, grad):
    # Padding rows hold NaN/inf: output, running statistics (n = valid rows in the unbiased estimate) and
    # every gradient equal batch norm of the valid rows alone (NumPy reference), and the padding's own
    # cotangent is exactly 0. The loss reads the valid outputs only (jnp.where, as a masked loss should).
    params, stats, r = _random_layer(3, seed=28)
    x, dy = 4 * r.randn(8, 2, 3) + 1, r.randn(8, 2, 3)
    valid = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
    x_f = x.copy()
    x_f[~valid] = np.nan
    x_f[1, 0, 1], x_f[4, 1, 2] = np.inf, -np.inf
    m = jnp.asarray(valid[:, None, None])

    def loss(x, s, b):
        y, new = bnjax.batch_norm({"scale": s, "bias": b}, _jnp(stats), x, True, mask=m, momentum=0.7,
                                  unbiased_var=True, grad=grad)
        return jnp.sum(jnp.where(m, y * jnp.asarray(dy), 0.0)), (y, new)

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, (y, new)), (dx, ds, db) = f(jnp.asarray(x_f), jnp.asarray(params["scale"]), jnp.asarray(params["bias"]))
    bn_param = {"mode": "train", "momentum": 0.7, "eps": 1e-5, "unbiased": True,
                "running_mean": stats["mean"], "running_var": stats["var"]}
    y_ref, cache, rm, rv = ref.batchnorm_forward(x[valid], params["scale"], params["bias"], bn_param)
    np.testing.assert_allclose(np.asarray(y)[valid], y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new["mean"], rm, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(new["var"], rv, rtol=1e-12)
    dx_ref, ds_ref, db_ref = ref.batchnorm_backward(dy[valid], cache)
    assert np.all(np.asarray(dx)[~valid] == 0.0)
    assert bnjax.rel_error(np.asarray(dx)[valid], dx_ref) <= 1e-10
    assert bnjax.rel_error(ds, ds_ref) <= 1e-10 and bnjax.rel_error(db, db_ref) <= 1e-10


def test_init_layout():
    params, stats = bnjax.batch_norm_init(6)
    assert set(params) == {"scale", "bias"} and set(stats) == {"mean", "var"}
    for a, v in ((params["scale"], 1), (params["bias"], 0), (stats["mean"], 0), (stats["var"], 1)):
        assert a.shape == (6,) and a.dtype == jnp.float32
        np.testing.assert_array_equal(a, v)


# ----------------------------------------------------------------------------------------------------
# Transformations: jit, vmap ensembles, grad of grad, forward mode on the autodiff path
# ----------------------------------------------------------------------------------------------------


def test_jit_equals_eager():
    params, stats, r = _random_layer(4, seed=22, dtype=np.float32)
    x = jnp.asarray(r.randn(2, 3, 3, 4), jnp.float32)
    for train in TRAIN_EVAL:
        eager = bnjax.batch_norm(_jnp(params), _jnp(stats), x, train)
        jitted = bn(_jnp(params), _jnp(stats), x, train)
        for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_vmap_ensemble_with_traced_momentum_equals_loop():
    k, c = 3, 4
    r = np.random.RandomState(23)
    params = {"scale": jnp.asarray(r.randn(k, c), jnp.float32), "bias": jnp.asarray(r.randn(k, c), jnp.float32)}
    stats = {"mean": jnp.asarray(r.randn(k, c), jnp.float32), "var": jnp.asarray(r.rand(k, c) + 0.5, jnp.float32)}
    x = jnp.asarray(r.randn(k, 6, c), jnp.float32)
    momentum = jnp.asarray([0.5, 0.9, 0.99], jnp.float32)

    def member(p, s, xb, m):
        return bnjax.batch_norm(p, s, xb, True, momentum=m)

    y, new = jax.jit(jax.vmap(member))(params, stats, x, momentum)
    for i in range(k):
        pick = lambda t: jax.tree_util.tree_map(lambda a: a[i], t)  # noqa: E731
        y_i, new_i = jax.jit(member)(pick(params), pick(stats), x[i], momentum[i])
        np.testing.assert_allclose(y[i], y_i, rtol=1e-5, atol=1e-5)
        for key in ("mean", "var"):
            np.testing.assert_allclose(new[key][i], new_i[key], rtol=1e-5, atol=1e-6)


def _loss(grad, x, w, scale, bias, stats):
    y = bnjax.batch_norm({"scale": scale, "bias": bias}, stats, x, True, grad=grad)[0]
    return jnp.sum(jnp.sin(y) * w)


def test_grad_of_grad_through_custom_vjp(x64):
    params, stats, r = _random_layer(3, seed=24)
    x, w = jnp.asarray(r.randn(5, 3) * 2 + 1), jnp.asarray(r.randn(5, 3))
    args = (w, jnp.asarray(params["scale"]), jnp.asarray(params["bias"]), _jnp(stats))

    def outer(grad):
        inner = lambda x: jax.grad(_loss, argnums=1)(grad, x, *args)  # noqa: E731
        return jax.jit(jax.grad(lambda x: jnp.sum(inner(x) ** 2)))

    g_an, g_ad = outer("analytic")(x), outer("autodiff")(x)
    assert bnjax.rel_error(g_an, g_ad) <= 1e-10
    assert float(jnp.max(jnp.abs(g_an))) > 1e-3  # a non-trivial second derivative


def test_autodiff_path_supports_forward_mode(x64):
    params, stats, r = _random_layer(2, seed=25)
    x, w = jnp.asarray(r.randn(3, 2) * 2 + 1), jnp.asarray(r.randn(3, 2))
    args = (w, jnp.asarray(params["scale"]), jnp.asarray(params["bias"]), _jnp(stats))
    f_ad = lambda x: _loss("autodiff", x, *args)  # noqa: E731
    f_an = lambda x: _loss("analytic", x, *args)  # noqa: E731

    @jax.jit
    def derivatives(x, t):
        _, tangent = jax.jvp(f_ad, (x,), (t,))
        return tangent, jnp.sum(jax.grad(f_an)(x) * t), jax.hessian(f_ad)(x), jax.jacrev(jax.jacrev(f_an))(x)

    tangent, directional, h, h_an = derivatives(x, jnp.asarray(r.randn(3, 2)))
    assert abs(float(tangent - directional)) <= 1e-10 * max(1.0, abs(float(tangent)))
    h, h_an = h.reshape(6, 6), h_an.reshape(6, 6)
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(h, h.T, rtol=1e-10, atol=1e-12)
    assert bnjax.rel_error(h, h_an) <= 1e-9


def test_hessian_works_with_the_default_analytic_path(x64):
    # jax.hessian is forward-over-reverse: the forward pass differentiates the custom VJP's (plain JAX)
    # backward, so the default needs no grad="autodiff". Checked against the autodiff path.
    params, stats, r = _random_layer(2, seed=29)
    x, w = jnp.asarray(r.randn(3, 2) * 2 + 1), jnp.asarray(r.randn(3, 2))
    args = (w, jnp.asarray(params["scale"]), jnp.asarray(params["bias"]), _jnp(stats))
    h_an, h_ad = jax.jit(lambda x: [jax.hessian(lambda x: _loss(g, x, *args))(x) for g in ("analytic", "autodiff")])(x)
    assert float(jnp.max(jnp.abs(h_ad))) > 1e-3
    assert bnjax.rel_error(h_an, h_ad) <= 1e-9


def test_forward_mode_on_the_analytic_path_says_to_use_autodiff():
    params, stats = bnjax.batch_norm_init(3)
    x = jnp.asarray(np.random.RandomState(30).randn(4, 3), jnp.float32)
    f = lambda x: bnjax.batch_norm(params, stats, x, True)[0]  # noqa: E731
    for transform in (lambda: jax.jvp(f, (x,), (x,)), lambda: jax.jacfwd(f)(x)):
        msg = _raises(TypeError, r"forward-mode.*grad=\"autodiff\".*hessian work with the default", transform)
        assert "custom_vjp" in msg


# ----------------------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------------------


def test_large_offset_float32_output_std_is_one():
    x = jnp.asarray(1e4 + np.random.RandomState(26).randn(512, 4), jnp.float32)
    params, stats = bnjax.batch_norm_init(4)
    y, _ = bn(params, stats, x, True)
    std = np.asarray(y, np.float64).std(0)
    assert np.max(np.abs(std - 1)) <= 1e-3
    # Why the two-pass variance: Flax's default one-pass E[x^2] - E[x]^2 loses every digit here.
    variables = {"params": params, "batch_stats": stats}
    flax_default = fnn.BatchNorm(use_running_average=False, momentum=0.9)
    y_fast, _ = jax.jit(lambda v, x: flax_default.apply(v, x, mutable=["batch_stats"]))(variables, x)
    std_fast = np.asarray(y_fast, np.float64).std(0)
    print(f"output std: bnjax {std}, flax use_fast_variance=True {std_fast}")
    assert np.max(np.abs(std_fast - 1)) > 100 * np.max(np.abs(std - 1))
    assert np.max(np.abs(std_fast - 1)) > 0.1


def test_bfloat16_input_gives_bfloat16_output_and_float32_stats():
    r = np.random.RandomState(27)
    x = jnp.asarray(r.randn(16, 2, 2, 3) * 4 + 3, jnp.bfloat16)
    params, stats = bnjax.batch_norm_init(3)
    y, new = bn(params, stats, x, True)
    assert y.dtype == jnp.bfloat16 and new["mean"].dtype == new["var"].dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    y32, new32 = bn(params, stats, x.astype(jnp.float32), True)
    np.testing.assert_allclose(np.asarray(y, np.float32), y32, atol=3e-2)
    np.testing.assert_allclose(new["var"], new32["var"], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Bad input: each error names the argument, the value and the fix
# ----------------------------------------------------------------------------------------------------


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert_reads_well(str(info.value))
    return str(info.value)


def test_errors():
    params, stats = bnjax.batch_norm_init(5)
    x = jnp.ones((4, 5))
    _raises(ValueError, r"params\['scale'\] has shape \(3,\), expected \(5,\).*5 features.*batch_norm_init\(5\)",
            bnjax.batch_norm, bnjax.batch_norm_init(3)[0], stats, x, True)
    _raises(ValueError, r"x of shape \(5,\), i.e. 1 value per feature.*axis_name=.*train=False", bnjax.batch_norm,
            params, stats, jnp.ones(5), True)
    _raises(ValueError, r"1 value per feature.*batch of at least 2.*train=False", bnjax.batch_norm, params, stats,
            jnp.ones((1, 5)), True)
    _raises(ValueError, r"average='emma' is not a valid option.*'ema', 'cumulative'", bnjax.batch_norm, params, stats,
            x, True, average="emma")
    _raises(ValueError, r"average='mean'.*'ema', 'cumulative'", bnjax.batch_norm_init, 5, average="mean")
    _raises(ValueError, r"grad='manual' is not a valid option.*'analytic', 'autodiff'", bnjax.batch_norm, params,
            stats, x, True, grad="manual")
    _raises(ValueError, r"momentum=1.5 is outside \[0.0, 1.0\]", bnjax.batch_norm, params, stats, x, True, momentum=1.5)
    _raises(ValueError, r"batch_stats has keys \['mean'\].*\(missing \['var'\]\).*batch_norm_init\(5, average='ema'\)",
            bnjax.batch_norm, params, {"mean": stats["mean"]}, x, True)
    _raises(ValueError, r"batch_stats has keys.*\(missing \['count'\]\).*average='cumulative'",
            bnjax.batch_norm, params, stats, x, True, average="cumulative")
    _raises(ValueError, r"batch_stats\['var'\] has shape \(5, 1\), expected \(5,\)", bnjax.batch_norm, params,
            {"mean": stats["mean"], "var": jnp.ones((5, 1))}, x, True)
    _raises(TypeError, r"batch_stats must be a dict", bnjax.batch_norm, params, [1, 2], x, True)
    _raises(TypeError, r"x has dtype int32.*floating-point.*astype\(jnp.float32\)", bnjax.batch_norm, params, stats,
            jnp.ones((4, 5), jnp.int32), True)
    _raises(ValueError, r"axis=2 is out of range for an input of rank 2", bnjax.batch_norm, params, stats, x, True,
            axis=2)
    _raises(ValueError, r"num_features=0 must be a positive int", bnjax.batch_norm_init, 0)
