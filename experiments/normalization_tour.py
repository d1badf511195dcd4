# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Batch norm, layer norm and dropout: the CS231n checks, on bnjax
#
# This notebook walks through the normalization part of CS231n's assignment 2 -- `BatchNormalization.ipynb`
# (which also holds the layer-norm checks) and `Dropout.ipynb` -- in the same order, with bnjax's public API:
#
# 1. batch norm forward, train and test mode;
# 2. batch norm backward: gradient checks and the timing of the hand-derived backward against autodiff;
# 3. layer norm, the same checks;
# 4. dropout, forward and gradient check;
# 5. training comparisons through the engine (`bnjax.train.train_ensemble`), each one vmapped ensemble;
# 6. population statistics (moving average vs recomputed) and folding batch norm into the dense layer.
#
# The checks use the assignment's inputs (`np.random.seed(231)`, the same shapes), so the values the
# assignment's notebooks print can be shown next to ours. Every layer here is a pure function
# `apply(params, batch_stats, x, train, *, key=None, ...) -> (y, new_batch_stats)`: the running statistics
# are returned, never stored. The training data is MNIST-1D (Greydanus 2020), generated offline, so the
# whole notebook runs in about two minutes on a laptop CPU, and unchanged on a Colab GPU.

# %%
# Colab only: install bnjax (elsewhere this cell does nothing; install with `pip install -e .` instead).
# For a GPU: Runtime > Change runtime type > GPU. Colab's JAX already uses the GPU; on your own CUDA machine
# `pip install -U "jax[cuda12]"` gives a GPU build of JAX.
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    # A checkout of the repository (upload it, or `!git clone <repository URL> /content/bnjax`), or any
    # pip requirement, e.g. BNJAX_SOURCE="git+https://github.com/<owner>/bnjax.git".
    BNJAX_SOURCE = os.environ.get("BNJAX_SOURCE", "/content/bnjax")
    if "://" not in BNJAX_SOURCE and not os.path.exists(BNJAX_SOURCE):
        raise FileNotFoundError(
            f"No bnjax checkout at {BNJAX_SOURCE!r}: clone the repository there first, or set "
            "os.environ['BNJAX_SOURCE'] to a pip requirement such as 'git+https://github.com/<owner>/bnjax.git'."
        )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", BNJAX_SOURCE], check=True)

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import bnjax
import bnjax.data
import bnjax.train

# BNJAX_NOTEBOOK_SMALL=1 (the test suite's setting) trains fewer epochs, seeds and variants.
SMALL = os.environ.get("BNJAX_NOTEBOOK_SMALL") == "1"
print(f"bnjax {bnjax.__version__}, jax {jax.__version__} on {jax.devices()[0].platform}; small={SMALL}")
T_START = time.perf_counter()


def print_mean_std(x, axis=0):
    """CS231n's helper: per-feature (axis=0) or per-sample (axis=1) means and standard deviations."""
    x = np.asarray(x)
    print(f"  means: {x.mean(axis=axis)}")
    print(f"  stds:  {x.std(axis=axis)}\n")


def check(name, error, tol, cs231n=None):
    """Prints one gradient check as `check <name> rel_error <e> tol <t>` and fails the cell above tol."""
    line = f"check {name:<34} rel_error {error:.2e}  tol {tol:.0e}"
    print(line + (f"   (CS231n prints {cs231n})" if cs231n else ""))
    assert error <= tol, f"{name}: relative error {error:.2e} is above the tolerance {tol:.0e}"


# %% [markdown]
# ## 1. Batch normalization: forward pass
#
# In train mode batch norm normalises every feature with the mean and (biased) variance of the batch,
# `y = gamma * (x - mean) / sqrt(var + eps) + beta`; bnjax calls `gamma` and `beta` `scale` and `bias` (the
# Flax layout). As in the assignment, the input is the output of a random two-layer ReLU network, and the
# checks run in float64 (`jax.enable_x64`), so the printed values can be compared digit by digit.

