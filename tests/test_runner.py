"""End to end through the CLI on a tiny study: files, metrics log, divergence, crash + resume, report rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bnjax.data import FASHION_MNIST_DIR
from bnjax import cli
from bnjax.run import runner
from bnjax.run.results import read_metrics

TOY_CONFIG = """\
# bnjax run configs/toy.toml
[study]
name = "toy"
description = "a tiny study for the tests"
analysis = "experiments/toy.py"

[data]
name = "mnist1d"
loader = { num_samples = 500 }
num_train = 100
num_val = 100
standardize = true

[model]
hidden = [8]

[train]
optimizer = "sgd"
batch_size = 20
epochs = 3
eval_train_samples = 100

[sweep]
seeds = [0, 1]
learning_rate = [0.1, 1e6]   # the second diverges: it must be reported, not stop the run

[[variants]]
name = "none"

[[variants]]
name = "bn"
model = { norm = "batch" }
"""

TOY_ANALYSIS = """\
import numpy as np
from bnjax.run.report import Claim

def analyze(results):
    none = results["none"]
    ok = none.final("train_acc", learning_rate=0.1)
    return [Claim("sane members learn something", bool(np.all(ok > 0.1)), f"{ok}"),
            Claim("the huge step size diverges", bool(none.diverged(learning_rate=1e6).all()), "")]

