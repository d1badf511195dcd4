"""Ensembles sharded over a device mesh: ``train_ensemble(..., parallel=Parallel(members, data, sync_bn))``
(bnjax/train/_sharded.py) on 4 simulated CPU devices.

XLA's device count is fixed when JAX starts, so every multi-device run happens once in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; it prints a JSON dict of errors that the tests below
check. The references are independent of the sharded program: the same ensemble trained on one device
(``parallel=None``, the plain ``vmap`` program) and, for unsynchronised batch norm, the running statistics
recomputed in NumPy from each device's half of the batch. Errors of the ``Parallel`` fields themselves are
checked in-process on one device.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from bnjax import MLPSpec
from bnjax._typing import FieldError
from bnjax.data import load_dataset
from bnjax.train import Parallel, TrainConfig, train_ensemble

PRELUDE = r"""
import json
import shutil
import tempfile
import time

import jax
import numpy as np

from bnjax import MLPSpec
from bnjax.data import Dataset, load_dataset
from bnjax.train import Parallel, TrainConfig, init_ensemble, resolve_members, train_ensemble
from bnjax.train._step import epoch_batches

t_start = time.perf_counter()
assert jax.device_count() == 4, jax.devices()
data = load_dataset("digits")  # 1000 / 347 / 450 examples of 64 features, 10 classes
spec = MLPSpec(hidden=(32, 32), norm="batch", num_classes=None, init="he")
# Heavy-ball SGD: Adam's normalised update turns float reassociation in near-zero gradient coordinates into
# steps of size ~lr (about 3e-5 relative already between vmap widths 2 and 4 on one device).
cfg = TrainConfig(optimizer="momentum", learning_rate=0.1, batch_size=50, epochs=1, eval_train_samples=500,
                  eval_batch_size=500)
MEMBERS = {"seed": [0, 1, 2, 3], "learning_rate": [0.1, 0.05, 0.2, 0.02]}
# One step on 50 training examples (the batch is all of them), for the NumPy reference of BN statistics.
small = Dataset(data.x_train[:50], data.y_train[:50], data.x_val[:100], data.y_val[:100], data.x_test[:100],
                data.y_test[:100], name="digits50", num_classes=10)
out = {}


def first(k):
    return {name: v[:k] for name, v in MEMBERS.items()}


def rel(a, b):
    # max|a - b| / max|b| (b the reference); the plain difference where b is all zeros.
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale, diff = float(np.max(np.abs(b))), float(np.max(np.abs(a - b)))
    return diff / scale if scale > 0 else diff