# %%
with jax.enable_x64(True):
    rng = np.random.RandomState(231)  # the stream of CS231n's np.random.seed(231)
    N, D1, D2, D3 = 200, 50, 60, 3
    X = rng.randn(N, D1)
    W1 = rng.randn(D1, D2)
    W2 = rng.randn(D2, D3)
    a = np.maximum(0, X.dot(W1)).dot(W2)

    print("Before batch normalization:")
    print_mean_std(a)
    print("  (BatchNormalization.ipynb prints means [-2.3814598 -13.18038246 1.91780462],"
          " stds [27.18502186 34.21455511 37.68611762]: the same inputs)\n")

    params, stats = bnjax.batch_norm_init(D3, dtype=jnp.float64)  # scale = 1, bias = 0
    a_norm, _ = bnjax.batch_norm(params, stats, jnp.asarray(a), True)
    print("After batch normalization (gamma=1, beta=0): means should be ~0 and stds ~1")
    print_mean_std(a_norm)
    assert np.allclose(np.mean(a_norm, 0), 0, atol=1e-12) and np.allclose(np.std(a_norm, 0), 1, atol=1e-6)

    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([11.0, 12.0, 13.0])
    a_norm, _ = bnjax.batch_norm({"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}, stats, jnp.asarray(a), True)
    print(f"After batch normalization (gamma={gamma}, beta={beta}): means should be ~beta and stds ~gamma")
    print_mean_std(a_norm)
    assert np.allclose(np.mean(a_norm, 0), beta, atol=1e-10) and np.allclose(np.std(a_norm, 0), gamma, rtol=1e-6)

# %% [markdown]
# In test mode batch norm uses the running averages instead of the batch statistics:
# `running = momentum * running + (1 - momentum) * batch`, with CS231n's `momentum = 0.9`. bnjax returns the
# updated statistics from every train-mode call; the caller threads them to the next call. After 50 training
# batches, a test-mode pass on a fresh batch gives means near 0 and stds near 1, noisier than in train mode.
# (bnjax's running variance starts at 1, CS231n's at 0; after 50 updates that start weighs 0.9**50 = 0.5%,
# invisible here, so the numbers match the assignment's to about five digits.)

# %%
with jax.enable_x64(True):
    rng = np.random.RandomState(231)
    W1 = rng.randn(D1, D2)
    W2 = rng.randn(D2, D3)
    params, stats = bnjax.batch_norm_init(D3, dtype=jnp.float64)
    for t in range(50):
        X = rng.randn(N, D1)
        a = np.maximum(0, X.dot(W1)).dot(W2)
        _, stats = bnjax.batch_norm(params, stats, jnp.asarray(a), True, momentum=0.9)

    X = rng.randn(N, D1)
    a = np.maximum(0, X.dot(W1)).dot(W2)
    a_norm, _ = bnjax.batch_norm(params, stats, jnp.asarray(a), False)
    print("After batch normalization (test mode, running statistics of 50 batches):")
    print_mean_std(a_norm)
    print("  (BatchNormalization.ipynb prints means [-0.03927354 -0.04349152 -0.10452688],"
          " stds [1.01531428 1.01238373 0.97819988])")
    assert np.all(np.abs(np.mean(a_norm, 0)) < 0.2) and np.all(np.abs(np.std(a_norm, 0) - 1) < 0.1)

# %% [markdown]
# ## 2. Batch normalization: backward pass
#
# bnjax's batch norm has a hand-derived backward (a `jax.custom_vjp`, the closed form the assignment calls
# `batchnorm_backward_alt`), and `grad="autodiff"` differentiates the plain forward instead. Three gradients of
# `sum(y * dout)` with respect to `x`, `gamma` and `beta` are compared, in float64 on the assignment's input
# `x = 5 * randn(4, 5) + 12`:
#
# * **analytic**: reverse mode through the hand-derived backward (`jax.vjp`);
# * **autodiff**: `jax.grad` of the `grad="autodiff"` forward;
# * **numeric**: central differences, `bnjax.numeric_vjp` (CS231n's `eval_numerical_gradient_array`, h = 1e-5).
#
# `bnjax.rel_error` is CS231n's `max(|a - b| / max(1e-8, |a| + |b|))`. The assignment expects relative errors
# between 1e-13 and 1e-8 for the analytic-vs-numeric comparison; the finite differences set that floor, so the
# analytic gradient and autodiff agree far more closely with each other.

# %%
def gradient_check(forward, x, gamma, beta, dout, cs231n, label, tol=1e-8):
    """Analytic, autodiff and numeric gradients of sum(forward(x, gamma, beta) * dout); prints and asserts."""
    inputs = tuple(jnp.asarray(v) for v in (x, gamma, beta))
    _, vjp = jax.vjp(lambda *args: forward(*args, grad="analytic"), *inputs)
    analytic = vjp(jnp.asarray(dout))
    autodiff = jax.grad(lambda *args: jnp.sum(forward(*args, grad="autodiff") * dout), argnums=(0, 1, 2))(*inputs)
    for i, name in enumerate(("dx", "dgamma", "dbeta")):
        def f(z, i=i):  # the forward as a NumPy function of input i alone
            args = list(inputs)
            args[i] = jnp.asarray(z)
            return np.asarray(forward(*args, grad="analytic"))

        numeric = bnjax.numeric_vjp(f, np.asarray(inputs[i]), dout, h=1e-5)
        check(f"{label} {name} analytic~numeric", bnjax.rel_error(numeric, analytic[i]), tol, cs231n[i])
        check(f"{label} {name} autodiff~numeric", bnjax.rel_error(numeric, autodiff[i]), tol)
        check(f"{label} {name} analytic~autodiff", bnjax.rel_error(analytic[i], autodiff[i]), 1e-10)


def bn_forward(x, gamma, beta, grad):
    stats = {"mean": jnp.zeros_like(gamma), "var": jnp.ones_like(gamma)}
    return bnjax.batch_norm({"scale": gamma, "bias": beta}, stats, x, True, grad=grad)[0]


with jax.enable_x64(True):
    rng = np.random.RandomState(231)
    N, D = 4, 5
    x = 5 * rng.randn(N, D) + 12
    gamma = rng.randn(D)
    beta = rng.randn(D)
    dout = rng.randn(N, D)
    # BatchNormalization.ipynb's printed errors (dx, dgamma, dbeta) for the same inputs:
    gradient_check(bn_forward, x, gamma, beta, dout, ("1.70e-09", "7.42e-13", "2.88e-12"), "batch_norm")

# %% [markdown]
# The assignment also checks a whole network with batch norm: a softmax loss on two examples through two
# hidden layers of 20 and 30 units. The cell below builds that network with `bnjax.serial`, gives it the
# assignment's weights (the same `seed(231)` draws, weight scale 5e-2, stored `(out, in)`), and compares three
# gradients of the loss for every parameter: `jax.grad` through the analytic batch-norm backward, `jax.grad`
# with `grad="autodiff"`, and central differences of the scalar loss, `bnjax.numeric_grad` (CS231n's
# `eval_numerical_gradient`). bnjax drops the bias of a dense layer that feeds batch norm (the mean
# subtraction cancels it, so its gradient is exactly 0): there is no `b1`/`b2` here.
#
# Two examples per batch is an extreme case: each feature is normalised to about +-1, so the loss is sharply
# curved in `W1` and the finite differences (h = 1e-5) carry a truncation error. That is why the assignment
# prints 1.1e-4 for `W1` and accepts errors "between 1e-4~1e-10 for W"; the analytic and autodiff gradients
# agree to rounding.

# %%
with jax.enable_x64(True):
    rng = np.random.RandomState(231)
    N, D, H1, H2, C = 2, 15, 20, 30, 10
    X = rng.randn(N, D)
    y = rng.randint(C, size=(N,))

    def cs231n_net(grad):
        return bnjax.serial(
            bnjax.Dense(D, H1, use_bias=False), bnjax.BatchNorm(H1, grad=grad), bnjax.Activation(jax.nn.relu),
            bnjax.Dense(H1, H2, use_bias=False), bnjax.BatchNorm(H2, grad=grad), bnjax.Activation(jax.nn.relu),
            bnjax.Dense(H2, C),
        )

    # The parameters in the layout cs231n_net(...).init returns, with CS231n's FullyConnectedNet weights: W1 (D, H1),
    # W2 (H1, H2), W3 (H2, C) drawn in this order, stored transposed, (out, in); scale 1 and bias 0 elsewhere.
    W1, W2, W3 = (5e-2 * rng.randn(fan_in, fan_out) for fan_in, fan_out in ((D, H1), (H1, H2), (H2, C)))
    params = {
        "dense_0": {"weight": W1.T}, "bn_0": {"scale": np.ones(H1), "bias": np.zeros(H1)},
        "dense_1": {"weight": W2.T}, "bn_1": {"scale": np.ones(H2), "bias": np.zeros(H2)},
        "dense_2": {"weight": W3.T, "bias": np.zeros(C)},
    }
    stats = {"bn_0": {"mean": np.zeros(H1), "var": np.ones(H1)}, "bn_1": {"mean": np.zeros(H2), "var": np.ones(H2)}}
    expected = jax.eval_shape(cs231n_net("analytic").init, jax.random.key(0))  # shapes only, nothing computed
    assert jax.tree.map(np.shape, (params, stats)) == jax.tree.map(np.shape, expected)
    params = jax.tree.map(jnp.asarray, params)  # on the device once: each numeric step then moves one array

    def loss(params, grad):
        logits, _ = cs231n_net(grad).apply(params, stats, jnp.asarray(X), True)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(N), y])

    loss_fn = jax.jit(loss, static_argnums=1)
    grad_fn = jax.jit(jax.grad(loss), static_argnums=1)
    g_analytic, g_autodiff = grad_fn(params, "analytic"), grad_fn(params, "autodiff")
    print(f"initial loss {float(loss_fn(params, 'analytic')):.10f}   (BatchNormalization.ipynb: 2.2611955101)")
    cs231n = {"dense_0.weight": "W1 1.10e-04", "dense_1.weight": "W2 5.65e-06", "dense_2.weight": "W3 4.14e-10",
              "dense_2.bias": "b3 1.02e-10", "bn_0.scale": "gamma1 7.47e-09", "bn_0.bias": "beta1 6.94e-09",
              "bn_1.scale": "gamma2 3.35e-09", "bn_1.bias": "beta2 1.89e-09"}
    for name, printed in cs231n.items():
        layer, leaf = name.split(".")

        def loss_of(v, layer=layer, leaf=leaf):
            return float(loss_fn({**params, layer: {**params[layer], leaf: v}}, "analytic"))

        numeric = bnjax.numeric_grad(loss_of, params[layer][leaf], h=1e-5)
        tol = 1e-3 if leaf == "weight" else 1e-6
        check(f"network {name} analytic~numeric", bnjax.rel_error(numeric, g_analytic[layer][leaf]), tol, printed)
        exact = bnjax.rel_error(g_analytic[layer][leaf], g_autodiff[layer][leaf])
        check(f"network {name} analytic~autodiff", exact, 1e-10)

