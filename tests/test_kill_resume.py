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

CONFIG = """
[study]
name = "tiny_kill"

[data]
name = "mnist1d"
loader = { num_samples = 300 }
num_train = 100
num_val = 50
num_test = 50

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
    resumed = _run(config, out, cache, "--resume") if out.exists() else _run(config, out, cache)
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


def test_the_run_marks_every_write_of_an_epoch(reference):
    points = reference[3]
    # Per variant: epoch 0's lines; per epoch 1-3: the checkpoint's three steps (the first save has no previous
    # file to keep) and the lines; then the variant's three files and the checkpoint's removal.
    per_variant = 1 + (2 + 3 + 3) + 3 * 1 + 4
    assert len(points) == 2 * per_variant, points
    assert points[:4] == ["metrics: an epoch's rows written", "checkpoint: temporary file written",
                          "checkpoint: renamed into place", "metrics: an epoch's rows written"]


@pytest.mark.parametrize("where", [
    3,  # the issue's case: epoch 1's checkpoint in place, its metrics lines not yet written
    17,  # the second variant's epoch-0 lines written, nothing of it checkpointed
])
def test_killed_between_two_writes_resumes_to_the_uninterrupted_files(reference, where, tmp_path):
    _kill_and_resume(reference, where, tmp_path)


@pytest.mark.slow
def test_killed_at_every_point_resumes_to_the_uninterrupted_files(reference, tmp_path):
    for n in range(1, len(reference[3]) + 1):
        _kill_and_resume(reference, n, tmp_path / str(n))
