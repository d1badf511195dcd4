"""Study configs: TOML -> frozen dataclasses, overrides, and errors that name the key, value and fix."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from bnjax.nn import MLPSpec
from bnjax.run.config import (
    ConfigError,
    SweepConfig,
    apply_overrides,
    list_studies,
    load_config,
    parse_config,
    parse_override,
    resolved_raw,
)
from bnjax.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "study": {"name": "toy", "description": "a toy", "analysis": "experiments/toy.py"},
    "data": {"name": "mnist1d", "num_train": 300, "standardize": True},
    "model": {"hidden": [16, 16], "weight_scale": 2e-2},
    "train": {"epochs": 3, "batch_size": 25},
    "sweep": {"seeds": [0, 1], "weight_scale": [1e-3, 1e-1]},
    "variants": [{"name": "none"}, {"name": "bn", "model": {"norm": "batch"}, "train": {"batch_size": 10}}],
}


def test_parse_resolves_variants_over_the_base_tables():
    cfg = parse_config(BASE)
    assert [v.name for v in cfg.variants] == ["none", "bn"]
    none, bn = cfg.variants
    assert none.model.norm == "none" and bn.model.norm == "batch"
    assert none.model.hidden == (16, 16) and isinstance(none.model.hidden, tuple)
    assert none.train == TrainConfig(epochs=3, batch_size=25)
    assert bn.train.batch_size == 10 and bn.train.epochs == 3
    assert dict(none.data.options) == {"num_train": 300, "standardize": True}
    spec = bn.model.spec(40, 10)
    assert spec == MLPSpec(in_features=40, num_classes=10, hidden=(16, 16), norm="batch", weight_scale=2e-2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        none.model.norm = "layer"  # type: ignore[misc]


def test_model_section_mirrors_mlpspec_fields_except_data_sizes():
    cfg = parse_config({"study": {"name": "x"}})
    model_fields = {f.name for f in dataclasses.fields(cfg.variants[0].model)}
    spec_fields = {f.name for f in dataclasses.fields(MLPSpec)}
    assert model_fields == spec_fields - {"in_features", "num_classes"}
    # Defaults come from MLPSpec and TrainConfig themselves.
    assert cfg.variants[0].model.spec(7, 3) == MLPSpec(in_features=7, num_classes=3)
    assert cfg.variants[0].train == TrainConfig()


def test_no_variants_gives_one_named_after_the_study():
    cfg = parse_config({"study": {"name": "solo"}, "model": {"norm": "layer"}})
    assert [v.name for v in cfg.variants] == ["solo"] and cfg.variants[0].model.norm == "layer"


def test_sweep_members_are_the_cartesian_product_with_seed_fastest():
    sweep = SweepConfig(seeds=(0, 1, 2), dropout=(0.0, 0.5), learning_rate=(1e-3, 1e-2))
    members = sweep.members()
    # Reference: itertools.product in SWEEP_AXES order (weight_scale, dropout, learning_rate, bn_momentum), seed last.
    expected = list(itertools.product((0.0, 0.5), (1e-3, 1e-2), (0, 1, 2)))
    assert list(zip(members["dropout"], members["learning_rate"], members["seed"])) == expected
    assert sweep.axes == ("dropout", "learning_rate") and sweep.num_members == 12
    assert SweepConfig(seeds=(4,)).members() == {"seed": [4]}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.norm=bn", r"model\.norm = 'bn' is not a valid option; use one of \('none', 'batch', 'layer'\)"),
        ("model.norms=batch", r"model\.norms is not a known key; valid keys in \[model\]: hidden, norm, dropout"),
        ("train.epochs=2.5", r"train\.epochs = 2\.5 has the wrong type: expected an integer"),
        ("train.learning_rate=-1", r"train\.learning_rate = -1\.0 must be a positive number"),
        ("train.optimizer=rmsprop", r"train\.optimizer = 'rmsprop' is not a valid option; use one of .*'adam'"),
        ("model.hidden=[10, 'a']", r"model\.hidden\[1\] = 'a' has the wrong type: expected an integer"),
        ("model.hidden=10", r"model\.hidden = 10 has the wrong type: expected a list of integers"),
        ("model.bn_unbiased=1", r"model\.bn_unbiased = 1 has the wrong type: expected a boolean"),
        ("model.dropout=1.0", r"model\.dropout = 1\.0 is the drop probability and must be in \[0, 1\)"),
        ("sweep.dropout=[0.5, 1.5]", (r"sweep\.dropout = \[0\.5, 1\.5\]: the value 1\.5 is out of range; each must "
                                      r"be in \[0, 1\)")),
        ("sweep.weight_scale=[0.0]", r"sweep\.weight_scale = \[0\.0\]: the value 0\.0 is out of range; each must be > 0"),
        ("sweep.seeds=[]", r"sweep\.seeds = \[\] must list at least one seed"),
        ("sweep.seeds=[1, 1]", r"sweep\.seeds = \[1, 1\] must be distinct ints >= 0"),
        ("sweep.keep=[0.5]", r"sweep\.keep is not a known key; valid keys in \[sweep\]: seeds, weight_scale, dropout"),
        ("data.name=cifar", r"data\.name = 'cifar' is not a known dataset; use one of cifar10, digits, fashion_mnist"),
        ("data.num_train=0", r"data\.num_train = 0 is out of range; it must be >= 1"),
        ("data.shuffle=true", r"data\.shuffle is not a known key; valid keys in \[data\]: name, root, loader, num_train"),
        ("study.name='a b'", r"study\.name = 'a b' must be a non-empty word"),
        ("variants.bn.model.norm=group", r"variants\[1\] \(bn\): model\.norm = 'group' is not a valid option"),
    ],
)
def test_errors_name_the_key_the_value_and_the_choices(override, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(apply_overrides(BASE, [override]))


def test_structural_errors():
    with pytest.raises(ConfigError, match=r"config\.extra is not a known key; valid keys in \[config\]: study, data"):
        parse_config({**BASE, "extra": {}})
    with pytest.raises(ConfigError, match=r"\[study\] is missing"):
        parse_config({"model": {}})
    with pytest.raises(ConfigError, match=r"variants\[1\]\.name = 'none' repeats an earlier variant's name"):
        parse_config({**BASE, "variants": [{"name": "none"}, {"name": "none"}]})
    with pytest.raises(ConfigError, match=r"variants\[0\]\.colour is not a known key; valid keys in \[variants\[0\]\]: "
                                          r"name, description, data, model, train, sweep"):
        parse_config({**BASE, "variants": [{"name": "a", "colour": 1}]})
    with pytest.raises(ConfigError, match=r"variants must be an array of tables"):
        parse_config({**BASE, "variants": {"name": "a"}})


def test_override_values_are_toml_literals_or_bare_words():
    assert parse_override("train.epochs=2") == (("train", "epochs"), 2)
    assert parse_override("sweep.seeds=[0, 1]") == (("sweep", "seeds"), [0, 1])
    assert parse_override("train.learning_rate=1e-3") == (("train", "learning_rate"), 1e-3)
    assert parse_override("model.bn_unbiased=true") == (("model", "bn_unbiased"), True)
    assert parse_override('model.norm="batch"') == (("model", "norm"), "batch")
    assert parse_override("model.norm=batch") == (("model", "norm"), "batch")
    assert parse_override("data.loader={num_samples = 500}") == (("data", "loader"), {"num_samples": 500})
    with pytest.raises(ConfigError, match=r"--set 'epochs' must look like section\.key=value"):
        parse_override("epochs")
    with pytest.raises(ConfigError, match=r"must name a table and a key, e\.g\. train\.epochs"):
        parse_override("epochs=3")


def test_overrides_win_over_variants_and_can_target_one_variant():
    raw = apply_overrides(BASE, ["train.batch_size=5", "variants.none.model.norm=layer", "study.description=x"])
    cfg = parse_config(raw)
    assert [v.train.batch_size for v in cfg.variants] == [5, 5]  # the bn variant's own 10 is overridden too
    assert [v.model.norm for v in cfg.variants] == ["layer", "batch"]
    assert cfg.study.description == "x"
    assert BASE["train"]["batch_size"] == 25  # the input is not mutated
    with pytest.raises(ConfigError, match=r"no variant named 'bx'; variants are \['none', 'bn'\]"):
        apply_overrides(BASE, ["variants.bx.model.norm=layer"])
    with pytest.raises(ConfigError, match=r"unknown table 'optim'; use one of study, data, model, train, sweep"):
        apply_overrides(BASE, ["optim.lr=1"])


def test_load_config_resolves_analysis_against_the_project_root_and_round_trips(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "toy.py").write_text("def analyze(results):\n    return []\n")
    toml = tmp_path / "configs" / "toy.toml"
    toml.write_text('[study]\nname = "toy"\nanalysis = "experiments/toy.py"\n[train]\nepochs = 4\n'
                    '[[variants]]\nname = "a"\nmodel = { norm = "layer" }\n')
    cfg = load_config(toml, ["train.epochs=2"])
    assert cfg.analysis_path == (tmp_path / "experiments" / "toy.py").resolve()
    assert cfg.variants[0].train.epochs == 2
    # The saved, resolved copy (config.json in a run directory) parses to the same config from anywhere.
    saved = tmp_path / "run" / "config.json"
    saved.parent.mkdir()
    saved.write_text(json.dumps(resolved_raw(cfg)))
    again = load_config(saved)
    assert again.variants == cfg.variants and again.analysis_path == cfg.analysis_path
    bad = tmp_path / "configs" / "bad.toml"
    bad.write_text("[study\nname = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match=r"bnjax list"):
        load_config(tmp_path / "nope.toml")


def test_list_studies_reports_descriptions_and_invalid_files(tmp_path):
    (tmp_path / "a.toml").write_text('[study]\nname = "a"\ndescription = "first study"\n')
    (tmp_path / "b.toml").write_text('[study]\nname = "b"\n[model]\nnorm = "group"\n')
    rows = list_studies(tmp_path)
    assert [(r.name, r.description, r.error is None) for r in rows] == [("a", "first study", True), ("b", "", False)]
    assert "model.norm = 'group'" in rows[1].error


def test_every_shipped_config_parses_and_opens_with_its_command():
    paths = sorted((REPO / "configs").glob("*.toml"))
    names = {p.stem for p in paths}
    assert {"quickstart", "bn_vs_baseline", "weight_scale", "batch_size", "dropout", "population_stats",
            "dropout_bn_shift"} <= names
    for path in paths:
        cfg = load_config(path)
        assert cfg.name == path.stem and cfg.study.description
        assert path.read_text().startswith(f"# bnjax run configs/{path.name}\n"), path
        assert cfg.analysis_path is not None and cfg.analysis_path.is_file(), path
        for v in cfg.variants:
            assert len(v.sweep.seeds) >= 3, (path, v.name)
    ws = load_config(REPO / "configs" / "weight_scale.toml").variants[0].sweep.weight_scale
    np.testing.assert_allclose(ws, np.logspace(-4, 0, 20), rtol=1e-5)
