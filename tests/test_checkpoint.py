"""Checkpoints: a run killed with SIGKILL and resumed equals an uninterrupted run; mismatches are refused."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from train_helpers import TOY_CFG, TOY_SPEC, toy_data

from bnjax.train import load_checkpoint, make_fingerprint, save_checkpoint, train_ensemble
from bnjax.train._checkpoint import checkpoint_path

MEMBERS = {"seed": [0, 1], "learning_rate": [1e-2, 3e-3]}
CFG = TOY_CFG.replace(epochs=5)


def _assert_same_run(a, b):
    assert set(a.history) == set(b.history)
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    np.testing.assert_array_equal(a.diverged_step, b.diverged_step)
    for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
        np.testing.assert_array_equal(x, y)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ckpt = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from train_helpers import TOY_CFG, TOY_SPEC, toy_data
        from bnjax.train import train_ensemble
        train_ensemble(TOY_SPEC, TOY_CFG.replace(epochs=5), toy_data(), {MEMBERS!r},
                       checkpoint_dir={str(ckpt)!r}, resume=True, callback=lambda e, m: time.sleep(1))
        print("finished")
    """)
    log = tmp_path / "child.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 120
        try:
            while not checkpoint_path(ckpt).exists():
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.time() < deadline, "no checkpoint written in time"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)  # mid-run: the callback sleeps after every epoch
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # No temp file left behind; the newest checkpoint and (after two epochs) the one before it.
    assert {p.name for p in ckpt.iterdir()} <= {"checkpoint.msgpack", "checkpoint.prev.msgpack"}

    fingerprint = make_fingerprint(TOY_SPEC, CFG, [], toy_data(), shared_batches=False)
    with pytest.raises(ValueError, match=r"\(checkpoint\) vs \[\] \(now\)"):
        load_checkpoint(ckpt, fingerprint)

    epochs_seen = []
    resumed = train_ensemble(TOY_SPEC, CFG, toy_data(), MEMBERS, checkpoint_dir=ckpt, resume=True,
                             callback=lambda e, m: epochs_seen.append(e))
    assert 2 <= epochs_seen[0] <= 5 and epochs_seen[-1] == 5  # continued where the killed run stopped
    uninterrupted = train_ensemble(TOY_SPEC, CFG, toy_data(), MEMBERS)
    _assert_same_run(resumed, uninterrupted)
    assert len(resumed.epoch_times) == 5


def test_mismatched_checkpoint_is_refused(tmp_path):
    data = toy_data()
    first = train_ensemble(TOY_SPEC, TOY_CFG, data, MEMBERS, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cfg.learning_rate: 0.01 \(checkpoint\) vs 0.02 \(now\).*new output "
                                         r"directory \(--out\), or delete .*checkpoint.msgpack"):
        train_ensemble(TOY_SPEC, TOY_CFG.replace(learning_rate=2e-2), data, MEMBERS, checkpoint_dir=tmp_path,
                       resume=True)
    with pytest.raises(ValueError, match=r"data.hash"):
        train_ensemble(TOY_SPEC, TOY_CFG, toy_data(seed=1), MEMBERS, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"spec.hidden"):
        train_ensemble(TOY_SPEC.replace(hidden=(8, 4)), TOY_CFG, data, MEMBERS, checkpoint_dir=tmp_path,
                       resume=True)
    # A finished run resumes to the same result without training again.
    calls = []
    again = train_ensemble(TOY_SPEC, TOY_CFG, data, MEMBERS, checkpoint_dir=tmp_path, resume=True,
                           callback=lambda e, m: calls.append(e))
    assert calls == []
    _assert_same_run(first, again)
    assert again.epoch_times == first.epoch_times


def test_save_load_roundtrip(tmp_path):
    fp = {"spec": {"a": 1}, "cfg": {"b": [1, 2]}}
    payload = {"epoch": 3, "x": np.arange(6, dtype=np.float32).reshape(2, 3), "nested": {"k": np.int32(4)}}
    path = save_checkpoint(tmp_path, fp, payload)
    assert path == tmp_path / "checkpoint.msgpack" and sorted(os.listdir(tmp_path)) == ["checkpoint.msgpack"]
    got = load_checkpoint(tmp_path, fp)
    assert got["epoch"] == 3 and int(got["nested"]["k"]) == 4
    np.testing.assert_array_equal(got["x"], payload["x"])
    assert load_checkpoint(tmp_path / "missing", fp) is None
    with pytest.raises(ValueError, match=r"cfg.b: \[1, 2\] \(checkpoint\) vs \[1, 3\] \(now\)"):
        load_checkpoint(tmp_path, {"spec": {"a": 1}, "cfg": {"b": [1, 3]}})


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_train_state_roundtrip_every_optimizer(tmp_path, optimizer):
    from bnjax.train import init_ensemble, resolve_members
    from bnjax.train._checkpoint import restore_tree, to_state_dict

    cfg = TOY_CFG.replace(optimizer=optimizer, weight_decay=0.1 if optimizer == "adamw" else 0.0)
    states = jax.device_get(init_ensemble(TOY_SPEC, cfg, resolve_members(TOY_SPEC, cfg, MEMBERS)))
    save_checkpoint(tmp_path, {}, {"state": to_state_dict(states)})
    back = restore_tree(states, load_checkpoint(tmp_path, {})["state"])
    assert jax.tree.structure(back) == jax.tree.structure(states)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(states)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
