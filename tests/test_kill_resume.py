"""Nothing lost on a kill: `bnjax run` killed (SIGKILL, no cleanup) between any two of its writes, then
`--resume`d, ends with exactly the files of an uninterrupted run: every metrics line once, in the same order,
byte for byte; the same saved histories; no checkpoint left behind.

The kill points are the places the code marks with ``bnjax._faults.kill_point`` (between two writes: a metrics
line block, each step of a checkpoint's atomic save, each file of a finished variant); ``BNJAX_KILL_LOG`` lists
them for an uninterrupted run, ``BNJAX_KILL_AT=N`` kills the run at the N-th. The reference is the same command
run without interruption.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import TINY_MNIST1D_TOML

CONFIG = """
[study]
name = "tiny_kill"
""" + TINY_MNIST1D_TOML + """
[model]
hidden = [8]
norm = "batch"
dropout = 0.2

[train]
batch_size = 20
epochs = 3
eval_train_samples = 50

[sweep]
seeds = [0, 1]

[[variants]]
name = "bn"

[[variants]]
name = "none"
model = { norm = "none" }
"""


def _run(config: Path, out: Path, cache: Path, *extra: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BNJAX_KILL") and k != "XLA_FLAGS"}
    full.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(cache), **(env or {}))
    return subprocess.run([sys.executable, "-m", "bnjax", "run", str(config), "--out", str(out), "--quiet",
                           *extra], capture_output=True, text=True, env=full, timeout=300)


def _histories(out: Path) -> dict[str, dict[str, np.ndarray]]:
    res = {}
    for path in sorted((out / "variants").glob("*/history.npz")):
        with np.load(path) as z:
            res[path.parent.name] = {k: z[k] for k in z.files}
    return res


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    config, cache = tmp / "tiny_kill.toml", tmp / "cache"
    config.write_text(CONFIG)
    # A first run fills the data and compilation caches, so that every later run makes the same writes.
    warm = _run(config, tmp / "warm", cache)
    assert warm.returncode == 0, warm.stderr
    log = tmp / "points.log"
    proc = _run(config, tmp / "ref", cache, env={"BNJAX_KILL_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    points = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    return tmp, config, cache, points


def _kill_and_resume(reference, n: int, tmp_path: Path) -> None:
    tmp, config, cache, points = reference
    out = tmp_path / "run"
    killed = _run(config, out, cache, env={"BNJAX_KILL_AT": str(n)})
    assert killed.returncode == -signal.SIGKILL, (n, points[n - 1], killed.stderr[-2000:])
    # The same command again, with --resume once the directory holds a run; a kill before its first file
    # (config.json) landed leaves an empty directory, which --resume refuses and a plain run starts in.
    resumed = _run(config, out, cache, *(["--resume"] if (out / "config.json").exists() else []))
    assert resumed.returncode == 0, (n, points[n - 1], resumed.stderr[-2000:])
    ref = tmp / "ref"
    assert (out / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes(), (n, points[n - 1])
    a, b = _histories(out), _histories(ref)
    assert a.keys() == b.keys() == {"bn", "none"}
    for name in a:
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f"{name}/{k} after kill point {n}")
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert json.loads((out / "summary.json").read_text())["claims"] == json.loads(
        (ref / "summary.json").read_text())["claims"]


def _nth(points: list[str], name: str, n: int) -> int:
    """The 1-based index of the n-th point called ``name``."""
    return [i for i, p in enumerate(points, 1) if p == name][n - 1]


METRICS, CHECKPOINT = "metrics: an epoch's rows written", "checkpoint.msgpack: in place"


def test_the_run_marks_every_write_of_an_epoch(reference):
    points = reference[3]
    # Two variants of 3 epochs: 4 blocks of metrics lines each (epoch 0 too), a checkpoint per epoch (its
    # temporary file, the previous one kept from the second on, the new one in place), the saved results.
    assert points.count(METRICS) == 8 and points.count(CHECKPOINT) == 6, points
    assert points.count("checkpoint.msgpack: temporary file written") == 6
    assert points.count("checkpoint.msgpack: previous kept") == 4
    assert points.count("history.npz: in place") == 2 and points.count("variant: checkpoint removed") == 2
    first = points.index(METRICS)
    assert points[first:first + 5] == [METRICS, "checkpoint.msgpack: temporary file written", CHECKPOINT, METRICS,
                                       "checkpoint.msgpack: temporary file written"], points


@pytest.mark.parametrize("where", [
    (CHECKPOINT, 1),  # the issue's case: epoch 1's checkpoint in place, its metrics lines not yet written
    (METRICS, 5),  # the second variant's epoch-0 lines written, nothing of it checkpointed
    # the first variant saved, its checkpoint not yet removed (slow: the every-point test covers it too)
    pytest.param(("history.npz: in place", 1), marks=pytest.mark.slow),
])
def test_killed_between_two_writes_resumes_to_the_uninterrupted_files(reference, where, tmp_path):
    _kill_and_resume(reference, _nth(reference[3], *where), tmp_path)


@pytest.mark.slow
def test_killed_at_every_point_resumes_to_the_uninterrupted_files(reference, tmp_path):
    for n in range(1, len(reference[3]) + 1):
        _kill_and_resume(reference, n, tmp_path / str(n))