# %% [markdown]
# The assignment then times the closed-form backward against the staged (computational-graph) one. Under
# `jit` the compiler fuses either, so the question becomes whether the hand-written backward beats what
# autodiff derives. Both are timed here as a training step pays for them (forward and backward, float32,
# jitted), median of 30 runs, on the assignment's shape (N=100, D=500) and a larger one; a ratio above 1 means
# the hand-derived backward is the faster. Sub-millisecond timings are noisy on a busy machine; the gradients
# themselves agree to float32 rounding.

# %%
def bn_fwd_bwd(grad):
    def run(x, gamma, beta, dout):
        _, vjp = jax.vjp(lambda *args: bn_forward(*args, grad=grad), x, gamma, beta)
        return vjp(dout)
    return jax.jit(run)


def median_seconds(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


rng = np.random.RandomState(231)
print(f"{'N x D':>12} {'analytic':>11} {'autodiff':>11} {'autodiff/analytic':>18} {'max |dx diff|':>14}")
for n, d in ((100, 500), (1000, 1000) if not SMALL else (500, 500)):
    args = (5 * rng.randn(n, d) + 12, rng.randn(d), rng.randn(d), rng.randn(n, d))  # x, gamma, beta, dout
    args = tuple(jnp.asarray(v, jnp.float32) for v in args)
    analytic_fn, autodiff_fn = bn_fwd_bwd("analytic"), bn_fwd_bwd("autodiff")
    t_an, t_ad = median_seconds(analytic_fn, args, 30), median_seconds(autodiff_fn, args, 30)
    diff = float(jnp.max(jnp.abs(analytic_fn(*args)[0] - autodiff_fn(*args)[0])))
    print(f"{f'{n} x {d}':>12} {t_an * 1e6:>9.0f}us {t_ad * 1e6:>9.0f}us {t_ad / t_an:>17.2f}x {diff:>14.1e}")

# %% [markdown]
# ## 3. Layer normalization
#
# Layer norm normalises each sample over its features instead of each feature over the batch, so train and
# test mode are the same computation and the batch size plays no part. The forward check normalises the rows
# of a 4-sample batch (statistics along `axis=1`); the gradient check is the one above, with the assignment's
# layer-norm values beside it (it expects errors between 1e-12 and 1e-8).

# %%
with jax.enable_x64(True):
    rng = np.random.RandomState(231)
    N, D1, D2, D3 = 4, 50, 60, 3
    X = rng.randn(N, D1)
    W1 = rng.randn(D1, D2)
    W2 = rng.randn(D2, D3)
    a = np.maximum(0, X.dot(W1)).dot(W2)

    print("Before layer normalization:")
    print_mean_std(a, axis=1)
    print("  (BatchNormalization.ipynb prints means [-59.06673243 -47.60782686 -43.31137368 -26.40991744])\n")

    params, _ = bnjax.layer_norm_init(D3, dtype=jnp.float64)
    a_norm, _ = bnjax.layer_norm(params, {}, jnp.asarray(a), True)
    print("After layer normalization (gamma=1, beta=0): per-sample means ~0, stds ~1")
    print_mean_std(a_norm, axis=1)
    print("  (BatchNormalization.ipynb prints stds [0.99999995 0.99999999 1. 0.99999969]: eps = 1e-5 shows in the"
          " low-variance rows)\n")
    assert np.allclose(np.mean(a_norm, 1), 0, atol=1e-12) and np.allclose(np.std(a_norm, 1), 1, atol=1e-5)

    gamma, beta = np.full(D3, 3.0), np.full(D3, 5.0)
    a_norm, _ = bnjax.layer_norm({"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}, {}, jnp.asarray(a), True)
    print(f"After layer normalization (gamma={gamma}, beta={beta}): means ~5, stds ~3")
    print_mean_std(a_norm, axis=1)
    assert np.allclose(np.mean(a_norm, 1), 5, atol=1e-10) and np.allclose(np.std(a_norm, 1), 3, rtol=1e-5)


def ln_forward(x, gamma, beta, grad):
    return bnjax.layer_norm({"scale": gamma, "bias": beta}, {}, x, True, grad=grad)[0]


with jax.enable_x64(True):
    rng = np.random.RandomState(231)
    N, D = 4, 5
    x = 5 * rng.randn(N, D) + 12
    gamma = rng.randn(D)
    beta = rng.randn(D)
    dout = rng.randn(N, D)
    gradient_check(ln_forward, x, gamma, beta, dout, ("2.11e-09", "4.52e-12", "2.58e-12"), "layer_norm")

# %% [markdown]
# ## 4. Dropout
#
# bnjax's `rate` is the probability of **dropping** a unit; CS231n's `p` is the probability of **keeping**
# one, so the assignment's `p` is `rate = 1 - p` here. Dropout is inverted: train mode returns
# `x * mask / (1 - rate)`, so the mean is kept while a fraction `rate` of the outputs is zero, and test mode is
# the identity. Randomness is an argument: the same `key` gives the same mask.

# %%
rng = np.random.RandomState(231)
x = jnp.asarray(rng.randn(500, 500) + 10, jnp.float32)
# CS231n Dropout.ipynb's printed train-time means and zero fractions for its keep probabilities p:
cs231n_dropout = {0.25: (10.014, 0.749784), 0.4: (9.978, 0.600796), 0.7: (9.988, 0.30074)}
for p, (cs_mean, cs_zero) in cs231n_dropout.items():
    rate = 1 - p
    out, _ = bnjax.dropout({}, {}, x, True, rate=rate, key=jax.random.key(0))
    out_test, _ = bnjax.dropout({}, {}, x, False, rate=rate)
    print(f"Running tests with keep p = {p} (rate = {rate:.2f})")
    print(f"  mean of input:             {float(x.mean()):.4f}")
    print(f"  mean of train-time output: {float(out.mean()):.4f}   (CS231n {cs_mean})")
    print(f"  mean of test-time output:  {float(out_test.mean()):.4f}")
    print(f"  fraction of train-time output set to zero: {float((out == 0).mean()):.4f}   (CS231n {cs_zero})")
    print(f"  fraction of test-time output set to zero:  {float((out_test == 0).mean()):.4f}\n")
    assert abs(float(out.mean()) - float(x.mean())) < 0.1 and abs(float((out == 0).mean()) - rate) < 0.01

# %% [markdown]
# The gradient of dropout is `dout * mask / (1 - rate)` for the mask the forward drew. With the key fixed the
# layer is a fixed linear map, so central differences recover the gradient up to rounding. The assignment's
# check (keep p = 0.2, `x = randn(10, 10) + 10`) expects an error "around e-10 or less".

# %%
with jax.enable_x64(True):
    rng = np.random.RandomState(231)
    x = rng.randn(10, 10) + 10
    dout = rng.randn(*x.shape)
    rate, key = 1 - 0.2, jax.random.key(123)

    def drop(z):
        return bnjax.dropout({}, {}, jnp.asarray(z), True, rate=rate, key=key)[0]

    dx = jax.grad(lambda z: jnp.sum(drop(z) * dout))(jnp.asarray(x))
    dx_num = bnjax.numeric_vjp(lambda z: np.asarray(drop(z)), x, dout)
    mask = np.asarray(drop(np.ones_like(x))) != 0
    check("dropout dx autodiff~numeric", bnjax.rel_error(dx, dx_num), 1e-9, "5.45e-11")
    check("dropout dx closed-form~autodiff", bnjax.rel_error(dout * mask / (1 - rate), dx), 1e-12)

# %% [markdown]
# ## 5. Training comparisons through the engine
#
# `bnjax.train.train_ensemble(spec, cfg, data, members)` trains K models ("members") at once: every epoch is
# one compiled `lax.scan` over the mini-batches, vmapped over the members, and each member may differ in seed,
# weight scale, drop rate, learning rate or BN momentum. Changing the architecture (the kind of normalization,
# the batch size) makes a new program, so each comparison below is one ensemble per variant, members = seeds or
# swept values. "Train accuracy" is measured in eval mode on a fixed subset of the training set, as CS231n's
# `Solver` does.
#
# The data is MNIST-1D: 40-sample 1-D signals of ten digit shapes, generated offline by the `mnist1d` package
# (a few seconds the first time, then cached), 1000 training examples as in the assignment's small runs,
# standardized with training statistics. Its numbers are not CIFAR-10's, but the effects the assignment is
# after show up the same way, in seconds on a CPU.

# %%
data = bnjax.data.load_dataset("mnist1d", num_train=1000, num_val=1000, standardize=True)
print(data.describe())

EPOCHS = 5 if SMALL else 10
SEEDS = [0, 1, 2]


def train(spec, cfg, members, data=data):
    """The one place the engine is called: one vmapped ensemble, trained and evaluated after every epoch."""
    t0 = time.perf_counter()
    result = bnjax.train.train_ensemble(spec, cfg, data, members)
    print(f"  {spec.norm:>5} norm, batch {cfg.batch_size:>2}: {len(result.members)} members x {cfg.epochs} epochs "
          f"in {time.perf_counter() - t0:.1f} s")
    return result


def member(tree, k):
    """Member k's slice of a stacked (K, ...) pytree, e.g. one model's parameters."""
    return jax.tree.map(lambda leaf: leaf[k], tree)


def table(headers, rows):
    """A small Markdown table."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")


def spread(values):
    values = np.asarray(values, np.float64)
    return f"{values.mean():.3f} ({values.min():.3f}-{values.max():.3f})"


# %% [markdown]
# ### 5.1 Batch norm vs no normalization in a deep network
#
# The assignment's setup: five hidden layers of 100 ReLUs, weights drawn from N(0, 0.02²), Adam with learning
# rate 1e-3, batch 50, batch norm before every ReLU. Without normalization the tiny initial weights shrink the
# signal layer after layer and training starts slowly; batch norm rescales every layer and trains much faster.
# (After the first epoch batch norm's eval-mode accuracy is still at chance: the running variance starts at 1
# and, after 20 updates with momentum 0.9, still overestimates the tiny activations' variance. Section 6
# returns to the running statistics.)

# %%
spec = bnjax.MLPSpec(in_features=data.num_features, hidden=(100,) * 5, num_classes=data.num_classes,
                     init="normal", weight_scale=2e-2)
cfg = bnjax.train.TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=50, epochs=EPOCHS)
deep = {norm: train(spec.replace(norm=norm), cfg, {"seed": SEEDS}) for norm in ("none", "batch")}

fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for norm, result in deep.items():
    label = {"none": "baseline", "batch": "batch norm"}[norm]
    axes[0].plot(result.loss_history.mean(0), label=label, lw=0.8)
    axes[1].plot(result.history["train_acc"].mean(0), "-o", label=label)
    axes[2].plot(result.history["val_acc"].mean(0), "-o", label=label)
for ax, title in zip(axes, ("training loss (per iteration)", "train accuracy", "validation accuracy")):
    ax.set_title(f"{title}, mean of {len(SEEDS)} seeds")
    ax.set_xlabel("iteration" if "loss" in title else "epoch")
    ax.legend()
plt.show()
table(["model", "final train acc", "final val acc"],
      [[{"none": "baseline", "batch": "batch norm"}[n], spread(r.final("train_acc")), spread(r.final("val_acc"))]
       for n, r in deep.items()])

# %% [markdown]
# ### 5.2 Batch norm and the weight scale
#
# The assignment sweeps the standard deviation of the initial weights over `logspace(-4, 0)` for a deep network
# with and without batch norm. Here the sweep is the member axis of one ensemble per norm (one seed each), on
# the network above. Without normalization only a narrow band of scales trains well: too small and the signal
# vanishes, too large and it explodes (a member whose loss became non-finite would be frozen and its step
# reported, the others going on). With batch norm the network trains across most of the range.

# %%
scales = np.logspace(-4, 0, 3 if SMALL else 9)
sweep = {norm: train(spec.replace(norm=norm), cfg, {"weight_scale": list(scales)}) for norm in ("none", "batch")}

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for norm, result in sweep.items():
    label = {"none": "baseline", "batch": "batch norm"}[norm]
    axes[0].semilogx(scales, np.nanmax(result.history["val_acc"], axis=1), "-o", label=label)
    axes[1].loglog(scales, np.nanmean(result.loss_history[:, -50:], axis=1), "-o", label=label)
axes[0].set_title("best validation accuracy")
axes[1].set_title("final training loss (mean of the last 50 iterations)")
for ax in axes:
    ax.set_xlabel("weight scale")
    ax.legend()
plt.show()
table(["weight scale", "baseline best val", "BN best val", "baseline diverged at step"],
      [[f"{s:.1e}", float(np.nanmax(sweep["none"].history["val_acc"][k])),
        float(np.nanmax(sweep["batch"].history["val_acc"][k])),
        int(sweep["none"].diverged_step[k]) if sweep["none"].diverged_step[k] >= 0 else "-"]
       for k, s in enumerate(scales)])

# %% [markdown]
# ### 5.3 Batch size: batch norm vs layer norm
#
# Batch norm's statistics come from the batch, so a small batch makes them noisy; layer norm's come from each
# sample and do not care. The assignment trains at batch sizes 5, 10 and 50 (learning rate 10^-3.5) and compares
# per epoch (a smaller batch takes more steps per epoch), with the baseline at the smallest batch for reference.

# %%
batch_sizes = (5, 50) if SMALL else (5, 10, 50)
cfg_bs = cfg.replace(learning_rate=10**-3.5)
by_batch = {(norm, bs): train(spec.replace(norm=norm), cfg_bs.replace(batch_size=bs), {"seed": SEEDS})
            for norm in ("batch", "layer") for bs in batch_sizes}
if not SMALL:
    by_batch[("none", 5)] = train(spec.replace(norm="none"), cfg_bs.replace(batch_size=5), {"seed": SEEDS})

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for (norm, bs), result in by_batch.items():
    style = {"batch": "-o", "layer": "--s", "none": ":^"}[norm]
    axes[0].plot(result.history["train_acc"].mean(0), style, label=f"{norm} norm, batch {bs}")
    axes[1].plot(result.history["val_acc"].mean(0), style, label=f"{norm} norm, batch {bs}")
for ax, title in zip(axes, ("train accuracy", "validation accuracy")):
    ax.set_title(f"{title}, mean of {len(SEEDS)} seeds")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
plt.show()
table(["norm", "batch size", "final train acc", "final val acc"],
      [[norm, bs, spread(r.final("train_acc")), spread(r.final("val_acc"))] for (norm, bs), r in by_batch.items()])
for norm in ("batch", "layer"):
    finals = [by_batch[(norm, bs)].final("train_acc").mean() for bs in batch_sizes]
    print(f"{norm} norm: final train accuracy spread across batch sizes {max(finals) - min(finals):.3f}")

# %% [markdown]
# ### 5.4 Dropout as a regularizer
#
# The assignment trains a network with one hidden layer of 500 units on 500 examples, with keep probability 1
# and 0.25. Here the drop rate is the member axis of one ensemble: rates 0, 0.25, 0.5 and 0.75 (keep 1, 0.75,
# 0.5, 0.25), each with two seeds (one in small mode), trained with Adam (learning rate 3e-3, batch 100) until
# the network without dropout has memorized its training set. Dropout trades training accuracy for a smaller
# gap between training and validation accuracy, and here for a slightly better validation accuracy.

# %%
data500 = bnjax.data.load_dataset("mnist1d", num_train=500, num_val=500, num_test=500, standardize=True)
rates = [0.0, 0.25, 0.5, 0.75]
drop_seeds = [0] if SMALL else [0, 1]
spec_drop = bnjax.MLPSpec(in_features=data500.num_features, hidden=(500,), num_classes=data500.num_classes,
                          weight_scale=1e-2)
cfg_drop = bnjax.train.TrainConfig(optimizer="adam", learning_rate=3e-3, batch_size=100,
                                   epochs=15 if SMALL else 50, eval_train_samples=500)
members = {"dropout": rates * len(drop_seeds), "seed": [s for s in drop_seeds for _ in rates]}
dropped = train(spec_drop, cfg_drop, members, data=data500)

members_of = {rate: [k for k, m in enumerate(dropped.members) if m["dropout"] == rate] for rate in rates}
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, metric, title in zip(axes, ("train_acc", "val_acc"), ("train accuracy", "validation accuracy")):
    for rate, ks in members_of.items():
        ax.plot(dropped.history[metric][ks].mean(0), label=f"rate {rate} (keep {1 - rate})")
    ax.set_title(f"{title}, mean of {len(drop_seeds)} seed(s)")
    ax.set_xlabel("epoch")
    ax.legend()
plt.show()
rows = []
for rate, ks in members_of.items():
    tr, va = dropped.final("train_acc")[ks], dropped.final("val_acc")[ks]
    rows.append([rate, 1 - rate, spread(tr), spread(va), float((tr - va).mean()),
                 float(np.nanmax(dropped.history["val_acc"][ks], axis=1).mean())])
table(["drop rate", "keep p", "final train", "final val", "train - val gap", "best val"], rows)

# %% [markdown]
# ## 6. Population statistics
#
# At test time batch norm uses running averages collected during training. An exponential moving average mixes
# statistics of past weights and lags behind the current ones, the more so the higher the momentum and the
# learning rate (here 1e-2): with momentum 0.99 it spans about 100 steps, and after the 200 steps of this run
# the initial mean 0 / variance 1 still weigh 0.99**200 = 13%. "Precise BN" (Wu & Johnson 2021) instead
# recomputes the statistics with the weights frozen, as the plain average over a number of training batches
# (`bnjax.train.recompute_batch_stats`; the engine does it after every epoch with
# `TrainConfig(precise_bn_batches=...)`, as the `*_precise` metrics). It needs no momentum to tune: it matches
# a well-chosen EMA and repairs a lagging one.
#
# The momentum is the member axis here, and every member has the same seed: running statistics never change
# what is trained (train mode normalises with batch statistics), so the three members learn the same weights
# and differ only in their running averages -- a paired comparison.

# %%
momenta = [0.5, 0.9, 0.99]
cfg_pop = cfg.replace(learning_rate=1e-2, precise_bn_batches=20)
spec_bn = spec.replace(norm="batch")
pop = train(spec_bn, cfg_pop, {"bn_momentum": momenta, "seed": [0] * len(momenta)})

fig, ax = plt.subplots(figsize=(7, 4))
for k, mom in enumerate(momenta):
    ax.plot(pop.history["val_acc"][k], "-o", label=f"EMA, momentum {mom}")
ax.plot(pop.history["val_acc_precise"][0], "-k", lw=2, label="recomputed (precise BN)")
ax.set_title("validation accuracy by population statistics")
ax.set_xlabel("epoch")
ax.legend()
plt.show()
table(["statistics", "val acc after epoch 1", "final val acc"],
      [[f"EMA momentum {m}", float(pop.history["val_acc"][k, 1]), float(pop.final("val_acc")[k])]
       for k, m in enumerate(momenta)]
      + [["recomputed", float(pop.history["val_acc_precise"][0, 1]), float(pop.final("val_acc_precise")[0])]])

# %% [markdown]
# The same by hand, on the final weights of the momentum-0.99 member: recompute the statistics over 20
# training batches of 50 and evaluate with each set.

# %%
k = momenta.index(0.99)
params_k, ema_stats = member(pop.params, k), member(pop.batch_stats, k)
precise_stats = bnjax.train.recompute_batch_stats(spec_bn, params_k, ema_stats, data.x_train, batch_size=50,
                                                  num_batches=20)


def accuracy(spec, params, batch_stats, x, y):
    logits, _ = bnjax.mlp(spec).apply(params, batch_stats, jnp.asarray(x), False)
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == y))


acc_ema = accuracy(spec_bn, params_k, ema_stats, data.x_val, data.y_val)
acc_precise = accuracy(spec_bn, params_k, precise_stats, data.x_val, data.y_val)
print(f"validation accuracy, EMA statistics (momentum 0.99): {acc_ema:.3f}")
print(f"validation accuracy, recomputed statistics:          {acc_precise:.3f}")
for name in precise_stats:  # how far the running averages are from the recomputed statistics, layer by layer
    ema, precise = ema_stats[name], precise_stats[name]
    shift = float(jnp.max(jnp.abs(ema["mean"] - precise["mean"]) / jnp.sqrt(precise["var"])))
    ratio = np.asarray(ema["var"] / precise["var"])
    print(f"  {name}: max |EMA mean - recomputed mean| = {shift:.2f} std; EMA / recomputed variance "
          f"{ratio.min():.2f} to {ratio.max():.2f}")

# %% [markdown]
# ### Folding batch norm into the dense layer
#
# In eval mode batch norm is a fixed per-feature affine map, `y = a * z + b` with `a = gamma / sqrt(var + eps)`
# and `b = beta - a * mean`. Applied to a dense layer's output `z = x W^T + c`, it folds into the layer:
# `W' = a[:, None] * W` and `c' = a * c + b`. `bnjax.fold_batch_norm` does that for one layer,
# `bnjax.fold_mlp` for every layer of an MLP, which then runs without normalization layers at inference.

# %%
x_val = jnp.asarray(data.x_val)
z = bnjax.dense(params_k["dense_0"], {}, x_val, False)[0]
y_bn, _ = bnjax.batch_norm(params_k["bn_0"], precise_stats["bn_0"], z, False)
folded_0 = bnjax.fold_batch_norm(params_k["dense_0"], params_k["bn_0"], precise_stats["bn_0"])
y_folded, _ = bnjax.dense(folded_0, {}, x_val, False)
print(f"one layer: max |dense -> BN  -  folded dense| = {float(jnp.max(jnp.abs(y_bn - y_folded))):.2e} "
      f"(outputs up to {float(jnp.max(jnp.abs(y_bn))):.1f})")

folded, folded_spec = bnjax.fold_mlp(spec_bn, params_k, precise_stats)
logits_bn, _ = bnjax.mlp(spec_bn).apply(params_k, precise_stats, x_val, False)
logits_folded, _ = bnjax.mlp(folded_spec).apply(folded, {}, x_val, False)
diff = float(jnp.max(jnp.abs(logits_bn - logits_folded)))
print(f"whole MLP ({folded_spec.norm!r} norm after folding): max |logits difference| = {diff:.2e} "
      f"(logits up to {float(jnp.max(jnp.abs(logits_bn))):.1f})")
acc_folded = accuracy(folded_spec, folded, {}, data.x_val, data.y_val)
print(f"validation accuracy: with BN {acc_precise:.3f}, folded {acc_folded:.3f}")
assert diff <= 1e-4 * float(jnp.max(jnp.abs(logits_bn)))

# %%
print(f"notebook ran in {time.perf_counter() - T_START:.0f} s")
