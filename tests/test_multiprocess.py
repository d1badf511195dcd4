"""`bnjax run` on several CPU devices and in several processes (jax.distributed over loopback, gloo).

The reference is the same study run in one process on one device; a sharded run must compute the same metrics up
to float32 summation order (the first epoch within 1e-4). The processes are real `bnjax run` commands, bounded by
timeouts; the coordinator listens on a free loopback port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CONFIG = """
[study]
name = "tiny_parallel"
description = "one small BN MLP with dropout, three seeds"

[data]
name = "mnist1d"
loader = {{ num_samples = 500 }}
num_train = {num_train}
num_val = 100
num_test = 100

[model]
hidden = [16, 16]
norm = "batch"
init = "he"
dropout = 0.3

[train]
batch_size = 20
epochs = {epochs}
eval_train_samples = 100

[sweep]
seeds = [0, 1, 2]
"""

TIMEOUT = 240


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(BNJAX_COMPILE_CACHE="0", JAX_PLATFORMS="cpu")
    return env


def _config(tmp_path: Path, *, epochs: int = 1, num_train: int = 100) -> Path:
    path = tmp_path / "tiny_parallel.toml"
    path.write_text(CONFIG.format(epochs=epochs, num_train=num_train))
    return path


def _bnjax(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnjax", "run", *args, "--quiet"], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(config: Path, out: Path, *extra: str, n: int = 2, devices: int = 2) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{_free_port()}"
    return [subprocess.Popen([sys.executable, "-m", "bnjax", "run", str(config), "--quiet", "--out", str(out),
                              "--cpu-devices", str(devices), "--coordinator", address, "--num-processes", str(n),
                              "--process-id", str(i), "--timeout", "60", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                             start_new_session=True)  # its own process group: the supervisor and its child
            for i in range(n)]


def _finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    out = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, stdout, stderr))
    return out


def _metrics(run_dir: Path) -> dict[tuple, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["variant"], r["member"], r["epoch"]): r for r in rows}


def _max_diff(a: dict, b: dict, epochs: int | None = None) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for key, row in a.items():
        if epochs is not None and key[2] > epochs:
            continue
        for name, v in row.items():
            if name.endswith(("_acc", "_loss")) or name == "loss":
                assert (v is None) == (b[key][name] is None), (key, name)
                if v is not None:
                    worst = max(worst, abs(v - b[key][name]))
    return worst


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process, one-device run of the tiny study."""
    tmp = tmp_path_factory.mktemp("reference")
    config = _config(tmp)
    proc = _bnjax(str(config), "--out", str(tmp / "run"))
    assert proc.returncode == 0, proc.stderr
    return config, _metrics(tmp / "run")


@pytest.mark.slow  # the default suite keeps the 2-process x 2-device run and tests/test_sharded.py's 4-device runs
def test_members_sharded_over_two_devices_match_one_device(reference, tmp_path):
    config, ref = reference
    # Three members over two devices: padded to four, the copy's results dropped.
    proc = _bnjax(str(config), "--out", str(tmp_path / "run"), "--cpu-devices", "2", "--set", "parallel.members=2")
    assert proc.returncode == 0, proc.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "2 device(s)" in run["device"] and "members=2" in run["device"]
    assert _max_diff(_metrics(tmp_path / "run"), ref) <= 1e-4


@pytest.mark.slow  # tests/test_sharded.py checks data parallelism through the Python API in the default suite
def test_data_parallel_sync_bn_over_two_devices_matches_one_device(reference, tmp_path):
    config, ref = reference
    proc = _bnjax(str(config), "--out", str(tmp_path / "run"), "--cpu-devices", "2",
                  "--set", "parallel.members=1", "parallel.data=2", "parallel.sync_bn=true")
    assert proc.returncode == 0, proc.stderr
    assert _max_diff(_metrics(tmp_path / "run"), ref) <= 1e-4


def test_two_processes_two_devices_each_match_one_process(reference, tmp_path):
    config, ref = reference
    out = tmp_path / "run"
    (rc0, out0, err0), (rc1, out1, err1) = _finish(_start_processes(config, out))
    assert rc0 == 0 and rc1 == 0, (err0, err1)
    assert "results:" in out0 and "process 1 of 2: done" in out1
    assert "[Gloo]" not in out0 + out1  # the transport's chatter is shown with --debug only
    run = json.loads((out / "run.json").read_text())
    assert "4 device(s) in 2 processes" in run["device"]
    # One writer: exactly one line per (variant, member, epoch).
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(ref)
    # Dropout on (rate 0.3): each example's mask follows its row in the global batch, whatever the layout.
    assert _max_diff(_metrics(out), ref) <= 1e-6