def tree_rel(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0 and all(np.shape(u) == np.shape(v) for u, v in zip(la, lb))
    return max(rel(u, v) for u, v in zip(la, lb))


def compare(res, ref):
    # Errors of a run against a reference run's first K members (K = the run's member count).
    k = res.num_members
    cut = lambda t: jax.tree.map(lambda v: np.asarray(v)[:k], t)
    return {
        "num_members": k, "members_match": res.members == ref.members[:k],
        "history_keys": sorted(res.history) == sorted(ref.history),
        "history_shape": all(res.history[m].shape == ref.history[m][:k].shape for m in ref.history),
        "params": tree_rel(res.params, cut(ref.params)),
        "batch_stats": tree_rel(res.batch_stats, cut(ref.batch_stats)),
        "history": max(float(np.max(np.abs(res.history[m] - ref.history[m][:k]))) for m in ref.history),
        "loss_history": rel(res.loss_history, ref.loss_history[:k]),
        "loss_shape": list(res.loss_history.shape) == list(ref.loss_history[:k].shape),
        "diverged_equal": bool(np.array_equal(res.diverged_step, ref.diverged_step[:k])),
        "finite": bool(all(np.all(np.isfinite(v)) for v in jax.tree.leaves(res.params))),
        "trained": float(np.min(res.history["val_acc"][:, -1] - res.history["val_acc"][:, 0])),
    }


def bn_stats_check(parallel, k):
    # One SGD step of k members on `small` under `parallel` (data = 2): the running statistics against
    # NumPy from the initial parameters. Device d takes rows idx[25 d : 25 (d + 1)] of the member's
    # permutation; synced BN updates with the statistics of all 50 rows, unsynced BN with the mean over the
    # devices of each device's update from its own 25 rows.
    one = cfg.replace(optimizer="sgd")
    model = spec.replace(bn_momentum=0.5)  # a larger batch share than 0.9: a larger synced/unsynced gap
    run = train_ensemble(model, one, small, first(k), parallel=parallel)
    full = model.replace(in_features=64, num_classes=10)
    s0 = jax.device_get(init_ensemble(full, one, resolve_members(full, one, first(k))))
    mom, eps = full.bn_momentum, full.bn_eps

    def batch_stats(p, x):
        # The BN layers' (mean, biased var) of the batch x under params p (float64).
        res, h = {}, x @ p["dense_0"]["weight"].T
        for i in range(2):
            mu, var = h.mean(0), h.var(0)
            res[f"bn_{i}"] = (mu, var)
            h = np.maximum((h - mu) / np.sqrt(var + eps) * p[f"bn_{i}"]["scale"] + p[f"bn_{i}"]["bias"], 0)
            h = h @ p[f"dense_{i + 1}"]["weight"].T
        return res

    x64 = np.asarray(small.x_train, np.float64)
    errs, errs_other = [], []
    for m in range(k):
        p = jax.tree.map(lambda v: np.asarray(v[m], np.float64), s0.params)
        idx = np.asarray(epoch_batches(s0.key[m], 0, 50, 1, 50))[0]
        halves = [batch_stats(p, x64[idx[d * 25:(d + 1) * 25]]) for d in range(2)]
        whole = batch_stats(p, x64[idx])
        for name in ("bn_0", "bn_1"):
            for j, stat in enumerate(("mean", "var")):
                old = s0.batch_stats[name][stat][m]
                unsynced = np.mean([mom * old + (1 - mom) * h[name][j] for h in halves], 0)
                synced = mom * old + (1 - mom) * whole[name][j]
                expect, other = (synced, unsynced) if parallel.sync_bn else (unsynced, synced)
                errs.append(rel(run.batch_stats[name][stat][m], expect))
                errs_other.append(rel(run.batch_stats[name][stat][m], other))
    return {"stats": max(errs), "stats_vs_other_reference": max(errs_other),
            "finite": bool(np.all(np.isfinite(run.loss_history)))}
"""

FAST = r"""
# One-device reference (the plain vmap program), and members x data = 2 x 2 on the 4 devices with 3 members
# (padded to 4: a copy of member 2 trains alongside and is dropped).
ref = train_ensemble(spec, cfg, data, first(3))
layout = Parallel(members=2, data=2)
out["members2_data2_k3"] = compare(train_ensemble(spec, cfg, data, first(3), parallel=layout), ref)

# Unsynchronised BN over the data axis against NumPy.
out["unsynced_bn"] = bn_stats_check(Parallel(members=2, data=2, sync_bn=False), 3)

# Checkpoints under sharding (the compiled programs above are reused): an interrupted run resumed equals the
# uninterrupted one, and the sharded checkpoint resumes on one device.
two = cfg.replace(epochs=2)
tmp = tempfile.mkdtemp()


class Stop(Exception):
    pass


def stop_after_1(epoch, metrics):
    if epoch == 1:
        raise Stop


whole_run = train_ensemble(spec, two, data, first(3), parallel=layout, checkpoint_dir=f"{tmp}/a")
try:
    train_ensemble(spec, two, data, first(3), parallel=layout, checkpoint_dir=f"{tmp}/b", callback=stop_after_1)
    raise AssertionError("the callback did not stop the run")
except Stop:
    pass
shutil.copytree(f"{tmp}/b", f"{tmp}/c")
seen_b, seen_c = [], []
resumed = train_ensemble(spec, two, data, first(3), parallel=layout, checkpoint_dir=f"{tmp}/b", resume=True,
                         callback=lambda e, m: seen_b.append(e))
on_one = train_ensemble(spec, two, data, first(3), checkpoint_dir=f"{tmp}/c", resume=True,
                        callback=lambda e, m: seen_c.append(e))
out["resume_sharded"] = compare(resumed, whole_run) | {"epochs_trained": seen_b}
# Chunks of members compose with the layout: chunks of 2 members, each sharded over the 2 member devices.
out["chunks_of_2_members2"] = compare(
    train_ensemble(spec, cfg.replace(member_chunk=2), data, first(3), parallel=Parallel(members=2)), ref)
out["resume_one_device"] = compare(on_one, whole_run) | {"epochs_trained": seen_c}
out["two_epochs_vs_one_device"] = compare(whole_run, train_ensemble(spec, two, data, first(3)))
shutil.rmtree(tmp)


def error(parallel, config=cfg):
    # The ValueError of a layout that does not fit (raised before anything is compiled), or None.
    try:
        train_ensemble(spec, config, data, first(2), parallel=parallel)
    except ValueError as e:
        return str(e)
    return None


# Ghost BN (per-example chunks of 5 rows): each device's 25 rows are 5 whole ghost batches of the global batch, so
# data parallelism computes what one device computes.
ghost = spec.replace(norm="ghost", virtual_batch_size=5)
out["ghost_data2"] = compare(train_ensemble(ghost, cfg, data, first(2), parallel=Parallel(members=1, data=2)),
                             train_ensemble(ghost, cfg, data, first(2)))
out["ghost_error"] = None
try:
    train_ensemble(spec.replace(norm="ghost", virtual_batch_size=10), cfg, data, first(2),
                   parallel=Parallel(members=1, data=2))
except ValueError as e:
    out["ghost_error"] = str(e)

# Dropout masks are drawn per row of the global batch: members over 2 devices, each batch over 2 devices and
# chunks of members all draw one device's masks.
drop = spec.replace(dropout=0.3)
drop_ref = train_ensemble(drop, cfg, data, first(3))
out["dropout"] = {
    name: compare(train_ensemble(drop, cfg.replace(member_chunk=chunk), data, first(3), parallel=layout_), drop_ref)
    for name, layout_, chunk in (("members2", Parallel(members=2), "auto"), ("data2", Parallel(members=1, data=2), 2),
                                 ("members2_data2", Parallel(members=2, data=2), "auto"))
}

out["errors"] = {
    "batch": error(Parallel(members=1, data=4)),
    "too_many": error(Parallel(members=3, data=2)),
    "data_too_many": error(Parallel(data=8)),
}
out["seconds"] = time.perf_counter() - t_start
print("RESULT " + json.dumps(out))
"""

SLOW = r"""
ref = train_ensemble(spec, cfg, data, MEMBERS)
ref_shared = train_ensemble(spec, cfg, data, MEMBERS, shared_batches=True)
runs = {
    "members2_k4": (MEMBERS, False, Parallel(members=2)),
    "members2_k3": (first(3), False, Parallel(members=2)),
    "data2_sync": (first(2), False, Parallel(members=1, data=2)),
    "auto_data2_k4": (MEMBERS, False, Parallel(data=2)),  # "auto": members = 4 // 2
    "members2_shared": (MEMBERS, True, Parallel(members=2)),
    "data2_shared": (MEMBERS, True, Parallel(members=1, data=2)),
}
for name, (members, shared, parallel) in runs.items():
    res = train_ensemble(spec, cfg, data, members, shared_batches=shared, parallel=parallel)
    out[name] = compare(res, ref_shared if shared else ref)
out["synced_bn"] = bn_stats_check(Parallel(members=1, data=2, sync_bn=True), 2)
out["unsynced_bn_data2"] = bn_stats_check(Parallel(members=1, data=2, sync_bn=False), 2)
# Dropout with data = 2 and shared batches: the masks of one device.
drop = spec.replace(dropout=0.2)
out["dropout_data2_shared"] = compare(
    train_ensemble(drop, cfg, data, MEMBERS, shared_batches=True, parallel=Parallel(members=1, data=2)),
    train_ensemble(drop, cfg, data, MEMBERS, shared_batches=True))
out["seconds"] = time.perf_counter() - t_start
print("RESULT " + json.dumps(out))
"""


def _run(body):
    """Runs PRELUDE + body on 4 simulated CPU devices in a fresh process; its RESULT dict."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", PRELUDE + body], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def results():
    return _run(FAST)


