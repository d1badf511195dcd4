"""Checkpoints: a run killed with SIGKILL and resumed equals an uninterrupted run; mismatches are refused."""

import errno
import hashlib
import logging
import os
import signal
import struct
import tempfile
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
from bnjax.train._checkpoint import CheckpointError, checkpoint_path, previous_checkpoint_path, verify_checkpoints

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

    seen, trained = [], []
    resumed = train_ensemble(TOY_SPEC, CFG, toy_data(), MEMBERS, checkpoint_dir=ckpt, resume=True,
                             callback=lambda e, m: seen.append((e, m)))
    # The callback sees every epoch once: the checkpoint's epochs again (saved values), then the trained ones.
    uninterrupted = train_ensemble(TOY_SPEC, CFG, toy_data(), MEMBERS, callback=lambda e, m: trained.append((e, m)))
    assert [e for e, _ in seen] == [e for e, _ in trained] == list(range(6))
    for (_, a), (_, b) in zip(seen, trained):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
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
    # A finished run resumes to the same result without training again (the callback sees the saved epochs).
    calls = []
    again = train_ensemble(TOY_SPEC, TOY_CFG, data, MEMBERS, checkpoint_dir=tmp_path, resume=True,
                           callback=lambda e, m: calls.append(e))
    assert calls == [0, 1, 2]
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


# ------------------------------------------------------------------------------------------------ integrity

FP = {"run": 1}


def _save_epochs(directory, epochs):
    for e in epochs:
        save_checkpoint(directory, FP, {"epoch": e, "x": np.full(50, e, np.float32)})


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:-7]
    elif how == "flipped":
        data[len(data) // 2] ^= 0x01  # one bit in the middle of the contents
    elif how == "length":
        data[13] ^= 0x01  # the body length stored in the header
    path.write_bytes(bytes(data))


def test_file_layout_is_the_documented_header_and_checksum(tmp_path):
    # Independent check of the format: magic, version, length and SHA-256 read back with struct/hashlib.
    _save_epochs(tmp_path, [1])
    data = checkpoint_path(tmp_path).read_bytes()
    magic, version, length, digest = struct.unpack_from("<8sIQ32s", data)
    body = data[52:]
    assert (magic, version, length) == (b"BNJAXCKP", 2, len(body))
    assert digest == hashlib.sha256(body).digest()


DAMAGE_WORDS = {"truncated": "truncated", "flipped": "corrupt: the SHA-256 checksum", "length": "longer than written"}


@pytest.mark.parametrize("how", sorted(DAMAGE_WORDS))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_then_refuses(tmp_path, how, caplog):
    _save_epochs(tmp_path, [1, 2])
    _damage(checkpoint_path(tmp_path), how)
    with caplog.at_level(logging.WARNING, logger="bnjax"):
        got = load_checkpoint(tmp_path, FP)
    assert got["epoch"] == 1
    np.testing.assert_array_equal(got["x"], np.full(50, 1, np.float32))
    assert f"{checkpoint_path(tmp_path)}: {DAMAGE_WORDS[how]}" in caplog.text
    assert "resuming from the previous checkpoint checkpoint.prev.msgpack (epoch 1)" in caplog.text
    assert verify_checkpoints(tmp_path)[0] == previous_checkpoint_path(tmp_path)

    _damage(previous_checkpoint_path(tmp_path), how)  # none intact: refuse, naming both files
    with pytest.raises(CheckpointError, match="No intact checkpoint") as info:
        load_checkpoint(tmp_path, FP)
    msg = str(info.value)
    for path in (checkpoint_path(tmp_path), previous_checkpoint_path(tmp_path)):
        assert f"{path}: {DAMAGE_WORDS[how]}" in msg
    assert verify_checkpoints(tmp_path)[0] is None


def test_a_single_damaged_checkpoint_is_refused(tmp_path):
    _save_epochs(tmp_path, [1])
    checkpoint_path(tmp_path).write_bytes(checkpoint_path(tmp_path).read_bytes()[:30])  # inside the header
    with pytest.raises(CheckpointError, match=r"checkpoint.msgpack: truncated to 30 bytes"):
        load_checkpoint(tmp_path, FP)


def test_only_two_checkpoints_are_kept(tmp_path):
    _save_epochs(tmp_path, [1, 2, 3, 4])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.msgpack", "checkpoint.prev.msgpack"]
    assert load_checkpoint(tmp_path, FP)["epoch"] == 4
    checkpoint_path(tmp_path).unlink()  # a crash between the two renames of a save
    assert load_checkpoint(tmp_path, FP)["epoch"] == 3


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["write", "rename", "read-only"])
def test_full_or_read_only_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    _save_epochs(tmp_path, [1, 2])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if where == "write":  # the disk fills while the new file is flushed
        monkeypatch.setattr(os, "fsync", _no_space)
    elif where == "rename":  # the new file cannot take its place after the newest was kept as the previous one
        real = os.replace
        monkeypatch.setattr(os, "replace", lambda a, b: _no_space() if Path(b) == checkpoint_path(tmp_path)
                            else real(a, b))
    else:  # as root chmod does not stop writes, so the file system's refusal is simulated
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as info:
        _save_epochs(tmp_path, [3])
    monkeypatch.undo()
    err = info.value
    assert err.filename == str(checkpoint_path(tmp_path))
    assert err.errno == (errno.EROFS if where == "read-only" else errno.ENOSPC)
    assert os.strerror(err.errno) in err.strerror and "the checkpoints written before it are kept" in err.strerror
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    assert load_checkpoint(tmp_path, FP)["epoch"] == 2
    if where != "rename":
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # untouched byte for byte