@pytest.mark.parametrize("args, words", [
    (["--cpu-devices", "2", "--set", "parallel.members=4"], ["parallel.members = 4", "4 devices", "there are 2"]),
    (["--cpu-devices", "2", "--set", "parallel.data=2", "train.batch_size=25"],
     ["parallel.data = 2", "train.batch_size = 25"]),
    (["--set", "parallel.data=3"], ["parallel.data = 3", "--cpu-devices"]),
    (["--set", "parallel.members=many"], ["parallel.members", "'many'"]),
    (["--cpu-devices", "0"], ["--cpu-devices=0"]),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], ["--process-id=2", "0..1"]),
    (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"], ["--coordinator", "HOST:PORT"]),
    (["--num-processes", "2", "--process-id", "0"], ["--coordinator"]),
])
def test_bad_layout_or_process_flags_exit_2_naming_the_value(args, words, tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "run"
    proc = _bnjax(str(config), "--out", str(out), *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in message[0], (w, message[0])
    assert not out.exists()


def test_unreachable_coordinator_is_one_line_within_the_timeout(tmp_path):
    config = _config(tmp_path)
    t0 = time.monotonic()
    proc = _bnjax(str(config), "--out", str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{_free_port()}",
                  "--num-processes", "2", "--process-id", "1", "--timeout", "2", timeout=60)
    assert proc.returncode == 2
    assert "no coordinator answered within 2 s" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 45
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_killed_peer_stops_the_other_and_resume_completes_the_same_run(tmp_path):
    """SIGKILL one process after the first checkpoint: the other exits with one line within a bounded time, and
    --resume on both completes the run with the numbers of an uninterrupted two-process run."""
    config = _config(tmp_path, epochs=30, num_train=300)
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "run"
    results = _finish(_start_processes(config, ref_out))
    assert all(rc == 0 for rc, _, _ in results), [e for _, _, e in results]

    procs = _start_processes(config, out)
    ckpt = out / "checkpoints" / "tiny_parallel" / "checkpoint.msgpack"
    deadline = time.monotonic() + TIMEOUT
    while not ckpt.exists() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), procs[0].communicate()[1] if procs[0].poll() is not None else "no checkpoint"
    os.killpg(procs[1].pid, signal.SIGKILL)  # process 1: its supervisor and the child doing the work
    t0 = time.monotonic()
    rc0, _, err0 = _finish(procs[:1], timeout=120)[0]
    procs[1].communicate(timeout=30)  # reaps it and closes its pipes
    waited = time.monotonic() - t0
    assert rc0 == 2, err0
    lines = [line for line in err0.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "another process" in lines[0] and "--resume" in lines[0], err0
    assert waited < 60  # JAX's heartbeat timeout is 10 s

    results = _finish(_start_processes(config, out, "--resume"))
    assert all(rc == 0 for rc, _, _ in results), [e for _, _, e in results]
    assert _max_diff(_metrics(out), _metrics(ref_out)) == 0.0
    final = json.loads((out / "run.json").read_text())
    assert final["status"] == "complete"


@pytest.mark.slow
def test_sharded_studies_reach_the_same_final_accuracies(tmp_path):
    """Ten epochs: rounding differences grow with training, so the final mean accuracies are compared (0.02)."""
    config = _config(tmp_path, epochs=10, num_train=300)
    assert _bnjax(str(config), "--out", str(tmp_path / "one")).returncode == 0
    proc = _bnjax(str(config), "--out", str(tmp_path / "two"), "--cpu-devices", "2", "--set", "parallel.members=2")
    assert proc.returncode == 0, proc.stderr
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert _max_diff(a, b, epochs=1) <= 1e-4
    for metric in ("train_acc", "val_acc"):
        fa = np.mean([r[metric] for k, r in a.items() if k[2] == 10])
        fb = np.mean([r[metric] for k, r in b.items() if k[2] == 10])
        assert abs(fa - fb) <= 0.02, (metric, fa, fb)
