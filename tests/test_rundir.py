"""A results directory is a complete run, a resumable interrupted run, or absent: locking, cleanup of runs that
stop before their first epoch, Ctrl-C / SIGTERM / full disk mid-run, and resumes that end bit-identical."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bnjax import cli
from bnjax.run import runner
from bnjax.run._errors import RunError
from bnjax.run._rundir import MetricsLog, acquire_lock, checkpoint_files, inspect_run_dir, kept_message
from bnjax.run.results import read_metrics
from bnjax.train._checkpoint import checkpoint_path, verify_checkpoints

TINY = """\
[study]
name = "tiny"

[data]
name = "synthetic"
loader = { num_samples = 120, num_features = 4, num_test = 20 }
num_val = 20

[model]
hidden = [8]
norm = "batch"

[train]
optimizer = "sgd"
learning_rate = 0.1
batch_size = 10
epochs = 3
eval_train_samples = 50
eval_batch_size = 50

[sweep]
seeds = [0, 1]
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.toml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(out: str, *extra: str) -> int:
    return cli.main(["run", "configs/tiny.toml", "--out", out, "--quiet", *extra])


def _at_epoch(monkeypatch, epoch: int, action) -> None:
    """Runs ``action()`` in the training callback after ``epoch`` (its checkpoint is already written)."""
    real = runner.train_ensemble

    def wrapped(spec, cfg, data, members, *, callback, **kw):
        def cb(e, metrics):
            callback(e, metrics)
            if e == epoch:
                action()

        return real(spec, cfg, data, members, callback=cb, **kw)

    monkeypatch.setattr(runner, "train_ensemble", wrapped)


def _saved(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "variants" / "tiny" / "history.npz") as z:
        return {k: z[k] for k in z.files}


