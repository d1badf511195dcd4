"""Convolution, pooling, flatten and the 4-D normalization layers: torch/Flax/NumPy references, gradients, a CNN."""

import importlib.util
from pathlib import Path

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
from reference import assert_reads_well

REPO = Path(__file__).resolve().parents[1]


def _same_pads(size, k, stride, dilation):
    """TensorFlow's SAME padding, written out: output ceil(size / stride), the odd pixel on the high side."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _pads(padding, xshape, kshape, stride, dilation):
    r = len(kshape)
    if padding == "SAME":
        return [_same_pads(xshape[1 + i], kshape[i], stride, dilation) for i in range(r)]
    if padding == "VALID":
        return [(0, 0)] * r
    if isinstance(padding, int):
        return [(padding, padding)] * r
    return [tuple(p) for p in padding]


def _np_conv(x, w, b, stride, padding, dilation):
    """CS231n's naive convolution in float64, generalised to 1-D/2-D, stride and dilation: for every output
    position, the (dilated) input window dotted with the kernel."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    r = w.ndim - 2
    pads = _pads(padding, x.shape, w.shape[:r], stride, dilation)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    eff = [(k - 1) * dilation + 1 for k in w.shape[:r]]
    out = [(xp.shape[1 + i] - eff[i]) // stride + 1 for i in range(r)]
    y = np.zeros((x.shape[0], *out, w.shape[-1]))
    for pos in np.ndindex(*out):
        window = xp[(slice(None), *(slice(p * stride, p * stride + e, dilation) for p, e in zip(pos, eff)))]
        y[(slice(None), *pos)] = window.reshape(x.shape[0], -1) @ w.reshape(-1, w.shape[-1])
    return y + np.asarray(b, np.float64)


def _torch_conv(torch, x, w, b, stride, padding, dilation):
    """torch's conv1d/conv2d on NC... transposes of the channels-last input and the HWIO weight."""
    F = torch.nn.functional
    x, w = np.asarray(x), np.asarray(w)
    r = w.ndim - 2
    pads = _pads(padding, x.shape, w.shape[:r], stride, dilation)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    xt = F.pad(xt, [p for lo_hi in reversed(pads) for p in lo_hi])  # F.pad lists the last axis first
    wt = torch.from_numpy(np.moveaxis(w, (-1, -2), (0, 1)).copy())  # (*k, I, O) -> (O, I, *k)
    conv = F.conv2d if r == 2 else F.conv1d
    y = conv(xt, wt, torch.from_numpy(np.asarray(b)), stride=stride, dilation=dilation)
    return np.moveaxis(y.numpy(), 1, -1)


def _run_conv(x, w, b, stride, padding, dilation, impl):
    # precision="highest": float32 results are compared with float64 and torch references at 1e-5, which the
    # TF32 of JAX's default precision on NVIDIA GPUs (about 1e-3 relative) would miss.
    f = jax.jit(lambda p, x: bnjax.conv(p, {}, x, True, stride=stride, padding=padding, dilation=dilation,
                                        impl=impl, precision="highest"))
    return f({"weight": jnp.asarray(w), "bias": jnp.asarray(b)}, jnp.asarray(x))


CASES = [  # x shape, kernel, C_out, stride, padding, dilation, dtype
    ((2, 7, 6, 3), (3, 3), 4, 1, "SAME", 1, np.float32),
    ((2, 7, 6, 3), (3, 3), 4, 1, "SAME", 1, np.float64),
    ((2, 8, 7, 3), (3, 2), 5, 2, "SAME", 1, np.float64),
    ((3, 9, 9, 2), (3, 3), 4, 2, "VALID", 1, np.float32),
    ((2, 6, 7, 3), (3, 3), 2, 1, 1, 2, np.float64),
    ((2, 6, 6, 2), (2, 3), 3, 1, ((1, 0), (2, 1)), 1, np.float32),
    ((3, 11, 4), (5,), 6, 2, "SAME", 1, np.float64),  # 1-D
]


def _case(xshape, k, cout, dtype, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(*xshape).astype(dtype), rng.randn(*k, xshape[-1], cout).astype(dtype),
            rng.randn(cout).astype(dtype))


@pytest.mark.parametrize("xshape,k,cout,stride,padding,dilation,dtype", CASES)
def test_conv_matches_numpy(xshape, k, cout, stride, padding, dilation, dtype):
    x, w, b = _case(xshape, k, cout, dtype)
    expected = _np_conv(x, w, b, stride, padding, dilation)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    with jax.enable_x64(dtype == np.float64):
        for impl in ("xla", "patches"):
            y, stats = _run_conv(x, w, b, stride, padding, dilation, impl)
            assert stats == {} and y.dtype == dtype and y.shape == expected.shape
            np.testing.assert_allclose(y, expected, rtol=tol, atol=tol, err_msg=impl)


@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[4], CASES[6]])
def test_conv_matches_torch(case):
    torch = pytest.importorskip("torch")
    xshape, k, cout, stride, padding, dilation, dtype = case
    x, w, b = _case(xshape, k, cout, dtype, seed=1)
    expected = _torch_conv(torch, x, w, b, stride, padding, dilation)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    with jax.enable_x64(dtype == np.float64):
        for impl in ("xla", "patches"):
            y, _ = _run_conv(x, w, b, stride, padding, dilation, impl)
            np.testing.assert_allclose(y, expected, rtol=tol, atol=tol, err_msg=impl)


