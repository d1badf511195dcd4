"""Generated tables (bnjax.stored): the README's results table and REFERENCES.md's per-study blocks come from the
stored summaries only, and the ones in the repository are what experiments/results/ generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnjax.run._errors import RunError
from bnjax.cli import main
from bnjax.stored import store_summary
from bnjax.stored._tables import check_tables, claim_cell, generate, readme_cell, write_tables

REPO = Path(__file__).resolve().parents[1]


def test_readme_and_references_tables_are_generated_from_the_stored_results():
    """Fails when README.md's results table or a REFERENCES.md block differs from experiments/results/; fix with
    `bnjax report --table experiments/results/` (after storing the runs that changed)."""
    assert check_tables(REPO / "experiments" / "results", REPO / "README.md", REPO / "experiments" / "REFERENCES.md") \
        == []


def number(text, mean, margin, holds=True):
    return {"text": text, "mean": mean, "margin": margin, "holds": holds}


def summary(study, dataset, verdicts, *, wall=46.2, load=((0.2, 0.3, 0.4), (2.1, 1.0, 0.5)), overrides=(),
            claims=None):
    return {
        "study": study, "dataset": dataset, "sources_say": f"{study} says so", "key_numbers": "BN .82 vs none .34",
        "verdicts": {"PASS": 0, "FAIL": 0, "DIFFERS": 0, "INCONCLUSIVE": 0, **verdicts}, "num_seeds": 5,
        "wall_time_s": wall, "load_average": {"start": list(load[0]), "end": list(load[1])},
        "rerun": {"config": f"configs/{study}.toml", "overrides": list(overrides)},
        "device": "cpu, 1 device(s)", "software": {"bnjax": "0.1.0", "jax": "0.10.2"}, "compile_cache": False,
        "claims": claims if claims is not None else [
            {"text": "BN leads", "verdict": "PASS", "label": "PASS", "note": "",
             "numbers": [number("+0.466 (95% interval +0.428..+0.504) > 0.3", 0.466, 0.166)]}],
    }


README = "# x\n\nprose\n\n<!-- results-table:start -->\nold table\n<!-- results-table:end -->\n\nmore prose\n"
REFERENCES = ("# refs\n\n## beta\n\n<!-- results:beta:start -->\n<!-- results:beta:end -->\n\n## alpha\n\n"
              "<!-- results:alpha:start -->\nold\n<!-- results:alpha:end -->\n\n## gamma\n\n"
              "<!-- results:gamma:start -->\n<!-- results:gamma:end -->\n")


def test_readme_cell_states_verdicts_key_numbers_time_load_seeds_and_extra_options():
    s = summary("a", "mnist1d", {"PASS": 5, "DIFFERS": 1})
    assert readme_cell(s) == "**5 PASS, 1 DIFFERS**: BN .82 vs none .34; 46 s at load 0.2 to 2.1, 5 seeds"
    s = summary("a", "fashion_mnist", {"INCONCLUSIVE": 2}, wall=384.0,
                overrides=["train.epochs=1", "data.name=fashion_mnist", "sweep.seeds=[0,1]"])
    assert readme_cell(s) == ("**2 INCONCLUSIVE**: BN .82 vs none .34; 6.4 min at load 0.2 to 2.1, 5 seeds, "
                              "`--set train.epochs=1 sweep.seeds=[0,1]`")
    assert readme_cell(None) == "not stored"


def test_claim_cell_shows_the_numbers_verdict_and_note_or_the_closest_of_many():
    c = {"verdict": "DIFFERS", "label": "DIFFERS (from CIFAR-10, as measured)", "note": "no gap here",
         "numbers": [number("-0.009 (95% interval -0.02..+0.00) > 0", -0.009, -0.009, False)]}
    assert claim_cell(c) == ("-0.009 (95% interval -0.02..+0.00) > 0: **DIFFERS** (from CIFAR-10, as measured) — no "
                             "gap here")
    many = [number(f"epoch {e}: lead", 0.1, 0.1 + e / 100) for e in range(1, 11)]
    many[6] = number("epoch 7: lead", 0.01, 0.01, None)  # the unclear one decides the verdict
    c = {"verdict": "INCONCLUSIVE", "label": "INCONCLUSIVE", "note": "12 seeds would decide it", "numbers": many}
    assert claim_cell(c) == "10 tests, the closest: epoch 7: lead: **INCONCLUSIVE** — 12 seeds would decide it"
    assert claim_cell({"verdict": "PASS", "evidence": "all trained", "numbers": []}) == "all trained: **PASS**"
    assert claim_cell(None) == "not checked"


def test_generate_orders_studies_as_references_and_replaces_only_between_markers(tmp_path):
    root = tmp_path / "results"
    store_summary(summary("alpha", "mnist1d", {"PASS": 4}), root)
    store_summary(summary("alpha", "fashion_mnist", {"PASS": 3, "INCONCLUSIVE": 1}, overrides=["data.name=x"]), root)
    store_summary(summary("beta", "mnist1d", {"FAIL": 1}), root)
    readme, refs = generate(root, README, REFERENCES)
    assert readme.startswith("# x\n\nprose\n\n<!-- results-table:start -->\n| study | what the sources say | "
                             "MNIST-1D | Fashion-MNIST |\n")
    assert readme.endswith("\n<!-- results-table:end -->\n\nmore prose\n") and "old table" not in readme
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    assert [r.split(" | ")[0] for r in rows] == ["| `beta`", "| `alpha`"]  # REFERENCES.md's order
    assert rows[0].endswith("| **1 FAIL**: BN .82 vs none .34; 46 s at load 0.2 to 2.1, 5 seeds | not stored |")
    assert ("Device: cpu, 1 device(s). Software: bnjax 0.1.0, jax 0.10.2. JAX's persistent compilation cache: off."
            in readme)
    block = refs[refs.index("<!-- results:alpha:start -->"):refs.index("<!-- results:alpha:end -->")]
    assert "| # | claim, as the study checks it | MNIST-1D | Fashion-MNIST |" in block and "old" not in block
    assert ("| 1 | BN leads | +0.466 (95% interval +0.428..+0.504) > 0.3: **PASS** | +0.466 (95% interval "
            "+0.428..+0.504) > 0.3: **PASS** |") in block
    assert ("Runs: MNIST-1D: `bnjax run configs/alpha.toml`, 5 seeds; Fashion-MNIST: `bnjax run configs/alpha.toml "
            "--set data.name=x`, 5 seeds.") in block
    gamma = refs[refs.index("<!-- results:gamma:start -->"):]
    assert "No stored results yet: `bnjax run configs/gamma.toml --store experiments/results/`" in gamma
    assert generate(root, readme, refs) == (readme, refs)  # regenerating changes nothing


def test_generate_refuses_missing_markers_and_unplaced_studies(tmp_path):
    root = tmp_path / "results"
    store_summary(summary("delta", "mnist1d", {"PASS": 1}), root)
    with pytest.raises(RunError, match=r"experiments/REFERENCES.md: no block for the stored study 'delta'; add "
                                       r"<!-- results:delta:start --> and <!-- results:delta:end -->"):
        generate(root, README, REFERENCES)
    refs = REFERENCES + "<!-- results:delta:start -->\n<!-- results:delta:end -->\n"
    with pytest.raises(RunError, match=r"README.md: needs exactly one <!-- results-table:start --> and one "
                                       r"<!-- results-table:end --> \(found 0 and 1\)"):
        generate(root, README.replace("<!-- results-table:start -->", ""), refs)
    with pytest.raises(RunError, match=r"comes before"):
        generate(root, "<!-- results-table:end -->\n<!-- results-table:start -->\n", refs)


def test_write_and_check_through_the_command_line(tmp_path, capsys):
    root = tmp_path / "results"
    store_summary(summary("alpha", "mnist1d", {"PASS": 4}), root)
    readme, refs = tmp_path / "README.md", tmp_path / "REFERENCES.md"
    readme.write_text(README)
    refs.write_text(REFERENCES)
    args = ["report", "--table", str(root), "--readme", str(readme), "--references", str(refs)]
    assert main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert f"bnjax report: {readme}:6: has 'old table'; the stored results give '| study | what the sources say |" \
           f" MNIST-1D |'" in err
    assert f"bnjax report: {refs}:6: has '<!-- results:beta:end -->'; the stored results give 'No stored" in err
    assert f"regenerate with: bnjax report --table {root}" in err
    assert main(args) == 0
    assert "rewritten from" in capsys.readouterr().out
    assert main([*args, "--check"]) == 0 and write_tables(root, readme, refs) == []
    assert main(["report", "--table", str(tmp_path / "none"), "--readme", str(readme), "--references",
                 str(refs)]) == 2
    assert "no stored results directory" in capsys.readouterr().err