@pytest.fixture(scope="module")
def slow_results():
    return _run(SLOW)


PARAMS_TOL = 1e-5  # max|a - b| / max|b| per leaf: float summation order only
HISTORY_TOL = 1e-4
LOSS_TOL = 1e-5


def _assert_matches(r, k):
    assert r["num_members"] == k and r["members_match"], r
    assert r["history_keys"] and r["history_shape"] and r["loss_shape"], r
    assert r["finite"] and r["diverged_equal"], r
    assert r["params"] <= PARAMS_TOL and r["batch_stats"] <= PARAMS_TOL, r
    assert r["history"] <= HISTORY_TOL, r
    assert r["loss_history"] <= LOSS_TOL, r
    # Every member learned (the runs compared are not two untrained states).
    assert r["trained"] > 0.3, r


def test_members_and_data_sharded_with_padding_equals_one_device(results):
    _assert_matches(results["members2_data2_k3"], 3)


def _assert_bn_stats(r):
    assert r["stats"] <= 1e-5 and r["finite"], r
    # Against the other mode's reference (synced vs unsynced) the error is far above the tolerance: the
    # check tells the two apart.
    assert r["stats_vs_other_reference"] > 1e-3, r


def test_unsynced_bn_running_stats_are_the_mean_of_the_devices_updates(results):
    _assert_bn_stats(results["unsynced_bn"])