def test_conv_weights_are_flax_conv_kernels(key):
    """Flax's Conv with the same (HWIO) kernel gives the same output: weights move between the two unchanged."""
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(2, 9, 8, 3), jnp.float32)
    layer = bnjax.Conv(3, 5, (3, 3), stride=2, precision="highest")  # both in float32, not TF32 on a GPU
    params, _ = layer.init(key)
    params["bias"] = jnp.asarray(rng.randn(5), jnp.float32)
    module = fnn.Conv(5, (3, 3), strides=2, padding="SAME", precision="highest")
    assert jax.tree.map(jnp.shape, jax.eval_shape(module.init, key, x)["params"]) == {
        "kernel": (3, 3, 3, 5), "bias": (5,)}
    y_flax = jax.jit(module.apply)({"params": {"kernel": params["weight"], "bias": params["bias"]}}, x)
    y, _ = layer.apply(params, {}, x, False)
    np.testing.assert_allclose(y, y_flax, rtol=1e-5, atol=1e-5)


def _conv_vjp(impl, x, w, b, dy, **kw):
    def f(x, w, b):
        return bnjax.conv({"weight": w, "bias": b}, {}, x, True, **kw, impl=impl)[0]

    grads = jax.jit(lambda *a: jax.vjp(f, *a[:3])[1](a[3]))(*(jnp.asarray(v) for v in (x, w, b, dy)))
    return f, grads


def _grad_case():
    rng = np.random.RandomState(2)
    x, w, b = rng.randn(2, 5, 4, 3), rng.randn(3, 3, 3, 2), rng.randn(2)
    return x, w, b, rng.randn(2, 3, 2, 2)  # dy: stride 2, SAME -> ceil(5/2) x ceil(4/2)


@pytest.mark.parametrize("impl", ["xla", "patches"])
def test_conv_gradients_match_finite_differences(x64, impl):
    x, w, b, dy = _grad_case()
    f, grads = _conv_vjp(impl, x, w, b, dy, stride=2, padding="SAME")
    fj = jax.jit(f)
    for i, a in enumerate((x, w, b)):
        def fi(z, i=i):
            args = [jnp.asarray(v) for v in (x, w, b)]
            args[i] = jnp.asarray(z)
            return np.asarray(fj(*args))

        assert bnjax.rel_error(grads[i], bnjax.numeric_vjp(fi, a, dy)) < 1e-7


