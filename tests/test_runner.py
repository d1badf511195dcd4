"""End to end through the CLI on a tiny study: files, metrics log, divergence, crash + resume, report rebuild."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnjax.run import cli, runner
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
    # Kill the run at the end of the bn variant's epoch 2 (its checkpoint is written before the callback).
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
    assert {(r["variant"], r["epoch"]) for r in logged if r["variant"] == "bn"} == {("bn", 1), ("bn", 2)}
    none_mtime = (out / "variants" / "none" / "history.npz").stat().st_mtime_ns

    # Without --resume the directory is refused; with a different config the resume is refused.
    assert cli.main(["run", "configs/toy.toml", "--out", str(out), "--quiet"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert cli.main(["run", "configs/toy.toml", "--out", str(out), "--resume", "--set", "train.epochs=4"]) == 2
    assert "the config differs from the one saved" in capsys.readouterr().err

    assert cli.main(["run", "configs/toy.toml", "--out", str(out), "--resume", "--quiet"]) == 0
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
    assert "**2 of 2 claims pass.**" in (out / "report.md").read_text()

    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["configs/toy.toml", "a", "tiny", "study", "for", "the", "tests"]


def test_cli_reports_config_errors_without_a_traceback(project, capsys):
    assert cli.main(["run", "configs/toy.toml", "--set", "model.norm=group"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnjax run: error: configs/toy.toml: model.norm = 'group' is not a valid option")
    assert cli.main(["report", str(project / "nowhere")]) == 2
    assert "is not a bnjax run directory" in capsys.readouterr().err