def _assert_bit_identical(a: Path, b: Path) -> None:
    x, y = _saved(a), _saved(b)
    assert set(x) == set(y)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    key = lambda r: (r["variant"], r["member"], r["epoch"])  # noqa: E731
    assert sorted(read_metrics(a / "metrics.jsonl"), key=key) == sorted(read_metrics(b / "metrics.jsonl"), key=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the tiny config (one for the module)."""
    root = tmp_path_factory.mktemp("reference")
    (root / "configs").mkdir()
    (root / "configs" / "tiny.toml").write_text(TINY)
    assert cli.main(["run", str(root / "configs" / "tiny.toml"), "--out", str(root / "ref"), "--quiet"]) == 0
    return root / "ref"


def _resume_command(err: str) -> list[str]:
    line = [ln for ln in err.splitlines() if "resume with: " in ln]
    assert len(line) == 1, err
    argv = shlex.split(line[0].split("resume with: ")[1])
    assert argv[0] == "bnjax"
    return argv[1:]


# ----------------------------------------------------------------------------------- interruptions, mid-run

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_keeps_metrics_and_checkpoint_and_resume_is_bit_identical(project, reference, monkeypatch,
                                                                                    capsys, sig):
    with monkeypatch.context() as m:
        _at_epoch(m, 2, lambda: signal.raise_signal(sig))
        code = _run("out")
    err = capsys.readouterr().err
    assert code == 128 + sig == (130 if sig == signal.SIGINT else 143)
    how = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert f"interrupted ({how}) in variant 'tiny' after epoch 2; the metrics and the last complete epoch's " \
           f"checkpoint are saved in out." in err
    assert "Traceback" not in err
    out = Path("out")
    assert inspect_run_dir(out).kind == "interrupted"
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted" and signal.Signals(sig).name in meta["stopped_by"]
    assert {(r["epoch"], r["member"]) for r in read_metrics(out / "metrics.jsonl")} == {(e, k) for e in (0, 1, 2) for k in (0, 1)}
    assert verify_checkpoints(out / "checkpoints" / "tiny") == (checkpoint_path(out / "checkpoints" / "tiny"), [])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone

    argv = _resume_command(err)
    assert argv == ["run", "configs/tiny.toml", "--out", "out", "--resume", "--quiet"]
    assert cli.main(argv) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    _assert_bit_identical(out, reference)


def test_damaged_newest_checkpoint_resumes_from_the_previous_one_bit_identical(project, reference, monkeypatch,
                                                                                capsys):
    with monkeypatch.context() as m:
        _at_epoch(m, 2, lambda: signal.raise_signal(signal.SIGINT))
        assert _run("out") == 130
    argv = _resume_command(capsys.readouterr().err)
    newest = Path("out/checkpoints/tiny/checkpoint.msgpack")
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x04
    newest.write_bytes(bytes(data))
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "bnjax run: warning: out/checkpoints/tiny/checkpoint.msgpack: corrupt" in err
    assert "resuming from the previous checkpoint checkpoint.prev.msgpack (epoch 1)" in err
    _assert_bit_identical(Path("out"), reference)


def _run_with_full_disk_at(monkeypatch, name: str) -> int:
    """``_run("out")`` with the disk full when a checkpoint is renamed to ``name``."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        return _run("out")


def test_full_disk_mid_run_names_the_file_keeps_the_checkpoint_and_resumes(project, reference, monkeypatch, capsys):
    code = _run_with_full_disk_at(monkeypatch, "checkpoint.prev.msgpack")  # the second epoch's save
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert ("bnjax run: error: out/checkpoints/tiny/checkpoint.msgpack: could not write the checkpoint (No space "
            "left on device); the checkpoints written before it are kept") in err
    assert len(err.strip().splitlines()) == 2
    assert inspect_run_dir(Path("out")).kind == "interrupted"
    assert verify_checkpoints(Path("out/checkpoints/tiny"))[0] == Path("out/checkpoints/tiny/checkpoint.msgpack")
    assert cli.main(_resume_command(err)) == 0
    _assert_bit_identical(Path("out"), reference)


def test_ctrl_c_before_the_first_epoch_claims_no_checkpoint(project, monkeypatch, capsys):
    # Only the epoch-0 metrics (the untrained model's evaluation) exist: no checkpoint may be announced.
    with monkeypatch.context() as m:
        _at_epoch(m, 0, lambda: signal.raise_signal(signal.SIGINT))
        assert _run("out") == 130
    err = capsys.readouterr().err
    assert checkpoint_files(Path("out")) == [] and {r["epoch"] for r in read_metrics(Path("out/metrics.jsonl"))} == {0}
    assert ("bnjax run: interrupted (Ctrl-C) before an epoch finished; the metrics written so far are saved in out; "
            "there is no checkpoint yet, so training starts again from the first epoch.\nresume with: bnjax run "
            "configs/tiny.toml --out out --resume --quiet") in err


def test_full_disk_at_the_first_checkpoint_claims_no_checkpoint(project, monkeypatch, capsys):
    assert _run_with_full_disk_at(monkeypatch, "checkpoint.msgpack") == 2  # the first epoch's save
    err = capsys.readouterr().err
    assert checkpoint_files(Path("out")) == [] and inspect_run_dir(Path("out")).kind == "interrupted"
    assert "checkpoint are kept" not in err and "checkpoint are saved" not in err  # what the old message said
    assert ("The metrics written so far are saved in out; there is no checkpoint yet, so training starts again "
            "from the first epoch; resume with: bnjax run configs/tiny.toml --out out --resume --quiet") in err


def test_kept_message_names_what_is_on_disk(tmp_path):
    from bnjax.train._checkpoint import save_checkpoint

    out = tmp_path / "out"
    assert kept_message(out) is None  # absent: nothing kept
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text(json.dumps({"variant": "a", "member": 0, "epoch": 0}) + "\n")
    assert kept_message(out) == (f"the metrics written so far are saved in {out}; there is no checkpoint yet, so "
                                 f"training starts again from the first epoch")
    save_checkpoint(out / "checkpoints" / "a", {"run": 1}, {"epoch": 1})
    assert kept_message(out) == f"the metrics and the last complete epoch's checkpoint are saved in {out}"
    for name in ("a", "b"):
        (out / "variants" / name).mkdir(parents=True)
        (out / "variants" / name / "history.npz").write_bytes(b"")
    save_checkpoint(out / "checkpoints" / "c", {"run": 1}, {"epoch": 1})
    assert kept_message(out) == (f"the finished variants 'a', 'b', the metrics and the last complete epoch's "
                                 f"checkpoint of variant 'c' are saved in {out}")
    shutil.rmtree(out / "checkpoints")
    assert kept_message(out) == (f"the finished variants 'a', 'b' and the metrics written so far are saved in {out}; "
                                 f"there is no checkpoint of the unfinished variants, so they train again from their "
                                 f"first epoch")
    (out / "run.json").write_text(json.dumps({"status": "complete"}))
    assert kept_message(out) is None


# --------------------------------------------------------------------------- nothing half-written, locking

class Crash(Exception):
    pass


def _crash():
    raise Crash


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(project, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise Crash  # e.g. the program fails to compile: a bug, with its traceback

    monkeypatch.setattr(runner, "train_ensemble", broken)
    with pytest.raises(Crash):
        _run("runs/new")
    assert not Path("runs/new").exists()  # created by the run, removed by it
    Path("empty").mkdir()
    with pytest.raises(Crash):
        _run("empty")
    assert list(Path("empty").iterdir()) == []  # given empty, left empty
    # Ctrl-C before an epoch finished: exit 130, nothing kept.
    monkeypatch.setattr(runner, "train_ensemble", lambda *a, **k: signal.raise_signal(signal.SIGINT))
    assert _run("runs/new") == 130
    assert "interrupted (Ctrl-C) before an epoch finished; nothing was kept in runs/new." in capsys.readouterr().err
    assert not Path("runs/new").exists()


def test_a_crashed_run_after_training_is_resumable_and_refused_without_resume(project, monkeypatch, capsys):
    with monkeypatch.context() as m, pytest.raises(Crash):
        _at_epoch(m, 1, _crash)
        _run("out")
    assert json.loads(Path("out/run.json").read_text())["status"] == "interrupted"
    assert _run("out") == 2
    assert "out already holds a run; pass --resume to continue it" in capsys.readouterr().err


def test_a_run_killed_before_training_is_replaced(project, capsys):
    # What a SIGKILL during compilation leaves: the config and run.json, no metrics, no checkpoint.
    out = Path("out")
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "run.json").write_text(json.dumps({"started": "2026-01-01 00:00:00", "status": "running", "pid": 1}))
    (out / "metrics.jsonl").write_text("")
    assert inspect_run_dir(out).kind == "failed"
    assert _run("out") == 0
    assert "out holds a run that stopped before its first epoch (started 2026-01-01 00:00:00); replacing it." in \
        capsys.readouterr().err
    assert inspect_run_dir(out).kind == "complete"


def test_a_second_run_into_the_same_directory_is_refused_while_the_first_writes(project, monkeypatch, capsys):
    codes = []
    _at_epoch(monkeypatch, 1, lambda: codes.append(_run("out")))  # the second run starts while the first writes
    assert _run("out") == 0
    assert codes == [2]
    assert f"out is in use by another bnjax run (pid {os.getpid()}" in capsys.readouterr().err
    assert inspect_run_dir(Path("out")).kind == "complete"
    assert {r["epoch"] for r in read_metrics(Path("out/metrics.jsonl"))} == {0, 1, 2, 3}  # one run's lines only
    assert len(read_metrics(Path("out/metrics.jsonl"))) == len(Path("out/metrics.jsonl").read_text().splitlines())


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    # Another process takes the lock the way bnjax does (flock), then dies by SIGKILL.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, json, os, sys, time\n"
        f"fd = os.open({str(tmp_path / '.bnjax.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, json.dumps({'pid': os.getpid(), 'started': 'now'}).encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"in use by another bnjax run \\(pid {holder.pid}, started now\\)"):
            acquire_lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    os.close(acquire_lock(tmp_path))  # the kernel released the dead process's lock


def test_inspect_tells_the_kinds_apart(tmp_path):
    d = tmp_path / "d"
    assert inspect_run_dir(d).kind == "absent"
    d.mkdir()
    (d / ".bnjax.lock").write_text("")
    assert inspect_run_dir(d).kind == "empty"
    (d / "notes.txt").write_text("")
    assert inspect_run_dir(d).kind == "foreign"
    (d / "config.json").write_text("{}")
    assert inspect_run_dir(d).kind == "failed"
    (d / "checkpoints" / "v").mkdir(parents=True)
    (d / "checkpoints" / "v" / "checkpoint.msgpack").write_bytes(b"x")
    assert inspect_run_dir(d).kind == "interrupted"
    (d / "run.json").write_text(json.dumps({"status": "complete"}))
    assert inspect_run_dir(d).kind == "complete"
    with pytest.raises(RunError, match="exists and is not a directory"):
        inspect_run_dir(d / "notes.txt")


def test_metrics_log_repairs_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"variant": "a", "member": 0, "epoch": 1}\n{"variant": "a", "mem')  # killed mid-write
    log = MetricsLog(path)
    log.write([{"variant": "a", "member": 0, "epoch": 2}])
    log.close()
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]
    assert log.last == ("a", 2)


