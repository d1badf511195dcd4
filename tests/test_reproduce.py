"""experiments/reproduce.py: the command that reruns a stored study, and (slow) the cheapest stored study per dataset
rerun with the same verdicts and numbers as stored."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from bnjax.run._errors import RunError
from bnjax.stored import Stored, load_stored, store_summary

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"


def _script():
    spec = importlib.util.spec_from_file_location("bnjax_reproduce", REPO / "experiments" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = _script()


def entry(study="quickstart", dataset="mnist1d", wall=10.0, overrides=("data.name=mnist1d",)):
    s = {"study": study, "dataset": dataset, "wall_time_s": wall,
         "rerun": {"config": f"configs/{study}.toml", "overrides": list(overrides)}}
    return Stored(Path(f"{study}/{dataset}/summary.json"), study, dataset, s)


def test_the_rerun_command_is_the_recorded_config_and_options(tmp_path):
    out = tmp_path / "out"
    assert reproduce.command(entry(), out) == [sys.executable, "-m", "bnjax", "run", "configs/quickstart.toml",
                                               "--set", "data.name=mnist1d", "--out", str(out), "--quiet"]
    assert "--set" not in reproduce.command(entry(overrides=()), out)
    out.mkdir()  # an interrupted rerun (a config and a metrics line) is resumed
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"variant": "a", "member": 0, "epoch": 1}\n')
    assert reproduce.command(entry(), out)[-1] == "--resume"
    bad = Stored(Path("x/y/summary.json"), "x", "y", {"rerun": None})
    with pytest.raises(RunError, match=r"records no `bnjax run` command"):
        reproduce.command(bad, out)


def test_cheapest_picks_the_shortest_stored_run_per_dataset():
    picks = reproduce.cheapest([entry("a", "mnist1d", 30.0), entry("b", "mnist1d", 20.0),
                                entry("c", "fashion_mnist", 50.0), entry("d", "fashion_mnist", None)])
    assert {d: e.study for d, e in picks.items()} == {"mnist1d": "b", "fashion_mnist": "c"}


def test_reproduce_refuses_an_empty_selection(tmp_path, capsys):
    store_summary({"study": "a", "dataset": "mnist1d"}, tmp_path)
    assert reproduce.main(["--results", str(tmp_path), "--study", "zz"]) == 2
    assert "nothing stored under" in capsys.readouterr().err
    assert reproduce.main(["--results", str(tmp_path / "missing")]) == 2


def _cheapest_per_dataset():
    return sorted(reproduce.cheapest(load_stored(RESULTS)).items()) if RESULTS.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("dataset, stored", _cheapest_per_dataset(), ids=lambda x: getattr(x, "study", x))
def test_the_cheapest_stored_study_reproduces(dataset, stored, tmp_path):
    """Reruns it as recorded (config and --set options) and requires the same verdicts, seeds, config and numbers
    (rtol 1e-5: the same machine gives identical numbers)."""
    summary, differences = reproduce.reproduce(stored, tmp_path / f"{stored.study}-{dataset}")
    assert differences == [], "\n".join(differences[:20])
    assert [c["verdict"] for c in summary["claims"]] == [c["verdict"] for c in stored.summary["claims"]]
    assert json.loads((tmp_path / f"{stored.study}-{dataset}" / "summary.json").read_text()) == summary