def test_resume_from_the_fallback_checkpoint_is_bit_identical(tmp_path, caplog):
    cfg = TOY_CFG.replace(epochs=3)
    uninterrupted = train_ensemble(TOY_SPEC, cfg, toy_data(), MEMBERS, checkpoint_dir=tmp_path)
    _damage(checkpoint_path(tmp_path), "flipped")  # epoch 3's checkpoint; epoch 2's is intact
    seen = []
    with caplog.at_level(logging.WARNING, logger="bnjax"):
        resumed = train_ensemble(TOY_SPEC, cfg, toy_data(), MEMBERS, checkpoint_dir=tmp_path, resume=True,
                                 callback=lambda e, m: seen.append(e))
    assert seen == [0, 1, 2, 3]  # epochs 0-2 from epoch 2's checkpoint, epoch 3 trained again from its state
    assert "checkpoint.msgpack: corrupt" in caplog.text and "(epoch 2)" in caplog.text
    _assert_same_run(resumed, uninterrupted)


@pytest.mark.parametrize("every, large, expect", [
    (0, False, [1, 2, 3, 4, 5]),  # every epoch
    (1e6, False, [5]),  # never due before the last epoch, which is always saved
    ("auto", False, [1, 2, 3, 4, 5]),  # a small state: every epoch
    ("auto", True, [1, 5]),  # a large one: once nine times the last save (0.2 s here) has passed, and the last
])
def test_when_checkpoints_are_saved(every, large, expect, tmp_path, monkeypatch):
    from bnjax.train import _checkpoint, _progress

    saved, real = [], _checkpoint.save_checkpoint

    def save(directory, fingerprint, payload):
        saved.append(int(payload["epoch"]))
        time.sleep(0.2 if large else 0.0)
        return real(directory, fingerprint, payload)

    monkeypatch.setattr(_checkpoint, "save_checkpoint", save)
    if large:
        monkeypatch.setattr(_progress, "AUTO_EVERY_EPOCH_BYTES", 0)
    train_ensemble(TOY_SPEC, CFG, toy_data(), MEMBERS, checkpoint_dir=tmp_path, checkpoint_every=every)
    assert saved == expect
    with pytest.raises(ValueError, match=r"checkpoint_every=-1 must be 'auto' or a number of seconds >= 0"):
        train_ensemble(TOY_SPEC, CFG, toy_data(), MEMBERS, checkpoint_dir=tmp_path, checkpoint_every=-1)