def test_conv_gradients_match_torch_autograd(x64):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b, dy = _grad_case()
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    pads = [_same_pads(x.shape[1 + i], w.shape[i], 2, 1) for i in range(2)]
    yt = F.conv2d(F.pad(xt.permute(0, 3, 1, 2), [*pads[1], *pads[0]]), wt.permute(3, 2, 0, 1), bt, stride=2)
    yt.backward(torch.from_numpy(np.moveaxis(dy, -1, 1).copy()))
    for impl in ("xla", "patches"):
        _, grads = _conv_vjp(impl, x, w, b, dy, stride=2, padding="SAME")
        for g, t in zip(grads, (xt, wt, bt)):
            assert bnjax.rel_error(g, t.grad.numpy()) < 1e-10, impl


def test_conv_init_scales_and_options(key):
    p, s = jax.jit(lambda k: bnjax.conv_init(k, 32, 64, 3))(key)
    assert s == {} and p["weight"].shape == (3, 3, 32, 64) and p["weight"].dtype == jnp.float32
    np.testing.assert_array_equal(p["bias"], np.zeros(64))
    # He: N(0, 2 / fan_in), fan_in = 3*3*32; 18432 draws put the sample std within 3% of the target.
    assert abs(np.std(p["weight"]) / np.sqrt(2 / (9 * 32)) - 1) < 0.03
    p = jax.jit(lambda k: bnjax.conv_init(k, 32, 64, (3, 3), init="glorot", use_bias=False)[0])(key)
    assert set(p) == {"weight"} and abs(np.std(p["weight"]) / np.sqrt(2 / (9 * 96)) - 1) < 0.03
    p = jax.jit(lambda k: bnjax.conv_init(k, 4, 8, (5,), init="normal", weight_scale=0.5, dtype=jnp.bfloat16)[0])(key)
    assert p["weight"].shape == (5, 4, 8) and p["weight"].dtype == jnp.bfloat16
    assert abs(np.std(np.asarray(p["weight"], np.float32)) / 0.5 - 1) < 0.2


