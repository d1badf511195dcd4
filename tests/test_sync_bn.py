"""Synchronized batch norm across 4 simulated CPU devices (``shard_map``/``vmap`` with ``axis_name``).

XLA's device count is fixed when JAX starts, so the multi-device computations run once in a subprocess
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``; it prints a JSON dict of errors that the tests
below check. References are single-device batch norm on the whole (or the unmasked part of the) batch; the padding of
the masked case also holds NaN/inf, which must reach no statistic or gradient on any device.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    r'''
    import json

    import flax.linen as fnn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from bnjax import batch_norm

    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    D, N, C = 4, 6, 5  # devices, rows per device, features
    rng = np.random.RandomState(0)
    x = jnp.asarray((3 * rng.randn(D * N, C) + 2).astype(np.float32))
    dy = jnp.asarray(rng.randn(D * N, C).astype(np.float32))
    params = {"scale": jnp.asarray(rng.randn(C), jnp.float32), "bias": jnp.asarray(rng.randn(C), jnp.float32)}
    stats = {"mean": jnp.asarray(rng.randn(C), jnp.float32), "var": jnp.asarray(rng.uniform(1, 2, C), jnp.float32)}
    # Unequal counts: 6, 2, 5 and 1 valid rows on the four devices (the rest is padding).
    valid_per_device = [6, 2, 5, 1]
    valid = np.concatenate([np.arange(N) < k for k in valid_per_device])
    mask = jnp.asarray(valid[:, None].astype(np.float32))
    OPTS = dict(momentum=0.8, unbiased_var=True)
    out = {}

    def err(a, b):
        """Max abs difference relative to the reference's scale (>= 1)."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))

    def tree_err(a, b):
        return max(err(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    def reference(xs, dys, grad):
        def loss(p, xs):
            y, new = batch_norm(p, stats, xs, True, grad=grad, **OPTS)
            return jnp.sum(y * dys), (y, new)
        (_, (y, new)), (dp, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs)
        return y, new, dp, dx

    def sharded(grad, m=None, xs_in=x, dys=dy):
        def local(p, xs, ms):
            return batch_norm(p, stats, xs, True, axis_name="data", mask=ms, grad=grad, **OPTS)
        ms = jnp.ones((D * N, 1)) if m is None else m
        f = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P("data"), P()))

        def loss(p, xs):
            y, new = f(p, xs, ms)
            return jnp.sum(jnp.where(ms != 0, y * dys, 0.0)), (y, new)
        (_, (y, new)), (dp, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs_in)
        return y, new, dp, dx

    for grad in ("analytic", "autodiff"):
        # (a) equal shards: 4-device sync == one device on the whole batch.
        y, new, dp, dx = sharded(grad)
        ry, rnew, rdp, rdx = reference(x, dy, grad)
        out[f"shard_map_{grad}"] = {"y": err(y, ry), "stats": tree_err(new, rnew), "dparams": tree_err(dp, rdp), "dx": err(dx, rdx)}

        # (b) unequal counts via mask == one device on the unmasked rows only.
        y, new, dp, dx = sharded(grad, mask)
        ry, rnew, rdp, rdx = reference(x[valid], dy[valid], grad)
        out[f"masked_{grad}"] = {
            "y": err(np.asarray(y)[valid], ry), "stats": tree_err(new, rnew),
            "dparams": tree_err(dp, rdp), "dx": err(np.asarray(dx)[valid], rdx),
        }

        # (b') the same with NaN/inf padding and NaN output cotangents there: selected away on every device.
        x_nan = jnp.where(jnp.asarray(valid)[:, None], x, jnp.nan).at[9, 2].set(jnp.inf)  # row 9: padding
        dy_nan = jnp.where(jnp.asarray(valid)[:, None], dy, jnp.nan)
        y, new, dp, dx = sharded(grad, mask, x_nan, dy_nan)
        out[f"masked_nan_{grad}"] = {
            "y": err(np.asarray(y)[valid], ry), "stats": tree_err(new, rnew),
            "dparams": tree_err(dp, rdp), "dx": err(np.asarray(dx)[valid], rdx),
            "dx_padding": float(np.max(np.abs(np.asarray(dx)[~valid]))),
        }

        # (c) a named vmap axis as the batch axis.
        def member(p, xs):
            return batch_norm(p, stats, xs, True, axis_name="batch", grad=grad, **OPTS)
        vm = jax.vmap(member, in_axes=(None, 0), out_axes=(0, None), axis_name="batch")

        def vloss(p, xs):
            y, new = vm(p, xs.reshape(D, N, C))
            return jnp.sum(y.reshape(D * N, C) * dy), (y.reshape(D * N, C), new)
        (_, (y, new)), (dp, dx) = jax.jit(jax.value_and_grad(vloss, argnums=(0, 1), has_aux=True))(params, x)
        ry, rnew, rdp, rdx = reference(x, dy, grad)
        out[f"vmap_{grad}"] = {"y": err(y, ry), "stats": tree_err(new, rnew), "dparams": tree_err(dp, rdp), "dx": err(dx, rdx)}

    # (d) google/flax#2417: flax.linen.BatchNorm averages per-device means; on unequal counts that is not
    # the mean of the valid rows. momentum=0 makes the new running mean the batch mean itself.
    def flax_local(xs, ms):
        bn = fnn.BatchNorm(use_running_average=False, momentum=0.0, axis_name="data", use_fast_variance=False)
        variables = {"params": params, "batch_stats": stats}
        _, upd = bn.apply(variables, xs, mask=ms.astype(bool), mutable=["batch_stats"])
        return upd["batch_stats"]["mean"]
    flax_mean = jax.jit(jax.shard_map(flax_local, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P()))(x, mask)

    def ours_local(xs, ms):
        return batch_norm(params, stats, xs, True, momentum=0.0, axis_name="data", mask=ms)[1]["mean"]
    ours_mean = jax.jit(jax.shard_map(ours_local, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P()))(x, mask)
    exact = np.asarray(x, np.float64)[valid].mean(0)
    per_device = [np.asarray(x, np.float64)[d * N:d * N + k].mean(0) for d, k in enumerate(valid_per_device)]
    out["flax2417"] = {
        "flax_vs_exact": err(flax_mean, exact),
        "flax_vs_mean_of_device_means": err(flax_mean, np.mean(per_device, 0)),
        "ours_vs_exact": err(ours_mean, exact),
    }

    # (e) unsynchronised ("ghost" per-device) BN: axis_name=None inside shard_map == BN of each shard, and
    # the gradient of the replicated scale/bias is the sum of the per-shard gradients.
    def unsynced(p, xs):
        y, new = batch_norm(p, stats, xs, True, **OPTS)
        return y, jax.tree.map(lambda v: v[None], new)
    f_unsynced = jax.shard_map(unsynced, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P("data")))

    def uloss(p, xs):
        y, new = f_unsynced(p, xs)
        return jnp.sum(y * dy), (y, new)
    (_, (y, new)), (dp, dx) = jax.jit(jax.value_and_grad(uloss, argnums=(0, 1), has_aux=True))(params, x)
    errs, dp_sum = [], jax.tree.map(jnp.zeros_like, params)
    for d in range(D):
        rows = slice(d * N, (d + 1) * N)
        ry, rnew, rdp, rdx = reference(x[rows], dy[rows], "analytic")
        errs += [err(y[rows], ry), err(dx[rows], rdx), tree_err(jax.tree.map(lambda v: v[d], new), rnew)]
        dp_sum = jax.tree.map(jnp.add, dp_sum, rdp)
    out["unsynced"] = max(errs + [tree_err(dp, dp_sum)])
    print("RESULT " + json.dumps(out))
    '''
)


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


TOL = 1e-6


@pytest.mark.parametrize("grad", ["analytic", "autodiff"])
@pytest.mark.parametrize("case", ["shard_map", "masked", "masked_nan", "vmap"])
def test_synced_equals_single_device(results, case, grad):
    errs = results[f"{case}_{grad}"]
    assert set(errs) == {"y", "stats", "dparams", "dx"} | ({"dx_padding"} if case == "masked_nan" else set())
    assert max(errs.values()) <= TOL, errs
    if case == "masked_nan":
        assert errs["dx_padding"] == 0.0, errs


def test_count_weighted_fixes_flax_2417(results):
    r = results["flax2417"]
    assert r["ours_vs_exact"] <= TOL, r
    # flax computes the mean of per-device means, which is off by far more than rounding here.
    assert r["flax_vs_mean_of_device_means"] <= TOL, r
    assert r["flax_vs_exact"] > 1e-2, r


def test_unsynced_is_per_shard_batch_norm(results):
    assert results["unsynced"] <= TOL, results["unsynced"]
