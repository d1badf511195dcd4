"""Data-parallel training (bnjax/train/_parallel.py) on 4 simulated CPU devices.

XLA's device count is fixed when JAX starts, so the 4-device runs happen once in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``, which prints a JSON dict of errors checked below.
References: the single-device step on the whole batch (synced BN), per-shard NumPy batch statistics and
per-shard single-device gradients (ghost BN), and members trained one at a time (ensemble).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import MLPSpec, mlp
from bnjax.train import TrainConfig, init_train_state, make_data_parallel_step, make_train_step

SCRIPT = textwrap.dedent(
    r'''
    import json

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from bnjax import MLPSpec, mlp
    from bnjax.train import (TrainConfig, init_train_state, make_data_parallel_ensemble_step, make_data_parallel_step,
                             make_train_step)

    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    D, B, T = 4, 16, 3  # devices, global batch, steps
    spec = MLPSpec(in_features=5, hidden=(8, 6), num_classes=3, norm="batch", weight_scale=0.5, bn_momentum=0.8)
    cfg = TrainConfig(optimizer="adam", learning_rate=1e-2, l2=1e-3)
    rng = np.random.RandomState(0)
    xs = jnp.asarray((2 * rng.randn(T, B, 5) + 1).astype(np.float32))
    ys = jnp.asarray(rng.randint(0, 3, (T, B)))
    out = {}

    def err(a, b):
        """Max abs difference relative to the reference's scale (>= 1)."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))

    def tree_err(a, b):
        la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(la) == len(lb) > 0
        return max(err(u, v) for u, v in zip(la, lb))

    def replicated(tree):
        return all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(tree))

    # (a) synced BN: 4 devices == one device on the whole batch, over T Adam steps with L2.
    s0 = init_train_state(spec, cfg, seed=1)
    ref, dp = jax.jit(make_train_step(spec, cfg, 10)), make_data_parallel_step(spec, cfg, 10, mesh)
    a, b, la, lb = s0, s0, [], []
    for t in range(T):
        a, ma = ref(a, (xs[t], ys[t]))
        b, mb = dp(b, (xs[t], ys[t]))
        la.append(ma["loss"]); lb.append(mb["loss"])
    out["synced"] = {
        "params": tree_err(b.params, a.params), "batch_stats": tree_err(b.batch_stats, a.batch_stats),
        "loss": err(lb, la), "opt_state": tree_err(b.opt_state, a.opt_state),
        "step": int(b.step), "replicated": replicated(b),
    }

    # (b) ghost BN, one SGD step: running stats == mean over shards of the NumPy per-shard update; params ==
    # p - lr * mean over shards of each shard's single-device gradient.
    sgd = TrainConfig(optimizer="sgd", learning_rate=0.1)
    g0 = init_train_state(spec, sgd, seed=2)
    g1, gm = make_data_parallel_step(spec, sgd, 10, mesh, sync_bn=False)(g0, (xs[0], ys[0]))
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), g0.params)
    m, eps = spec.bn_momentum, spec.bn_eps
    stats = {"bn_0": {"mean": [], "var": []}, "bn_1": {"mean": [], "var": []}}
    for d in range(D):
        h = np.asarray(xs[0], np.float64)[d * 4:(d + 1) * 4] @ p["dense_0"]["weight"].T
        for i in range(2):
            mu, var = h.mean(0), h.var(0)
            stats[f"bn_{i}"]["mean"].append(mu); stats[f"bn_{i}"]["var"].append(var)
            h = np.maximum((h - mu) / np.sqrt(var + eps) * p[f"bn_{i}"]["scale"] + p[f"bn_{i}"]["bias"], 0)
            h = h @ p[f"dense_{i + 1}"]["weight"].T
    expect = {k: {"mean": m * 0.0 + (1 - m) * np.mean(v["mean"], 0), "var": m * 1.0 + (1 - m) * np.mean(v["var"], 0)}
              for k, v in stats.items()}

    def shard_loss(params, x, y, key=None, rate=0.0, rows=None):
        logits, _ = mlp(spec).apply(params, g0.batch_stats, x, True, key=key, dropout=rate, row_index=rows)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    loss_grad = jax.jit(jax.value_and_grad(shard_loss))
    losses, grads = zip(*[loss_grad(g0.params, xs[0][d * 4:(d + 1) * 4], ys[0][d * 4:(d + 1) * 4]) for d in range(D)])
    mean_grad = jax.tree.map(lambda *g: sum(g) / D, *grads)
    global_var = (np.asarray(xs[0], np.float64) @ p["dense_0"]["weight"].T).var(0)
    out["ghost"] = {
        "batch_stats": tree_err(g1.batch_stats, expect),
        "params": tree_err(g1.params, jax.tree.map(lambda v, g: v - 0.1 * g, g0.params, mean_grad)),
        "loss": err(gm["loss"], np.mean(losses)), "replicated": replicated(g1),
        # Ghost differs from synced BN (else this test could not tell them apart): the mean of the shards'
        # variances is not the variance of the whole batch.
        "vs_synced": err(g1.batch_stats["bn_0"]["var"], m + (1 - m) * global_var),
    }

    # (c) dropout under ghost BN: device d holds rows 4d..4d+3 of the global batch and draws each row's mask from
    # fold_in(layer key, its global row) (bnjax.dropout's row_index), so the shards draw one device's masks.
    dspec = spec.replace(dropout=0.4)
    q0 = init_train_state(dspec, sgd, seed=3)
    q1, qm = make_data_parallel_step(dspec, sgd, 10, mesh, sync_bn=False)(q0, (xs[0], ys[0]))
    # The documented dropout stream (bnjax/train/_step.py): fold_in(fold_in(member key, DROPOUT=3), step).
    k = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(q0.key), 3), q0.step)
    keyed = [(xs[0][d * 4:(d + 1) * 4], ys[0][d * 4:(d + 1) * 4], jnp.arange(4) + 4 * d) for d in range(D)]
    dloss, dgrads = zip(*[loss_grad(q0.params, x, y, k, 0.4, rows) for x, y, rows in keyed])
    dloss = np.mean(dloss)
    local_rows = np.mean([loss_grad(q0.params, x, y, k, 0.4, jnp.arange(4))[0] for x, y, _ in keyed])
    out["dropout"] = {
        "params": tree_err(q1.params, jax.tree.map(lambda v, *g: v - 0.1 * sum(g) / D, q0.params, *dgrads)),
        "loss": err(qm["loss"], dloss), "vs_local_rows": abs(float(qm["loss"]) - float(local_rows)),
    }

    # (d) divergence is global: a NaN in one device's shard freezes the replicated state on every device.
    xbad = xs[0].at[5, 0].set(jnp.nan)
    v1, vm = dp(s0, (xbad, ys[0]))
    out["diverged"] = {
        "diverged_step": int(v1.diverged_step), "params_frozen": tree_err(v1.params, s0.params),
        "loss_nan": bool(np.isnan(float(vm["loss"]))), "replicated": replicated(v1),
    }

    # (e) ensemble x data parallel: K=2 members (own seeds, learning rates, batches) x 4 devices == each
    # member trained alone on one device.
    members = [init_train_state(spec, cfg, seed=s, learning_rate=lr) for s, lr in ((4, 1e-2), (5, 3e-3))]
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *members)
    xk = jnp.stack([xs, xs[::-1] * 0.5])  # (K, T, B, 5)
    yk = jnp.stack([ys, ys[::-1]])
    ens = make_data_parallel_ensemble_step(spec, cfg, 10, mesh)
    e, el = stacked, []
    for t in range(T):
        e, em = ens(e, (xk[:, t], yk[:, t]))
        el.append(em["loss"])
    errs = []
    for i, s in enumerate(members):
        li = []
        for t in range(T):
            s, mi = ref(s, (xk[i, t], yk[i, t]))
            li.append(mi["loss"])
        errs += [tree_err(jax.tree.map(lambda v: v[i], (e.params, e.batch_stats)), (s.params, s.batch_stats)),
                 err(np.asarray(el)[:, i], li)]
    # Shared batch: one (B, D) batch for both members, one step.
    sh, shm = make_data_parallel_ensemble_step(spec, cfg, 10, mesh, shared_batch=True)(stacked, (xs[0], ys[0]))
    for i, s in enumerate(members):
        s, mi = ref(s, (xs[0], ys[0]))
        errs += [tree_err(jax.tree.map(lambda v: v[i], (sh.params, sh.batch_stats)), (s.params, s.batch_stats)),
                 err(shm["loss"][i], mi["loss"])]
    out["ensemble"] = {"max_err": max(errs), "replicated": replicated(e)}

    # (f) a global batch that does not split evenly over the devices.
    try:
        dp(s0, (xs[0][:14], ys[0][:14]))
        out["indivisible"] = ""
    except ValueError as exc:
        out["indivisible"] = str(exc)
    print("RESULT " + json.dumps(out))
    '''
)

TOL = 1e-5


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_synced_equals_single_device_whole_batch(results):
    r = results["synced"]
    assert r["step"] == 3 and r["replicated"], r
    assert max(r["params"], r["batch_stats"], r["loss"], r["opt_state"]) <= TOL, r


def test_ghost_bn_averages_per_shard_updates(results):
    r = results["ghost"]
    assert r["replicated"], r
    assert max(r["batch_stats"], r["params"], r["loss"]) <= TOL, r
    assert r["vs_synced"] > 1e-3, r


def test_dropout_masks_follow_each_rows_global_position(results):
    r = results["dropout"]
    assert max(r["params"], r["loss"]) <= TOL, r
    assert r["vs_local_rows"] > 1e-4, r  # masks keyed by a shard's local rows would differ


def test_divergence_is_decided_globally(results):
    r = results["diverged"]
    assert r["diverged_step"] == 0 and r["loss_nan"] and r["replicated"], r
    assert r["params_frozen"] == 0.0, r


def test_ensemble_times_data_parallel_equals_members_alone(results):
    r = results["ensemble"]
    assert r["replicated"], r
    assert r["max_err"] <= TOL, r


def test_indivisible_batch_is_rejected(results):
    assert "batch size 14 is not divisible by the 4 devices" in results["indivisible"]


# In-process: one device (the mesh of the default process).


def test_one_device_mesh_equals_train_step():
    spec = MLPSpec(in_features=3, hidden=(4,), num_classes=2, norm="batch", weight_scale=0.5)
    cfg = TrainConfig(optimizer="sgd", learning_rate=0.1)
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(6, 3).astype(np.float32))
    y = jnp.asarray(rng.randint(0, 2, 6))
    s0 = init_train_state(spec, cfg, seed=0)
    mesh = jax.make_mesh((1,), ("batch",), devices=jax.devices()[:1])  # Explicit axis type (the default)
    a, ma = make_data_parallel_step(spec, cfg, 5, mesh, axis="batch")(s0, (x, y))
    b, mb = jax.jit(make_train_step(spec, cfg, 5))(s0, (x, y))
    for u, v in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
    # Independent check of the loss: softmax CE of the single-device forward.
    logits, _ = mlp(spec).apply(s0.params, s0.batch_stats, x, True)
    ce = -jax.nn.log_softmax(logits)[jnp.arange(6), y].mean()
    np.testing.assert_allclose(ma["loss"], ce, rtol=1e-6)


def test_bad_mesh_and_axis_are_rejected():
    spec = MLPSpec(in_features=3, hidden=(4,), num_classes=2)
    cfg = TrainConfig()
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="axis='model' is not an axis of the mesh"):
        make_data_parallel_step(spec, cfg, 5, mesh, axis="model")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        make_data_parallel_step(spec, cfg, 5, ("data",))
