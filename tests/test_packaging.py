"""The studies install with the package: a built wheel ships configs/ and experiments/, and `bnjax list` and
`bnjax run NAME` work from any directory, in a clone and after a non-editable install.

The wheel is built from a copy of the sources (so no build/ or egg-info lands in the clone) with the setuptools
of the test's own environment (`--no-build-isolation`, offline). It is installed into a fresh virtual
environment whose only link to the test's environment is a .pth file naming the test's site-packages, so the
dependencies (jax, ...) come from there while `bnjax` itself comes from the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bnjax import cli
from bnjax.run._studies import find_config, shipped_configs_dir
from bnjax.run.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.toml"))
ANALYSES = sorted(p.name for p in (REPO / "experiments").glob("*.py"))


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the clone must not shadow the install
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for p in REPO.iterdir():  # top-level files (pyproject.toml, README.md, ...) and the three shipped folders
        if p.is_file():
            shutil.copy2(p, src / p.name)
    for d in ("bnjax", "configs", "experiments"):
        shutil.copytree(REPO / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (whl,) = (tmp / "dist").glob("bnjax-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (not editable); dependencies seen through a .pth file."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=env_dir.parent)
    python = env_dir / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=env_dir).stdout.strip()
    outer = [p for p in sys.path if p and Path(p).is_dir() and Path(p).name in ("site-packages", "dist-packages")]
    (Path(purelib) / "outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    # --ignore-installed: a bnjax (editable) in the outer site-packages is neither reused nor uninstalled.
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
         cwd=env_dir)
    return env_dir


def test_wheel_ships_the_package_and_every_study(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "bnjax").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules missing from the wheel: add their package to pyproject.toml"
    assert "bnjax/py.typed" in names
    assert {f"bnjax/_studies/configs/{c}" for c in CONFIGS} <= names
    assert {f"bnjax/_studies/experiments/{a}" for a in ANALYSES} <= names
    # One copy in the repository, nothing else at the top of site-packages.
    assert {n.split("/")[0] for n in names} == {"bnjax", "bnjax-0.1.0.dist-info"}
    entry_points = zipfile.ZipFile(wheel).read("bnjax-0.1.0.dist-info/entry_points.txt").decode()
    assert "bnjax = bnjax.cli:main" in entry_points


def test_wheel_layout_finds_its_studies_and_analyses(wheel, tmp_path):
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    # The wheel's own locator (loaded from the extracted file) points at the shipped configs...
    spec = importlib.util.spec_from_file_location("wheel_studies", site / "bnjax" / "run" / "_studies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.shipped_configs_dir() == site / "bnjax" / "_studies" / "configs"
    # ... and each config's study.analysis resolves to the shipped analysis module beside them.
    for name in CONFIGS:
        cfg = load_config(site / "bnjax" / "_studies" / "configs" / name)
        assert cfg.analysis_path == site / "bnjax" / "_studies" / "experiments" / f"{Path(name).stem}.py"
        assert cfg.analysis_path.is_file()


def test_clone_finds_studies_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert shipped_configs_dir() == REPO / "configs"
    assert find_config("quickstart") == REPO / "configs" / "quickstart.toml"
    assert find_config("quickstart.toml") == REPO / "configs" / "quickstart.toml"
    path = REPO / "configs" / "dropout.toml"
    assert find_config(str(path)) == path  # a path is used as given
    with pytest.raises(FileNotFoundError, match=r"config nope not found: .*bnjax list.*quickstart"):
        find_config("nope")
    with pytest.raises(FileNotFoundError, match=r"config configs/quickstart\.toml not found"):
        find_config("configs/quickstart.toml")  # a path is never reinterpreted as a name

    assert cli.main(["list"]) == 0  # no ./configs here: the shipped studies, by name
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [Path(c).stem for c in CONFIGS]
    assert cli.main(["run", "nope"]) == 2
    assert "bnjax run: error: config nope not found" in capsys.readouterr().err

    # A local ./configs comes first, and a study is found by its study.name as well as its file name.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.toml").write_text('[study]\nname = "my_study"\ndescription = "mine"\n')
    assert find_config("my_study") == Path("configs") / "mine.toml"
    assert find_config("quickstart") == REPO / "configs" / "quickstart.toml"
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["configs/mine.toml", "mine"]


def test_installed_wheel_lists_studies_from_any_directory(venv, tmp_path):
    where = _run([str(venv / "bin" / "python"), "-c", "import bnjax; print(bnjax.__file__)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel, not the clone
    out = _run([str(venv / "bin" / "bnjax"), "list"], cwd=tmp_path).stdout
    assert [line.split()[0] for line in out.splitlines()] == [Path(c).stem for c in CONFIGS]


@pytest.mark.slow
def test_installed_wheel_runs_quickstart_from_any_directory(venv, tmp_path):
    proc = _run([str(venv / "bin" / "bnjax"), "run", "quickstart", "--set", "train.epochs=1", "--quiet",
                 "--out", "run"], cwd=tmp_path, timeout=600)
    assert proc.stdout.strip().splitlines()[-1].startswith("results: run/report.md (")
    run = tmp_path / "run"
    assert (run / "config.source.toml").read_text() == (REPO / "configs" / "quickstart.toml").read_text()
    assert (run / "analysis.py").read_text() == (REPO / "experiments" / "quickstart.py").read_text()
    assert json.loads((run / "summary.json").read_text())["total"] >= 1  # the shipped analysis judged the run
    assert (run / "report.md").is_file()
