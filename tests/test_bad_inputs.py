"""A table of bad inputs to ``bnjax``: each ends in one message with the key words, exit code 2, no traceback,
and leaves no results directory a later run would trust (the --out directory is exactly as it was before).

Every case runs in-process through ``cli.main(argv)`` (no subprocess, no training): config tables, ``--set``,
command-line arguments, data files, results directories and checkpoints.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnjax import cli
from bnjax.run._rundir import acquire_lock, inspect_run_dir
from bnjax.run.config import load_config, resolved_raw
from bnjax.run.results import jsonable
from bnjax.train._checkpoint import save_checkpoint

BASE: dict[str, Any] = {
    "study": {"name": "bad"},
    "data": {"name": "synthetic", "loader": {"num_samples": 120, "num_features": 4, "num_test": 20},
             "num_val": 20},
    "model": {"hidden": [4]},
    "train": {"batch_size": 10, "epochs": 1, "eval_train_samples": 50, "eval_batch_size": 50},
    "sweep": {"seeds": [0]},
}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def toml(tables: dict[str, Any]) -> str:
    """A config as TOML text (tables of scalars, lists and inline tables; ``variants`` as [[variants]])."""
    lines = [f"{k} = {_value(v)}" for k, v in tables.items() if not isinstance(v, (dict, list))]  # top level first
    for name, table in tables.items():
        if name == "variants" and isinstance(table, list):
            for v in table:
                lines += ["[[variants]]", *(f"{k} = {_value(x)}" for k, x in v.items())]
        elif isinstance(table, dict):
            lines += [f"[{name}]", *(f"{k} = {_value(x)}" for k, x in table.items())]
    return "\n".join(lines) + "\n"


def patched(**tables: Any) -> dict[str, Any]:
    """BASE with ``tables`` merged in (``None`` removes a table or key)."""
    out = json.loads(json.dumps(BASE))
    for name, table in tables.items():
        if table is None:
            out.pop(name, None)
        elif isinstance(table, dict) and isinstance(out.get(name), dict):
            for k, v in table.items():
                if v is None:
                    out[name].pop(k, None)
                else:
                    out[name][k] = v
        else:
            out[name] = table
    return out


@dataclass
class Case:
    id: str
    words: tuple[str, ...]  # must all appear in stderr
    config: dict[str, Any] | str | None = field(default_factory=lambda: BASE)  # None: no config file
    args: tuple[str, ...] = ()  # appended to `run configs/bad.toml --out out --quiet`
    argv: tuple[str, ...] | None = None  # the whole command line instead
    setup: Callable[[Path], Any] | None = None  # prepares files in the project dir


# ------------------------------------------------------------------------------------------- file makers

def _idx(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _idx_header(code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def _run_dir(tmp: Path, *, status: str | None = None, metrics: bool = False, config: dict | None = None) -> None:
    out = tmp / "out"
    out.mkdir()
    raw = config if config is not None else jsonable(resolved_raw(load_config(tmp / "configs" / "bad.toml")))
    (out / "config.json").write_text(json.dumps(raw))
    if status:
        (out / "run.json").write_text(json.dumps({"started": "2026-01-01 00:00:00", "status": status}))
    if metrics:
        (out / "metrics.jsonl").write_text(json.dumps({"variant": "bad", "member": 0, "epoch": 1}) + "\n")


def _damaged_checkpoints(how: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _run_dir(tmp, status="interrupted", metrics=True)
        d = tmp / "out" / "checkpoints" / "bad"
        for epoch in (1, 2):
            save_checkpoint(d, {"run": 1}, {"epoch": epoch, "x": np.arange(100, dtype=np.float32)})
        for p in sorted(d.iterdir()):
            data = bytearray(p.read_bytes())
            if how == "truncated":
                data = data[: len(data) // 2]
            elif how == "flipped":
                data[len(data) // 2] ^= 0x10
            else:  # not a bnjax checkpoint (e.g. a format-1 file without a checksum)
                data = bytearray(b"\x83\xa6format\x01" + bytes(60))
            p.write_bytes(bytes(data))

    return setup


class HeldLock(int):
    """The descriptor of a lock the test holds during the call (closed afterwards)."""


def _hold_lock(tmp: Path) -> HeldLock:
    (tmp / "out").mkdir()
    return HeldLock(acquire_lock(tmp / "out"))


def _analysis(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "experiments").mkdir()
        (tmp / "experiments" / "bad.py").write_text(text)

    return setup


def _cifar_pickle(tmp: Path) -> None:
    d = tmp / "cifar" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    (d / "data_batch_1").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # would call os.system


def _damaged_history(tmp: Path) -> None:
    _run_dir(tmp, status="complete")
    v = tmp / "out" / "variants" / "bad"
    v.mkdir(parents=True)
    (v / "members.json").write_text(json.dumps({"members": [{"seed": 0}], "axes": []}))
    (v / "history.npz").write_bytes(b"PK\x03\x04 not really a zip file")


MNIST = {"name": "mnist", "root": "mnist", "num_val": 10}
CIFAR = {"name": "cifar10", "root": "cifar", "num_val": 10, "num_test": 10}

CASES = [
    # --- the config file and its tables
    Case("missing config file", ("configs/nope.toml", "not found"), args=(),
         argv=("run", "configs/nope.toml", "--out", "out")),
    Case("not TOML", ("not valid TOML",), config="[study\nname = 'x'\n"),
    Case("unknown table", ("trian", "not a known key", "study, data, model, train, sweep"),
         config=patched(trian={"epochs": 1})),
    Case("no [study]", ("[study] is missing",), config=patched(study=None)),
    Case("bad study name", ("study.name", "'a b'", "letters, digits"), config=patched(study={"name": "a b"})),
    Case("unknown model key", ("model.hiden is not a known key", "hidden"), config=patched(model={"hiden": [4]})),
    Case("model.hidden wrong type", ("model.hidden", "'4'", "list of"), config=patched(model={"hidden": "4"})),
    Case("model.norm bad choice", ("model.norm", "'groups'"), config=patched(model={"norm": "groups"})),
    Case("model.dropout out of range", ("model.dropout", "1.5"), config=patched(model={"dropout": 1.5})),
    Case("unknown train key", ("train.lr is not a known key", "learning_rate"), config=patched(train={"lr": 0.1})),
    Case("train.optimizer bad choice", ("train.optimizer", "rmsprop"), config=patched(train={"optimizer": "rmsprop"})),
    Case("train.batch_size zero", ("train.batch_size", "0"), config=patched(train={"batch_size": 0})),
    Case("train.epochs wrong type", ("train.epochs", "'three'", "an integer"),
         config=patched(train={"epochs": "three"})),
    Case("train.learning_rate negative", ("train.learning_rate", "-1"), config=patched(train={"learning_rate": -1.0})),
    Case("unknown dataset", ("data.name", "'imagenet'", "mnist1d"), config=patched(data={"name": "imagenet"})),
    Case("data.num_val negative", ("[data]", "num_val=-1", "outside [0, 119]"), config=patched(data={"num_val": -1})),
    Case("data.loader not a table", ("data.loader", "must be a table"), config=patched(data={"loader": 3})),
    Case("unknown loader option", ("[data]", "unknown loader_options", "bogus", "num_features"),
         config=patched(data={"loader": {"bogus": 1}})),
    Case("no seeds", ("seeds", "at least one seed"), config=patched(sweep={"seeds": []})),
    Case("repeated seeds", ("sweep.seeds", "repeats a value"), config=patched(sweep={"seeds": [0, 0]})),
    Case("swept dropout out of range", ("dropout", "out of range", "[0, 1)"), config=patched(sweep={"dropout": [1.0]})),
    Case("variants not an array", ("variants must be an array of tables",), config=patched(variants=3)),
    Case("variant without a name", ("variants[0].name", "None"), config=patched(variants=[{"description": "x"}])),
    Case("repeated variant names", ("variants[1].name", "repeats"),
         config=patched(variants=[{"name": "a"}, {"name": "a"}])),
    Case("unknown variant key", ("variants[0].modle is not a known key",),
         config=patched(variants=[{"name": "a", "modle": {"norm": "batch"}}])),
    Case("missing analysis module", ("analysis module", "nope.py", "not found"),
         config=patched(study={"name": "bad", "analysis": "experiments/nope.py"})),
    Case("analysis module without analyze()", ("study.analysis", "defines no analyze(results)"),
         config=patched(study={"name": "bad", "analysis": "experiments/bad.py"}), setup=_analysis("x = 1\n")),
    Case("analysis module with a syntax error", ("study.analysis", "bad.py"),
         config=patched(study={"name": "bad", "analysis": "experiments/bad.py"}), setup=_analysis("def (:\n")),
    # --- --set
    Case("--set without =", ("--set 'train.epochs'", "section.key=value"), args=("--set", "train.epochs")),
    Case("--set without a table", ("--set 'epochs=2'", "must name a table and a key"), args=("--set", "epochs=2")),
    Case("--set unknown table", ("unknown table 'optim'",), args=("--set", "optim.lr=1")),
    Case("--set unknown key", ("train.nope is not a known key",), args=("--set", "train.nope=1")),
    Case("--set wrong type", ("train.epochs", "'two'", "an integer"), args=("--set", "train.epochs=two")),
    Case("--set unknown variant", ("no variant named 'zzz'",), args=("--set", "variants.zzz.model.norm=batch")),
    # --- command-line arguments
    Case("no config argument", ("the following arguments are required: config",), argv=("run",)),
    Case("unknown option", ("unrecognized arguments: --epochs",), args=("--epochs", "3")),
    Case("unknown command", ("invalid choice: 'train'",), argv=("train", "configs/bad.toml")),
    Case("--out under a file", ("--out", "afile", "is a file, not a directory"),
         argv=("run", "configs/bad.toml", "--out", "afile/out"), setup=lambda t: (t / "afile").write_text("x")),
    Case("--out is a file", ("--out afile: afile is a file, not a directory",),
         argv=("run", "configs/bad.toml", "--out", "afile"), setup=lambda t: (t / "afile").write_text("x")),
    Case("--out holds other files", ("holds no bnjax run", "it has notes.txt", "choose a new or empty directory"),
         setup=lambda t: (t / "out").mkdir() or (t / "out" / "notes.txt").write_text("mine")),
    Case("--resume into nothing", ("--resume: nothing to resume", "does not exist"), args=("--resume",)),
    Case("--resume into an empty dir", ("--resume: nothing to resume", "is empty"), args=("--resume",),
         setup=lambda t: (t / "out").mkdir()),
    Case("report of a non-run", ("is not a bnjax run directory",), argv=("report", "nowhere")),
    # --- validation that needs the data (before anything is written)
    Case("batch larger than the training set", ("variant 'bad'", "100 examples", "train.batch_size = 1000"),
         config=patched(train={"batch_size": 1000})),
    Case("too many precise-BN batches", ("train.precise_bn_batches = 20", "200 training examples", "there are 100"),
         config=patched(train={"precise_bn_batches": 20})),
    Case("num_train larger than the data", ("[data]", "num_train=500", "outside [1, 100]"),
         config=patched(data={"num_train": 500})),
    Case("num_test larger than the data", ("[data]", "num_test=50", "test set has 20"),
         config=patched(data={"num_test": 50})),
    Case("standardize without centering", ("[data]", "standardize=True needs center='train_mean'"),
         config=patched(data={"standardize": True, "center": "none"})),
    Case("root for generated data", ("[data]", "takes no root"), config=patched(data={"root": "somewhere"})),
    Case("mnist without root", ("[data]", "needs root="), config=patched(data={"name": "mnist", "loader": None})),
    # --- data files
    Case("missing data directory", ("[data]", "mnist", "not found"), config=patched(data={**MNIST, "loader": None})),
    Case("IDX file with a bad magic number", ("train-images-idx3-ubyte", "bad magic number"),
         config=patched(data={**MNIST, "loader": None}),
         setup=lambda t: _idx(t / "mnist" / "train-images-idx3-ubyte", b"\x12\x34\x08\x03" + bytes(12))),
    Case("truncated IDX file", ("train-images-idx3-ubyte", "expected 784 bytes", "found 100"),
         config=patched(data={**MNIST, "loader": None}),
         setup=lambda t: _idx(t / "mnist" / "train-images-idx3-ubyte", _idx_header(8, (1, 28, 28)) + bytes(100))),
    Case("corrupt gzip IDX file", ("train-images-idx3-ubyte.gz", "corrupt or truncated gzip"),
         config=patched(data={**MNIST, "loader": None}),
         setup=lambda t: _idx(t / "mnist" / "train-images-idx3-ubyte.gz",
                              gzip.compress(_idx_header(8, (1, 28, 28)) + bytes(784))[:30])),
    Case("CIFAR binary batch of the wrong size", ("data_batch_1.bin", "not a positive multiple of the 3073-byte"),
         config=patched(data={**CIFAR, "loader": None}),
         setup=lambda t: _idx(t / "cifar" / "data_batch_1.bin", bytes(3073 * 2 + 5))),
    Case("CIFAR pickle that would run code", ("data_batch_1", "unpickling refused", "os.system"),
         config=patched(data={**CIFAR, "loader": None}), setup=_cifar_pickle),
    # --- results directories
    Case("a complete run without --resume", ("already holds a complete run", "choose another --out"),
         setup=lambda t: _run_dir(t, status="complete")),
    Case("an interrupted run without --resume", ("already holds a run; pass --resume",),
         setup=lambda t: _run_dir(t, status="interrupted", metrics=True)),
    Case("a directory another run is writing", ("is in use by another bnjax run", f"pid {os.getpid()}"),
         setup=_hold_lock),
    Case("--resume with another config", ("--resume: the config differs", "train"), args=("--resume",),
         setup=lambda t: _run_dir(t, status="interrupted", metrics=True, config={**BASE, "train": {"epochs": 9}})),
    Case("report of a damaged run", ("saved results of variant 'bad' are damaged", "variants/bad", "BadZipFile"),
         argv=("report", "out"), setup=_damaged_history),
    # --- checkpoints
    Case("truncated checkpoints", ("no intact checkpoint for variant 'bad'", "checkpoint.msgpack: truncated",
                                   "checkpoint.prev.msgpack: truncated", "Delete"),
         args=("--resume",), setup=_damaged_checkpoints("truncated")),
    Case("corrupt checkpoints", ("no intact checkpoint", "checkpoint.msgpack: corrupt", "SHA-256"),
         args=("--resume",), setup=_damaged_checkpoints("flipped")),
    Case("not a bnjax checkpoint", ("no intact checkpoint", "not a bnjax checkpoint"),
         args=("--resume",), setup=_damaged_checkpoints("foreign")),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (empty when ``root`` is absent)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_message_exit_2_and_leaves_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    if case.config is not None:
        text = case.config if isinstance(case.config, str) else toml(case.config)
        (tmp_path / "configs" / "bad.toml").write_text(text)
    held = case.setup(tmp_path) if case.setup is not None else None
    out = tmp_path / "out"
    before, kind_before = _snapshot(out), inspect_run_dir(out).kind if not out.is_file() else "file"
    argv = list(case.argv) if case.argv is not None else ["run", "configs/bad.toml", "--out", "out", "--quiet",
                                                          *case.args]
    try:
        code = cli.main(argv)
    finally:
        if isinstance(held, HeldLock):
            os.close(held)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for word in case.words:
        assert word in err, f"{word!r} not in {err!r}"
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", "  ", "               "))]
    assert 1 <= len(lines) <= 2, err
    # The results directory is exactly as before: nothing created, nothing a later run would trust.
    assert _snapshot(out) == before
    if kind_before == "absent":
        assert not out.exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "bad.toml").write_text(toml(patched(train={"batch_size": 1000})))
    for argv in (["run", "configs/bad.toml", "--out", "out", "--debug"],
                 ["--debug", "run", "configs/bad.toml", "--out", "out"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err
        assert err.rstrip().splitlines()[-1].startswith("bnjax run: error: variant 'bad': train.batch_size = 1000 is larger than the training set (100")
    assert not (tmp_path / "out").exists()


def test_a_bug_is_not_disguised_as_bad_input(tmp_path, monkeypatch):
    # An unexpected exception inside the library is a bug: it propagates (traceback, exit 1), not exit 2.
    from bnjax.run import runner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "bad.toml").write_text(toml(BASE))

    def broken(*args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner, "_check_variant", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", "configs/bad.toml", "--out", "out"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ non-finite numbers

def _has_float(hint: Any) -> bool:
    return hint is float or any(_has_float(a) for a in typing.get_args(hint) if a is not Ellipsis)


def float_keys() -> list[tuple[str, str]]:
    """``(table, key)`` for every float a config can set, read from the classes that validate them, so a new
    field is covered by itself: the ``[model]`` (MLPSpec), ``[train]`` (TrainConfig), ``[sweep]`` (SweepConfig,
    lists of floats) and ``[parallel]`` (Parallel) fields, ``[data]``'s prepare options, and the options of the
    synthetic loader these tests read (``[data.loader]``)."""
    from bnjax.data._registry import _entry
    from bnjax.nn import MLPSpec
    from bnjax.run._schema import field_hints
    from bnjax.run.config import _MODEL_FROM_DATA, _PREPARE_HINTS, SweepConfig
    from bnjax.train import Parallel, TrainConfig

    loader = {k: v for k, v in typing.get_type_hints(_entry("synthetic").loader).items() if k != "return"}
    tables = {"model": {k: v for k, v in field_hints(MLPSpec).items() if k not in _MODEL_FROM_DATA},
              "train": field_hints(TrainConfig), "sweep": field_hints(SweepConfig), "parallel": field_hints(Parallel),
              "data": _PREPARE_HINTS, "data.loader": loader}
    return [(table, key) for table, hints in tables.items() for key, hint in hints.items() if _has_float(hint)]


UNBOUNDED = {("model", "renorm_rmax"), ("model", "renorm_dmax")}  # inf is a clip that never binds: accepted
NON_FINITE = ["inf", "-inf", "nan", "1e309"]  # 1e309 overflows to inf when the TOML value is parsed
REFUSED = [(t, k, v) for t, k in float_keys() for v in NON_FINITE
           if not ((t, k) in UNBOUNDED and v in ("inf", "1e309"))]


def test_every_float_key_is_enumerated():
    keys = float_keys()
    for must in [("model", "bn_eps"), ("model", "renorm_rmax"), ("model", "renorm_dmax"), ("train", "l2"),
                 ("train", "learning_rate"), ("sweep", "dropout"), ("data", "scale"), ("data.loader", "separation")]:
        assert must in keys
    assert not [k for t, k in keys if t == "parallel"]  # [parallel] holds ints and a bool today


@pytest.mark.parametrize("table, key, value", REFUSED, ids=[f"{t}.{k}={v}" for t, k, v in REFUSED])
def test_a_non_finite_number_is_refused_by_name_before_anything_is_written(table, key, value, tmp_path, monkeypatch,
                                                                           capsys):
    # model.bn_eps=inf, train.l2=nan and 1e309 used to pass the checks, write config.json with null in their
    # place and stop with "config.json: model.bn_eps = None has the wrong type", leaving the directory behind.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "bad.toml").write_text(toml(BASE))
    if table == "data.loader":
        option = f"data.loader={{ {', '.join(f'{k} = {v}' for k, v in BASE['data']['loader'].items())}, {key} = {value} }}"
    else:
        option = f"{table}.{key}={f'[{value}]' if table == 'sweep' else value}"
    code = cli.main(["run", "configs/bad.toml", "--out", "out", "--quiet", "--set", option])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    section, _, name = f"{table}.{key}".rpartition(".")
    assert f"{section}.{name} = " in err or (f"[{section.split('.')[0]}]" in err and name in err), err
    shown = {"1e309": "inf"}.get(value, value)
    assert shown in err, err
    assert not (tmp_path / "out").exists()


def test_an_unbounded_renorm_clip_trains_survives_config_json_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "r.toml").write_text(toml(BASE))
    options = ["model.norm=renorm", "model.renorm_rmax=1e309", "model.renorm_dmax=inf", "model.renorm_hold_steps=2",
               "model.renorm_warmup_steps=3"]
    argv = ["run", "configs/r.toml", "--out", "out", "--quiet", "--set", *options]
    assert cli.main(argv) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model"]["renorm_rmax"] == saved["model"]["renorm_dmax"] == float("inf")
    assert load_config(tmp_path / "out" / "config.json") == load_config("configs/r.toml", options)
    # --resume compares the saved config with the command's: equal, so it rebuilds the report.
    assert cli.main([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert cli.main([*argv, "model.renorm_rmax=3.0", "--resume"]) == 2  # a finite clip is another config
    assert "--resume: the config differs from the one saved in out/config.json (tables ['model'])" in \
        capsys.readouterr().err
