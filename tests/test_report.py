"""Reports from saved numbers: result selection, tables, plots, claims and the analysis-module loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bnjax.run.config import parse_config
from bnjax.run.report import (
    Claim,
    fmt,
    load_analysis,
    loss_tail,
    mean_std,
    summary_rows,
    write_report,
)
from bnjax.run.results import (
    StudyResults,
    VariantResult,
    load_variant,
    read_metrics,
    save_variant,
)
from bnjax.run.summary import parse_command


def make_variant(name, members, axes, curves, *, steps=4, diverged=None):
    """A VariantResult whose train/val accuracy histories are given per member."""
    k = len(members)
    hist = {"train_acc": np.asarray([c[0] for c in curves], float),
            "val_acc": np.asarray([c[1] for c in curves], float)}
    hist["train_loss"] = 2.3 - hist["train_acc"]
    loss = np.tile(np.linspace(2.3, 1.0, steps), (k, 1))
    d = np.full(k, -1) if diverged is None else np.asarray(diverged)
    loss[d >= 0, 2:] = np.nan
    return VariantResult(name=name, members=members, axes=axes, history=hist, loss_history=loss,
                         diverged_step=d, wall_time=1.5, spec={"model": {"norm": name}, "train": {"epochs": 2}})


def toy_results(tmp_path):
    cfg = parse_config({"study": {"name": "toy", "description": "toy study"}, "variants": [{"name": "a"},
                                                                                          {"name": "b"}]})
    members = [{"seed": s, "dropout": r} for r in (0.0, 0.5) for s in (0, 1)]
    a = make_variant("a", members, ("dropout",), [
        ([0.1, 0.5, 0.7], [0.1, 0.3, 0.4]), ([0.1, 0.6, 0.9], [0.1, 0.3, 0.2]),
        ([0.1, 0.4, 0.5], [0.1, 0.3, 0.45]), ([0.1, 0.4, np.nan], [0.1, 0.35, np.nan]),
    ], diverged=[-1, -1, -1, 2])
    b = make_variant("b", [{"seed": 0}, {"seed": 1}], (), [([0.1, 0.2, 0.3], [0.1, 0.2, 0.2])] * 2)
    return StudyResults(run_dir=tmp_path, config=cfg, variants={"a": a, "b": b}, meta={"wall_time_s": 3.0})


def test_mean_std_and_fmt_ignore_non_finite_values():
    assert mean_std([1.0, 2.0, np.nan, np.inf]) == (1.5, 0.5)
    assert np.isnan(mean_std([np.nan])[0])
    assert fmt([0.5, 0.7]) == "0.600 ± 0.100"
    assert fmt([0.25]) == "0.250" and fmt([np.nan]) == "n/a"


def test_variant_selection_by_swept_values(tmp_path):
    a = toy_results(tmp_path)["a"]
    assert a.groups() == [{"dropout": 0.0}, {"dropout": 0.5}]
    np.testing.assert_array_equal(a.mask(dropout=0.5), [False, False, True, True])
    np.testing.assert_array_equal(a.mask(dropout=0.5, seed=1), [False, False, False, True])
    np.testing.assert_allclose(a.final("train_acc", dropout=0.0), [0.7, 0.9])
    np.testing.assert_allclose(a.best("val_acc", dropout=0.0), [0.4, 0.3])  # best over epochs >= 1
    np.testing.assert_allclose(a.best("val_acc", dropout=0.5), [0.45, 0.35])  # NaN epochs skipped
    np.testing.assert_array_equal(a.diverged(dropout=0.5), [False, True])
    assert a.values("dropout") == [0.0, 0.5] and a.epochs == 2
    np.testing.assert_allclose(loss_tail(a, steps=2, dropout=0.0), [np.mean(np.linspace(2.3, 1.0, 4)[-2:])] * 2)
    assert np.isinf(loss_tail(a, steps=2, dropout=0.5)[1])
    with pytest.raises(KeyError, match=r"no metric 'test_acc'; saved metrics are"):
        a.curves("test_acc")
    with pytest.raises(KeyError, match=r"no member matches \{'dropout': 0\.2\}"):
        a.curves("val_acc", dropout=0.2)
    with pytest.raises(KeyError, match=r"no swept axis 'lr'"):
        a.mask(lr=1.0)


def test_summary_rows_are_mean_and_std_over_seeds(tmp_path):
    rows = summary_rows(toy_results(tmp_path))
    assert [(r["variant"], r.get("dropout")) for r in rows] == [("a", 0.0), ("a", 0.5), ("b", None)]
    m, s = rows[0]["train_acc"]
    assert m == pytest.approx(np.mean([0.7, 0.9])) and s == pytest.approx(np.std([0.7, 0.9]))
    assert rows[1]["train_acc"][0] == pytest.approx(0.5)  # the diverged member's NaN is left out
    assert (rows[1]["diverged"], rows[1]["seeds"]) == (1, 2)


def test_save_and_load_variant_round_trip(tmp_path):
    a = toy_results(tmp_path)["a"]
    a.extras = {"ratio": np.array([0.5, np.nan])}
    save_variant(tmp_path, a)
    b = load_variant(tmp_path, "a")
    assert b.members == a.members and b.axes == a.axes and b.wall_time == a.wall_time
    for k in a.history:
        np.testing.assert_array_equal(b.history[k], a.history[k])
    np.testing.assert_array_equal(b.loss_history, a.loss_history)
    assert b.extras == {"ratio": [0.5, None]}
    with pytest.raises(FileNotFoundError, match=r"variant 'zz' did not finish; continue the run with"):
        load_variant(tmp_path, "zz")


def test_read_metrics_keeps_the_last_copy_and_skips_a_torn_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    rows = [{"variant": "a", "member": 0, "epoch": 1, "val_acc": 0.1},
            {"variant": "a", "member": 0, "epoch": 1, "val_acc": 0.2},
            {"variant": "a", "member": 1, "epoch": 1, "val_acc": 0.3}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"variant": "a", "mem')
    got = read_metrics(p)
    assert sorted((r["member"], r["val_acc"]) for r in got) == [(0, 0.2), (1, 0.3)]


ANALYSIS = '''
from bnjax.claims import Claim, Expect, every_seed, exceeds, paired
from bnjax.run.report import Figure

def analyze(results):
    a, b = results["a"], results["b"]
    lead = paired(a, a.final("train_acc", dropout=0.0), b, b.final("train_acc"), where_a={"dropout": 0.0})
    differs = Expect(differs="CIFAR-10", why="b is known to lead on this dataset")
    return [Claim("a beats b", lead.mean() > 0, f"lead {lead.mean():+.3f}"),
            Claim("b beats a", lead.mean() < 0, f"lead {-lead.mean():+.3f}"),
            Claim.decide("b beats a by 0.5 (source)", exceeds(-lead, 0.5), differs,
                         differs_if=every_seed(lead > 0, what="with a ahead")),
            Claim.decide("a beats b by 0.5", exceeds(lead, 0.5))]

def notes(results):
    return ["a note"]

def plots(results, out_dir):
    (out_dir / "extra.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n")
    return [Figure("extra.png", "an extra plot")]
'''


def test_write_report_lays_out_computed_verdicts_tables_and_plots(tmp_path):
    mod_path = tmp_path / "toy_analysis.py"
    mod_path.write_text(ANALYSIS)
    results = toy_results(tmp_path)
    summary = write_report(results, load_analysis(mod_path))
    assert (summary["passed"], summary["total"], summary["dataset"]) == (1, 4, "mnist1d")
    assert summary["verdicts"] == {"PASS": 1, "FAIL": 1, "DIFFERS": 1, "INCONCLUSIVE": 1}
    assert [c["verdict"] for c in summary["claims"]] == ["PASS", "FAIL", "DIFFERS", "INCONCLUSIVE"]
    md = (tmp_path / "report.md").read_text()
    assert "**1 of 4 claims pass on MNIST-1D** (1 PASS, 1 FAIL, 1 DIFFERS, 1 INCONCLUSIVE)." in md
    assert "| 1 | a beats b | **PASS** | lead +0.500 |" in md
    assert "| 2 | b beats a | **FAIL** | lead -0.500 |" in md
    # per-seed leads 0.4 and 0.6 (seeds 0, 1): 95% interval 0.5 ± 12.71 * 0.1 (t with 1 degree of freedom)
    assert ("| 3 | b beats a by 0.5 (source) | **DIFFERS** (from CIFAR-10, as measured) | -0.500 (95% interval "
            "-1.771..+0.771; seeds -0.400/-0.600) > 0.5; known outcome here: 2/2 seeds with a ahead |") in md
    assert "- claim 3, DIFFERS (from CIFAR-10, as measured): b is known to lead on this dataset" in md
    assert "- claim 4, INCONCLUSIVE: the threshold lies inside the spread over seeds" in md
    for word in ("PASS", "FAIL", "DIFFERS", "INCONCLUSIVE"):
        assert f"- **{word}**: " in md  # the legend
    assert "| a | 0 | 0.800 ± 0.100 |" in md  # final numbers table: mean ± std over the two seeds
    assert "| a | 0.5 | 0.500 ± 0.000 |" in md and "1/2 |" in md  # the diverged member is counted
    assert "- a note" in md and "![an extra plot](extra.png)" in md
    for png in ("curves.png", "loss_steps.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in md
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["claims"] == summary["claims"] and saved["study"] == "toy"


def test_write_report_without_an_analysis_module(tmp_path):
    summary = write_report(toy_results(tmp_path), None)
    assert summary["total"] == 0
    assert "No analysis module: no claims were checked." in (tmp_path / "report.md").read_text()


def test_claim_verdict_is_a_plain_bool():
    c = Claim("x", np.bool_(True), "n")
    assert c.passed is True and c.verdict == "PASS"


def test_write_report_refuses_objects_that_are_not_claims(tmp_path):
    mod_path = tmp_path / "bad_analysis.py"
    mod_path.write_text("from types import SimpleNamespace\n"
                        "def analyze(results):\n    return [SimpleNamespace(text='t', passed=True, evidence='e')]\n")
    with pytest.raises(TypeError, match=r"analyze\(\) must return bnjax.claims.Claim objects, got SimpleNamespace"):
        write_report(toy_results(tmp_path), load_analysis(mod_path))


def test_load_analysis_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"analysis module .*missing\.py not found; set study\.analysis"):
        load_analysis(tmp_path / "missing.py")
    p = tmp_path / "noclaims.py"
    p.write_text("X = 1\n")
    with pytest.raises(TypeError, match=r"defines no analyze\(results\) -> list\[Claim\] function"):
        load_analysis(p)
    assert load_analysis(None) is None


def test_library_never_imports_experiments():
    root = Path(__file__).resolve().parents[1] / "bnjax"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import experiments" not in text and "from experiments" not in text, path


def test_summary_carries_the_numbers_the_run_and_the_machine(tmp_path):
    mod_path = tmp_path / "toy_analysis.py"
    mod_path.write_text(ANALYSIS + '\nSOURCES_SAY = "a beats b"\n\ndef key_numbers(results):\n    return "a .80"\n')
    results = toy_results(tmp_path)
    results.meta.update(command="bnjax run configs/toy.toml --set train.epochs=2 'sweep.seeds=[0,1]' --out x --quiet",
                        device="cpu, 1 device(s)", software={"bnjax": "0.1.0", "bnjax_commit": "abcdef0123456789",
                                                             "bnjax_dirty": False, "jax": "0.10.2"},
                        load_average_start=[0.5, 0.4, 0.3], load_average_end=[2.1, 1.0, 0.5], started="2026-01-01")
    summary = write_report(results, load_analysis(mod_path))
    assert (summary["sources_say"], summary["key_numbers"]) == ("a beats b", "a .80")
    assert (summary["seeds"], summary["num_seeds"]) == ([0, 1], 2)
    assert summary["rerun"] == {"config": "configs/toy.toml", "overrides": ["train.epochs=2", "sweep.seeds=[0,1]"]}
    assert summary["config"]["study"]["name"] == "toy" and summary["wall_time_s"] == 3.0
    assert summary["load_average"] == {"start": [0.5, 0.4, 0.3], "end": [2.1, 1.0, 0.5]}
    assert summary["software"]["bnjax_commit"] == "abcdef0123456789" and summary["device"] == "cpu, 1 device(s)"
    claim = summary["claims"][3]  # "a beats b by 0.5": leads 0.4, 0.6 -> mean 0.5 on the threshold
    assert claim["verdict"] == "INCONCLUSIVE" and claim["seeds_to_decide"] == "no finite number"
    assert claim["numbers"][0]["values"] == pytest.approx([0.4, 0.6])
    assert claim["numbers"][0]["mean"] == pytest.approx(0.5) and claim["numbers"][0]["holds"] is None
    assert "seeds_to_decide" not in summary["claims"][0] and summary["claims"][0]["numbers"] == []
    md = (tmp_path / "report.md").read_text()
    assert "- seeds: 2 (0, 1)" in md
    assert ("- wall-clock: 3.0 s (from setting up the run directory to the report), load average (1, 5, 15 min): "
            "0.5, 0.4, 0.3 at the start, 2.1, 1.0, 0.5 at the end") in md
    assert "- software: bnjax 0.1.0 (commit abcdef0123), jax 0.10.2" in md
    assert "- claim 4, INCONCLUSIVE: the threshold lies inside the spread over seeds; no number of seeds" in md


@pytest.mark.parametrize("command, rerun", [
    ("bnjax run configs/q.toml", {"config": "configs/q.toml", "overrides": []}),
    ("bnjax run q --set a.b=1 --set 'c.d=[1, 2]' --out o --resume --quiet --cpu-devices 2",
     {"config": "q", "overrides": ["a.b=1", "c.d=[1, 2]"]}),
    ("bnjax report runs/x", None), ("python train.py", None), (None, None), ("bnjax run", None),
    ("bnjax run 'unclosed", None),
])
def test_parse_command_recovers_the_config_and_the_set_options(command, rerun, capsys):
    assert parse_command(command) == rerun
