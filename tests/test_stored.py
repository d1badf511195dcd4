"""Stored results (bnjax.stored): where a summary is kept, how stored summaries are read back, and how a rerun's
summary is compared with the stored one."""

from __future__ import annotations

import json

import pytest
from test_report import toy_results

from bnjax.run._errors import RunError
from bnjax.cli import main
from bnjax.run.config import resolved_raw
from bnjax.run.results import save_variant
from bnjax.stored import compare_summaries, load_stored, store_run, store_summary


def summary(study="toy", dataset="mnist1d", **extra):
    return {"study": study, "dataset": dataset, "verdicts": {"PASS": 1}, "claims": [
        {"text": "a beats b", "verdict": "PASS", "evidence": "lead +0.500", "note": "",
         "numbers": [{"values": [0.4, 0.6], "mean": 0.5, "text": "+0.500"}]}], **extra}


def test_a_summary_is_stored_under_its_study_and_dataset(tmp_path):
    path = store_summary(summary(wall_time_s=3.0), tmp_path / "results")
    assert path == tmp_path / "results" / "toy" / "mnist1d" / "summary.json"
    assert json.loads(path.read_text())["wall_time_s"] == 3.0
    store_summary(summary(wall_time_s=4.0), tmp_path / "results")  # replaces it
    [entry] = load_stored(tmp_path / "results")
    assert (entry.study, entry.dataset, entry.summary["wall_time_s"]) == ("toy", "mnist1d", 4.0)
    with pytest.raises(RunError, match=r"without a study name and a single dataset cannot be stored"):
        store_summary(summary(dataset=None), tmp_path / "results")


def test_load_stored_filters_sorts_and_refuses_a_misplaced_or_broken_summary(tmp_path):
    root = tmp_path / "results"
    for study, dataset in (("b", "mnist1d"), ("a", "fashion_mnist"), ("a", "mnist1d")):
        store_summary(summary(study, dataset), root)
    assert [(e.study, e.dataset) for e in load_stored(root)] == [("a", "fashion_mnist"), ("a", "mnist1d"),
                                                                  ("b", "mnist1d")]
    assert [(e.study, e.dataset) for e in load_stored(root, studies=["a"], datasets=["mnist1d"])] == [("a", "mnist1d")]
    with pytest.raises(RunError, match=r"no stored results directory"):
        load_stored(tmp_path / "missing")
    (root / "a" / "mnist1d" / "summary.json").write_text(json.dumps(summary("c", "mnist1d")))
    with pytest.raises(RunError, match=r"a/mnist1d/summary.json: the summary is of \(study, dataset\) \('c', "
                                       r"'mnist1d'\), not \('a', 'mnist1d'\) as its path says"):
        load_stored(root)
    (root / "a" / "mnist1d" / "summary.json").write_text("{")
    with pytest.raises(RunError, match=r"a/mnist1d/summary.json: not a readable summary"):
        load_stored(root)


def test_compare_summaries_names_every_difference_within_tolerance():
    a = summary(wall_time_s=3.0, final=[{"variant": "a", "val_acc": [0.5, 0.01]}])
    assert compare_summaries(a, json.loads(json.dumps(a))) == []
    b = json.loads(json.dumps(a))
    b.update(wall_time_s=9.0, device="gpu", compile_seconds=2.0)  # when, where and how fast it ran: not compared
    b["claims"][0].update(evidence="lead +0.501", note="n")  # text that repeats numbers: not compared
    b["final"][0]["val_acc"][0] = 0.5 * (1 + 5e-6)  # within rtol 1e-5
    assert compare_summaries(a, b) == []
    b["claims"][0]["verdict"] = "INCONCLUSIVE"
    b["claims"][0]["numbers"][0]["values"] = [0.4, 0.61]
    b["final"][0]["val_acc"] = [0.5, 0.01, 0.0]
    b["seeds"] = [0, 1]
    assert compare_summaries(a, b) == [
        "claims[0].verdict: \"PASS\" stored, \"INCONCLUSIVE\" in the rerun",
        "claims[0].numbers[0].values[1]: 0.6 stored, 0.61 in the rerun",
        "final[0].val_acc: 2 entries stored, 3 in the rerun",
        "seeds: absent in the stored summary, [0, 1] in the rerun",
    ]
    assert compare_summaries(a, b, rtol=0.1)[1:] == compare_summaries(a, b)[2:]  # 0.6 vs 0.61 within 10%
    assert compare_summaries({"x": None}, {"x": 0.0}) == ["x: null stored, 0.0 in the rerun"]


def _finished_run(run_dir, status="complete"):
    results = toy_results(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(resolved_raw(results.config)))
    for v in results:
        save_variant(run_dir, v)
    (run_dir / "run.json").write_text(json.dumps({"status": status, "wall_time_s": 2.5,
                                                  "command": "bnjax run configs/toy.toml"}))


def test_store_run_rebuilds_the_report_of_a_complete_run_and_keeps_its_summary(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    path = store_run(run, tmp_path / "results")
    stored = json.loads(path.read_text())
    assert stored == json.loads((run / "summary.json").read_text())
    assert (stored["study"], stored["wall_time_s"], stored["rerun"]["config"]) == ("toy", 2.5, "configs/toy.toml")
    assert path.relative_to(tmp_path / "results").parts == ("toy", stored["dataset"], "summary.json")


def test_store_run_refuses_what_is_not_a_complete_run(tmp_path, capsys):
    with pytest.raises(RunError, match=r"is not a bnjax run directory \(absent\)"):
        store_run(tmp_path / "nothing", tmp_path / "results")
    run = tmp_path / "run"
    _finished_run(run, status="interrupted")
    with pytest.raises(RunError, match=r"holds an unfinished run .*finish it with `bnjax run CONFIG --out .* "
                                       r"--resume`"):
        store_run(run, tmp_path / "results")
    assert main(["report", str(run), "--store", str(tmp_path / "results")]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("bnjax report: error: ") and err.count("\n") == 1
    assert not (tmp_path / "results").exists()