def test_real_ctrl_c_in_a_subprocess_exits_130_with_the_resume_command(project):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnjax", "run", "configs/tiny.toml", "--out", "out", "--quiet",
         "--set", "train.epochs=2000"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[2])})
    metrics = project / "out" / "metrics.jsonl"
    deadline = time.time() + 120
    try:
        # Wait for an epoch >= 1 line (the epoch-0 evaluation is logged before training starts).
        while not (metrics.is_file() and any(r["epoch"] >= 1 for r in read_metrics(metrics))):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "bnjax run: interrupted (Ctrl-C) in variant 'tiny' after epoch" in err
    assert ("resume with: bnjax run configs/tiny.toml --set train.epochs=2000 --out out --resume --quiet"
            in err)
    assert json.loads((project / "out" / "run.json").read_text())["status"] == "interrupted"
    assert verify_checkpoints(project / "out" / "checkpoints" / "tiny")[1] == []


def test_a_directory_that_changes_before_the_lock_is_left_alone(project):
    # Planned while absent; another run completes there before this one takes the lock: refuse, touch nothing.
    from bnjax.run._rundir import RunDir, plan_run
    from bnjax.run.config import load_config

    config = load_config("configs/tiny.toml")
    plan = plan_run(Path("out"), config, resume=False)
    out = Path("out")
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "run.json").write_text(json.dumps({"status": "complete"}))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunError, match="out changed while this run was starting \\(it now holds a complete run\\)"):
        with RunDir(plan, config):
            raise AssertionError("not reached")
    assert sorted(p.name for p in out.iterdir() if p.name != ".bnjax.lock") == before
    assert json.loads((out / "run.json").read_text()) == {"status": "complete"}