def test_sharded_checkpoint_resumes_bit_identically(results):
    r = results["resume_sharded"]
    assert r["epochs_trained"] == [0, 1, 2], r  # the checkpoint's epochs replayed, then epoch 2 trained
    _assert_matches(r, 3)
    assert r["params"] == r["batch_stats"] == r["history"] == r["loss_history"] == 0.0, r


def test_sharded_checkpoint_resumes_on_one_device(results):
    r = results["resume_one_device"]
    assert r["epochs_trained"] == [0, 1, 2], r
    _assert_matches(r, 3)
    _assert_matches(results["two_epochs_vs_one_device"], 3)


def test_ghost_bn_with_data_parallel_equals_one_device(results):
    _assert_matches(results["ghost_data2"], 2)
    e = results["ghost_error"]
    assert e is not None and "virtual_batch_size=10" in e and "batch_size=50" in e and "25 rows" in e, e


def test_chunks_of_members_compose_with_the_layout(results):
    _assert_matches(results["chunks_of_2_members2"], 3)


@pytest.mark.parametrize("case", ["members2", "data2", "members2_data2"])
def test_dropout_masks_do_not_depend_on_the_layout(results, case):
    r = results["dropout"][case]
    _assert_matches(r, 3)
    assert r["loss_history"] <= 1e-6 and r["params"] <= 1e-6, r


def test_layouts_that_do_not_fit_name_the_keys(results):
    e = results["errors"]
    assert e["batch"] is not None and "parallel.data = 4 does not divide train.batch_size = 50" in e["batch"], e
    assert e["too_many"] is not None and "parallel.members = 3 x parallel.data = 2 needs 6 devices, there are 4" \
        in e["too_many"], e
    assert e["data_too_many"] is not None and "parallel.data = 8 needs 8 devices, there are 4" in e["data_too_many"], e


@pytest.mark.slow
@pytest.mark.parametrize("case,k", [("members2_k4", 4), ("members2_k3", 3), ("data2_sync", 2), ("auto_data2_k4", 4),
                                    ("members2_shared", 4), ("data2_shared", 4)])
def test_layouts_equal_one_device(slow_results, case, k):
    _assert_matches(slow_results[case], k)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["synced_bn", "unsynced_bn_data2"])
def test_bn_running_stats_with_data_parallel(slow_results, case):
    _assert_bn_stats(slow_results[case])


@pytest.mark.slow
def test_dropout_with_data_parallel_and_shared_batches_equals_one_device(slow_results):
    r = slow_results["dropout_data2_shared"]
    _assert_matches(r, 4)
    assert r["loss_history"] <= 1e-6, r


@pytest.mark.parametrize("kwargs,field", [
    ({"members": 0}, "members"), ({"members": "all"}, "members"), ({"members": 1.5}, "members"),
    ({"data": -1}, "data"), ({"data": 0}, "data"), ({"data": True}, "data"), ({"sync_bn": "yes"}, "sync_bn"),
])
def test_invalid_parallel_fields_raise_field_error(kwargs, field):
    with pytest.raises(FieldError, match=rf"Parallel: {field}=") as info:
        Parallel(**kwargs)
    assert info.value.field == field


def test_layouts_beyond_this_process_devices_name_the_keys():
    n = jax.device_count()  # 1 in the default test process
    data = load_dataset("digits")
    spec = MLPSpec(hidden=(8,), norm="batch", num_classes=None)
    cfg = TrainConfig(batch_size=60, epochs=1)
    with pytest.raises(ValueError, match=rf"parallel\.data = {n + 1} needs {n + 1} devices, there are {n}"):
        train_ensemble(spec, cfg, data, parallel=Parallel(data=n + 1))
    with pytest.raises(ValueError, match=rf"parallel\.members = {n + 1} x parallel\.data = 1 needs {n + 1} devices"):
        train_ensemble(spec, cfg, data, parallel=Parallel(members=n + 1))
    with pytest.raises(TypeError, match=r"parallel must be a bnjax\.train\.Parallel"):
        train_ensemble(spec, cfg, data, parallel={"data": 2})