_W = {"weight": np.zeros((3, 3, 3, 4), np.float32)}  # a 3x3 kernel, 3 -> 4 channels


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda k: bnjax.conv_init(k, 3, 4, (3, 3, 3, 3)), ValueError, r"kernel_size=\(3, 3, 3, 3\)"),
        (lambda k: bnjax.conv_init(k, 0, 4, 3), ValueError, "in_channels=0 must be a positive int"),
        (lambda k: bnjax.conv_init(k, 3, 4, 3, init="kaiming"), ValueError, "init='kaiming'"),
        (lambda k: bnjax.Conv(3, 4, 3, stride=0), ValueError, "stride=0"),
        (lambda k: bnjax.Conv(3, 4, 3, padding="FULL"), ValueError, "padding='FULL'"),
        (lambda k: bnjax.Conv(3, 4, 3, impl="cudnn"), ValueError, "impl='cudnn'"),
        (lambda k: bnjax.Conv(3, 4, 3, weight_scal=1.0), TypeError, r"unknown init options \['weight_scal'\]"),
        (lambda k: bnjax.conv(_W, {}, jnp.ones((2, 5, 5, 2)), True), ValueError,
         "x has 2 channels"),
        (lambda k: bnjax.conv(_W, {}, jnp.ones((5, 5, 3)), True), ValueError,
         r"rank 3\), but params\['weight'\] has shape \(3, 3, 3, 4\)"),
        (lambda k: bnjax.conv(_W, {}, jnp.ones((1, 5, 5, 3)), True, padding=[(1, 1)]),
         ValueError, "not valid for 2 spatial axes"),
        (lambda k: bnjax.max_pool(jnp.ones((2, 3, 3, 1)), 4), ValueError, "window=4 is larger"),
        (lambda k: bnjax.max_pool(jnp.ones((2, 3)), 2), ValueError, "at least one spatial axis"),
        (lambda k: bnjax.MaxPool((2, 2), stride=(1, 1, 1)), ValueError, "stride=\\(1, 1, 1\\)"),
        (lambda k: bnjax.GroupNorm(12, num_groups=5), ValueError, "num_groups=5 does not divide the 12 channels"),
        (lambda k: bnjax.GroupNorm(0), ValueError, "num_channels=0 must be a positive int"),
    ],
)
def test_errors_name_the_argument(key, call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call(key)
    assert_reads_well(str(info.value))


def _np_pool(x, window, stride, pads, op, count_include_pad=True):
    """NumPy loop over output positions of a 2-D pool (x: N, H, W, C); padded cells hold NaN."""
    (wh, ww), (sh, sw) = window, stride
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)), constant_values=np.nan)
    oh, ow = (xp.shape[1] - wh) // sh + 1, (xp.shape[2] - ww) // sw + 1
    out = np.empty((x.shape[0], oh, ow, x.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * sh:i * sh + wh, j * sw:j * sw + ww]
            if op == "max":
                out[:, i, j] = np.nanmax(win, axis=(1, 2))
            else:
                n = wh * ww if count_include_pad else np.sum(~np.isnan(win), axis=(1, 2))
                out[:, i, j] = np.nansum(win, axis=(1, 2)) / n
    return out


@pytest.mark.parametrize(
    "window,stride,padding,pads",
    [
        (2, None, "VALID", ((0, 0), (0, 0))),
        ((3, 2), (2, 1), "VALID", ((0, 0), (0, 0))),
        (3, 2, "SAME", ((1, 1), (1, 1))),  # 7 -> ceil(7/2) = 4 needs 1 + 1
        (2, 1, ((1, 0), (0, 1)), ((1, 0), (0, 1))),
    ],
)
def test_pools_match_numpy(window, stride, padding, pads):
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.randn(2, 7, 7, 3) - 1.0, jnp.float32)  # mostly negative: a zero pad would win a max
    w2 = (window, window) if isinstance(window, int) else window
    s2 = w2 if stride is None else (stride, stride) if isinstance(stride, int) else stride
    np.testing.assert_allclose(bnjax.max_pool(x, window, stride, padding), _np_pool(x, w2, s2, pads, "max"),
                               rtol=1e-6)
    for cip in (True, False):
        np.testing.assert_allclose(
            bnjax.avg_pool(x, window, stride, padding, count_include_pad=cip),
            _np_pool(x, w2, s2, pads, "avg", cip), rtol=1e-5, atol=1e-6,
        )


def _pool_vjp(pool, x, dy):
    # Under jit: reduce_window's gradient needs the pooling init value to stay concrete while traced.
    return jax.jit(lambda z, ct: jax.vjp(lambda u: pool(u, 2), z)[1](ct)[0])(jnp.asarray(x), jnp.asarray(dy))


def test_pool_gradients_match_finite_differences(x64):
    rng = np.random.RandomState(4)
    x, dy = rng.randn(2, 6, 5, 3), rng.randn(2, 3, 2, 3)  # distinct values: each window has one maximum
    for pool in (bnjax.max_pool, bnjax.avg_pool):
        fj = jax.jit(lambda z, pool=pool: pool(z, 2))
        numeric = bnjax.numeric_vjp(lambda z: np.asarray(fj(jnp.asarray(z))), x, dy)
        assert bnjax.rel_error(_pool_vjp(pool, x, dy), numeric) < 1e-7