def post_train(trained):
    return {"num_members": len(trained.result.members), "norm": trained.spec.norm}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "experiments").mkdir()
    (tmp_path / "configs" / "toy.toml").write_text(TOY_CONFIG)
    (tmp_path / "experiments" / "toy.py").write_text(TOY_ANALYSIS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


class Crash(Exception):
    pass


def test_run_crash_resume_report_and_list(project, monkeypatch, capsys):
    out = project / "runs" / "toy"
    # Kill the run at the end of the bn variant's epoch 2, once it is logged (its checkpoint is written after the
    # callback, so the resumed run trains epoch 2 again and logs it again, with the same numbers).
    real = runner.train_ensemble

    def crashing(spec, cfg, data, members, *, callback, **kw):
        def cb(epoch, metrics):
            callback(epoch, metrics)
            if spec.norm == "batch" and epoch == 2:
                raise Crash

        return real(spec, cfg, data, members, callback=cb, **kw)

    monkeypatch.setattr(runner, "train_ensemble", crashing)
    with pytest.raises(Crash):
        cli.main(["run", "configs/toy.toml", "--out", str(out), "--quiet"])
    monkeypatch.setattr(runner, "train_ensemble", real)
    assert (out / "variants" / "none" / "history.npz").is_file()
    assert not (out / "variants" / "bn" / "history.npz").exists()
    assert (out / "checkpoints" / "bn").is_dir()
    logged = read_metrics(out / "metrics.jsonl")
    assert {(r["variant"], r["epoch"]) for r in logged if r["variant"] == "bn"} == {("bn", 0), ("bn", 1), ("bn", 2)}
    none_mtime = (out / "variants" / "none" / "history.npz").stat().st_mtime_ns

    # Without --resume the directory is refused; with a different config the resume is refused.
    assert cli.main(["run", "configs/toy.toml", "--out", str(out), "--quiet"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert cli.main(["run", "configs/toy.toml", "--out", str(out), "--resume", "--set", "train.epochs=4"]) == 2
    assert "the config differs from the one saved" in capsys.readouterr().err

    # [parallel] only places the computation, so a run resumes under another layout.
    assert cli.main(["run", "configs/toy.toml", "--out", str(out), "--resume", "--quiet",
                     "--set", "parallel.members=1"]) == 0
    assert capsys.readouterr().out.strip() == f"results: {out}/report.md (2/2 claims PASS)"
    assert (out / "variants" / "none" / "history.npz").stat().st_mtime_ns == none_mtime  # kept, not retrained
    assert not (out / "checkpoints").exists()  # removed once every variant is saved

    for name in ("config.json", "config.source.toml", "run.json", "summary.json", "report.md", "curves.png",
                 "analysis.py"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variants"]["none"]["diverged"] == 2 and summary["variants"]["bn"]["diverged"] == 2
    assert summary["variants"]["bn"]["extras"]["norm"] == "batch"
    assert summary["variants"]["bn"]["extras"]["num_members"] == 4

    # metrics.jsonl: one line per variant x member x epoch 0..3, equal to the saved histories.
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 2 * 4 * 4
    results = runner.load_results(out)
    for r in rows:
        v = results[r["variant"]]
        assert r["seed"] == v.members[r["member"]]["seed"]
        want = v.history["val_acc"][r["member"], r["epoch"]]
        if np.isfinite(want):
            assert r["val_acc"] == pytest.approx(want)
        else:
            assert r["val_acc"] is None
    assert results["bn"].diverged(learning_rate=1e6).all() and not results["bn"].diverged(learning_rate=0.1).any()

    # `bnjax report` rebuilds the same verdicts from the saved numbers.
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"results: {out}/report.md (2/2 claims PASS)"
    assert json.loads((out / "summary.json").read_text())["claims"] == summary["claims"]
    assert "**2 of 2 claims pass" in (out / "report.md").read_text()

    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["configs/toy.toml", "a", "tiny", "study", "for", "the", "tests"]


def test_cli_reports_config_errors_without_a_traceback(project, capsys):
    assert cli.main(["run", "configs/toy.toml", "--set", "model.norm=grp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnjax run: error: configs/toy.toml: model.norm = 'grp' is not a valid option")
    assert cli.main(["run", "configs/toy.toml", "--set", "model.factory=models/none.py:build", "--quiet"]) == 2
    assert "model.factory = 'models/none.py:build': no file" in capsys.readouterr().err
    assert cli.main(["report", str(project / "nowhere")]) == 2
    assert "is not a bnjax run directory" in capsys.readouterr().err


NORMS_CONFIG = """\
# bnjax run configs/norms.toml
[study]
name = "norms"

[data]
name = "synthetic"
num_train = 80
num_val = 40
num_test = 40

[model]
hidden = [8]
groups = 2
virtual_batch_size = 5
renorm_warmup_steps = 4

[train]
batch_size = 20
epochs = 1

[sweep]
seeds = [0]
"""


def test_every_normalizer_trains_through_bnjax_run(project, capsys):
    # none and batch run through the CLI in the crash/resume test above; here the others, one variant each
    # (group also with the norm after the activation).
    norms = ("layer", "group", "rms", "ghost", "renorm")
    variants = "".join(f'\n[[variants]]\nname = "{n}"\nmodel = {{ norm = "{n}"'
                       f'{", norm_position = " + chr(34) + "after" + chr(34) if n == "group" else ""} }}\n'
                       for n in norms)
    (project / "configs" / "norms.toml").write_text(NORMS_CONFIG + variants)
    out = project / "runs" / "norms"
    assert cli.main(["run", "configs/norms.toml", "--out", str(out), "--quiet"]) == 0
    results = runner.load_results(out)
    for name in norms:
        v = results[name]
        assert v.history["train_loss"].shape == (1, 2) and np.all(np.isfinite(v.history["train_loss"])), name
        assert not v.diverged().any(), name
    assert results["group"].spec["model"]["norm_position"] == "after"
    assert json.loads((out / "variants" / "ghost" / "spec.json").read_text())["mlp_spec"]["virtual_batch_size"] == 5


MODEL_FILE = """\
import jax
import bnjax

def build(input_shape, num_classes, *, width=16, norm="batch"):
    def flatten(params, batch_stats, x, train, *, key=None):
        assert x.shape[1:] == tuple(input_shape), x.shape  # images reach the model unflattened
        return x.reshape(x.shape[0], -1), batch_stats

    d = input_shape[0] * input_shape[1]
    return bnjax.serial(bnjax.Layer(lambda key: ({}, {}), flatten, "flatten"), bnjax.Dense(d, width),
                        bnjax.norm_layer(norm, width, groups=4), bnjax.Activation(jax.nn.relu),
                        bnjax.Dropout(0.0), bnjax.Dense(width, num_classes))
"""

FACTORY_CONFIG = """\
# bnjax run configs/user.toml
[study]
name = "user"

[data]
name = "fashion_mnist"
flatten = false
num_train = 120
num_val = 60
num_test = 60
scale = 0.00392156862745098

[model]
factory = "models/net.py:build"
width = 12

[train]
batch_size = 30
epochs = 2

[sweep]
seeds = [0, 1]
dropout = [0.0, 0.3]

[[variants]]
name = "bn"

[[variants]]
name = "gn"
model = { norm = "group" }
"""


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_factory_model_trains_through_bnjax_run(project):
    (project / "models").mkdir()
    (project / "models" / "net.py").write_text(MODEL_FILE)
    (project / "configs" / "user.toml").write_text(FACTORY_CONFIG)
    out = project / "runs" / "user"
    assert cli.main(["run", "configs/user.toml", "--out", str(out), "--quiet"]) == 0
    results = runner.load_results(out)
    for name in ("bn", "gn"):
        v = results[name]
        assert v.history["train_loss"].shape == (4, 3) and not v.diverged().any()
        assert v.history["train_loss"][:, -1].mean() < v.history["train_loss"][:, 0].mean()
    spec = json.loads((out / "variants" / "gn" / "spec.json").read_text())
    assert spec["model"] == {"factory": "models/net.py:build", "norm": "group", "width": 12}
    assert spec["layer"] == "serial"
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["factory"] == f"{(project / 'models' / 'net.py').resolve()}:build"