def test_pool_gradients_match_torch(x64):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.RandomState(4)
    x, dy = rng.randn(2, 6, 5, 3), rng.randn(2, 3, 2, 3)
    xt = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)
    dyt = torch.from_numpy(np.moveaxis(dy, -1, 1).copy())
    for ours, theirs in ((bnjax.max_pool, F.max_pool2d), (bnjax.avg_pool, F.avg_pool2d)):
        xt.grad = None
        theirs(xt, 2).backward(dyt)
        assert bnjax.rel_error(_pool_vjp(ours, x, dy), np.moveaxis(xt.grad.numpy(), 1, -1)) < 1e-12


def test_flatten_and_global_avg_pool():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(bnjax.flatten(x), x.reshape(2, 60))
    np.testing.assert_allclose(bnjax.global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-6)
    layer = bnjax.Flatten()
    assert layer.init(None) == ({}, {})
    stats = {"kept": jnp.zeros(1)}
    y, s = layer.apply({}, stats, x, True)
    assert y.shape == (2, 60) and s is stats
    assert bnjax.GlobalAvgPool().apply({}, {}, x, False)[0].shape == (2, 5)


def test_batch_norm_layer_normalises_nhwc_per_channel(key):
    rng = np.random.RandomState(5)
    x = (3 * rng.randn(4, 5, 6, 3) + 2).astype(np.float32)
    layer = bnjax.BatchNorm(3, momentum=0.5)
    params, stats = layer.init(key)
    y, new = layer.apply(params, stats, jnp.asarray(x), True)
    xd = x.astype(np.float64)
    mean, var = xd.mean(axis=(0, 1, 2)), xd.var(axis=(0, 1, 2))  # torch BatchNorm2d's axes
    np.testing.assert_allclose(y, (xd - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["mean"], 0.5 * 0 + 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.5 * 1 + 0.5 * var, rtol=1e-5)


def test_group_norm_layer_matches_numpy(key):
    rng = np.random.RandomState(6)
    x = (2 * rng.randn(3, 4, 5, 8) + 1).astype(np.float32)
    layer = bnjax.GroupNorm(8, num_groups=2)
    params, stats = layer.init(key)
    assert stats == {} and params["scale"].shape == (8,)
    params = {"scale": jnp.asarray(rng.randn(8), jnp.float32), "bias": jnp.asarray(rng.randn(8), jnp.float32)}
    y, s = layer.apply(params, {}, jnp.asarray(x), True)
    xg = x.astype(np.float64).reshape(3, 4, 5, 2, 4)
    xhat = ((xg - xg.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(xg.var(axis=(1, 2, 4), keepdims=True) + 1e-5))
    expected = xhat.reshape(x.shape) * np.asarray(params["scale"]) + np.asarray(params["bias"])
    assert s == {}
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _cnn():
    return bnjax.serial(
        bnjax.Conv(1, 4, 3, use_bias=False),
        bnjax.BatchNorm(4),
        bnjax.Activation(jax.nn.relu),
        bnjax.MaxPool(2),
        bnjax.Conv(4, 8, 3, use_bias=False),
        bnjax.GroupNorm(8, num_groups=2),
        bnjax.Activation(jax.nn.relu),
        bnjax.Flatten(),
        bnjax.Dense(4 * 4 * 8, 10),
    )


def test_serial_cnn_train_eval_jit_vmap(key):
    model = _cnn()
    params, stats = jax.jit(model.init)(key)  # jitted: one compilation instead of one per eager op
    assert set(params) == {"conv_0", "bn_0", "conv_1", "gn_0", "dense_0"} and set(stats) == {"bn_0"}
    assert params["conv_1"]["weight"].shape == (3, 3, 4, 8) and "bias" not in params["conv_1"]
    x = jnp.asarray(np.random.RandomState(7).rand(6, 8, 8, 1), jnp.float32)
    apply = jax.jit(model.apply, static_argnums=3)
    y, new = apply(params, stats, x, True)
    assert y.shape == (6, 10) and bool(jnp.all(jnp.isfinite(y)))
    assert set(new) == {"bn_0"} and not np.allclose(new["bn_0"]["mean"], stats["bn_0"]["mean"])  # train moved it
    y_eval, same = apply(params, new, x, False)
    jax.tree.map(np.testing.assert_array_equal, same, new)  # eval mode leaves the statistics as they were
    assert not np.allclose(y_eval, y)
    # An ensemble of 3 members vmapped over params/stats equals a loop over the members.
    ps, ss = jax.tree.map(lambda *a: jnp.stack(a), *[jax.jit(model.init)(k) for k in jax.random.split(key, 3)])
    ys, news = jax.jit(jax.vmap(lambda p, s: model.apply(p, s, x, True)))(ps, ss)
    for i in range(3):
        yi, ni = apply(*jax.tree.map(lambda a: a[i], (ps, ss)), x, True)
        np.testing.assert_allclose(ys[i], yi, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(news["bn_0"]["var"][i], ni["bn_0"]["var"], rtol=1e-5)
    # Gradients flow to every parameter.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, stats, x, True)[0] ** 2)))(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def _load_example():
    spec = importlib.util.spec_from_file_location("cnn_fashion", REPO / "experiments" / "cnn_fashion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("norm,input_shape", [("batch", (784,)), ("group", (28, 28)), ("none", (28, 28, 1))])
def test_cnn_fashion_factory(key, norm, input_shape):
    model = _load_example().cnn(input_shape=input_shape, num_classes=10, norm=norm, channels=(4, 8), groups=2)
    # Shapes only (traced, not compiled): the serial CNN test above checks the numbers of such a model.
    params, stats = jax.eval_shape(model.init, key)
    x = jax.ShapeDtypeStruct((5, *input_shape), jnp.float32)
    y, new = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, True, key=key), params, stats, x)
    assert y.shape == (5, 10)
    assert (set(new) == {"bn_0", "bn_1"}) if norm == "batch" else new == {}
    first = params["conv_0"]
    assert first["weight"].shape == (3, 3, 1, 4) and ("bias" in first) == (norm == "none")


def test_cnn_fashion_factory_errors():
    cnn = _load_example().cnn
    with pytest.raises(ValueError, match="norm='layer'") as info:
        cnn(input_shape=(784,), num_classes=10, norm="layer")
    assert_reads_well(str(info.value))
    with pytest.raises(ValueError, match=r"input_shape=\(10,\)") as info:
        cnn(input_shape=(10,), num_classes=10)
    assert_reads_well(str(info.value))


def _fabricated(train_acc, val_acc, diverged=(-1, -1, -1)):
    from bnjax.run.results import StudyResults, VariantResult

    variants = {}
    for name in ("batchnorm", "groupnorm", "none"):
        hist = {"train_acc": np.array([[0.1, a] for a in train_acc[name]]),
                "val_acc": np.array([[0.1, a] for a in val_acc[name]])}
        variants[name] = VariantResult(
            name=name, members=[{"seed": s} for s in range(3)], axes=(), history=hist,
            loss_history=np.zeros((3, 0)), diverged_step=np.array(diverged if name == "none" else (-1, -1, -1)),
        )
    return StudyResults(run_dir=Path("."), config=None, variants=variants)


def test_cnn_fashion_claims_follow_the_numbers():
    analyze = _load_example().analyze
    good = {"batchnorm": [0.86, 0.87, 0.86], "groupnorm": [0.86, 0.85, 0.86], "none": [0.84, 0.85, 0.84]}
    val = {k: [0.8, 0.81, 0.82] for k in good}
    assert [c.passed for c in analyze(_fabricated(good, val))] == [True, True]
    low_val = dict(val, groupnorm=[0.8, 0.7, 0.8])
    worse_bn = dict(good, batchnorm=[0.83, 0.84, 0.84])
    assert [c.passed for c in analyze(_fabricated(worse_bn, low_val))] == [False, False]
    assert [c.passed for c in analyze(_fabricated(good, val, diverged=(-1, 40, -1)))] == [False, True]
