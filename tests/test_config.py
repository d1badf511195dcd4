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
    # [model] is an MLPSpec whose sizes the data fills in (bnjax.run.runner.build_model).
    assert bn.model == MLPSpec(in_features=None, num_classes=None, hidden=(16, 16), norm="batch", weight_scale=2e-2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        none.model.norm = "layer"  # type: ignore[misc]


def test_model_section_is_mlpspec_without_the_data_sizes():
    cfg = parse_config({"study": {"name": "x"}})
    spec_fields = {f.name for f in dataclasses.fields(MLPSpec)}
    assert set(cfg.variants[0].to_dict()["model"]) == spec_fields - {"in_features", "num_classes"}
    # Defaults come from MLPSpec and TrainConfig themselves.
    assert cfg.variants[0].model == MLPSpec(in_features=None, num_classes=None)
    assert cfg.variants[0].train == TrainConfig()
    with pytest.raises(ConfigError, match=r"model\.in_features is not a known key; valid keys in \[model\]: hidden, norm"):
        parse_config({"study": {"name": "x"}, "model": {"in_features": 3}})


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
        ("model.norm=bn", (r"model\.norm = 'bn' is not a valid option; use one of \('none', 'batch', 'layer', 'group', "
                           r"'rms', 'ghost', 'renorm'\)")),
        ("model.norm_position=middle", r"model\.norm_position = 'middle' is not a valid option; use one of \('before'"),
        ("model.norms=batch", r"model\.norms is not a known key; valid keys in \[model\]: hidden, norm, dropout"),
        ("train.epochs=2.5", r"train\.epochs = 2\.5 has the wrong type: expected an integer"),
        ("train.learning_rate=-1", r"train\.learning_rate = -1\.0 must be a positive finite number"),
        ("train.optimizer=rmsprop", r"train\.optimizer = 'rmsprop' is not a valid option; use one of .*'adam'"),
        ("model.hidden=[10, 'a']", r"model\.hidden\[1\] = 'a' has the wrong type: expected an integer"),
        ("model.hidden=10", r"model\.hidden = 10 has the wrong type: expected a list of integers"),
        ("model.bn_unbiased=1", r"model\.bn_unbiased = 1 has the wrong type: expected a boolean"),
        ("model.dropout=1.0", r"model\.dropout = 1\.0 is the drop probability and must be in \[0, 1\)"),
        ("sweep.dropout=[0.5, 1.5]", (r"sweep\.dropout = \[0\.5, 1\.5\] holds 1\.5, which is out of range: each "
                                      r"value is the drop probability and must be in \[0, 1\)")),
        ("sweep.weight_scale=[0.0]", r"sweep\.weight_scale = \[0\.0\] holds 0\.0, which is out of range: each value must be > 0"),
        ("sweep.seeds=[]", r"sweep\.seeds = \[\] must list at least one seed"),
        ("sweep.seeds=[1, 1]", r"sweep\.seeds = \[1, 1\] repeats a value; list each value once"),
        ("sweep.seeds=[-1]", r"sweep\.seeds = \[-1\] holds -1, which is out of range: each value must be an int >= 0"),
        ("sweep.keep=[0.5]", r"sweep\.keep is not a known key; valid keys in \[sweep\]: seeds, weight_scale, dropout"),
        ("data.name=cifar", r"data\.name = 'cifar' is not a known dataset; use one of cifar10, digits, fashion_mnist"),
        ("data.num_train=x", r"data\.num_train = 'x' is not valid: expected an integer"),
        ("data.shuffle=true", r"data\.shuffle is not a known key; valid keys in \[data\]: name, root, loader, num_train"),
        ("study.name='a b'", r"study\.name = 'a b' must be a non-empty word"),
        ("variants.bn.model.norm=grp", r"variants\[1\] \(bn\): model\.norm = 'grp' is not a valid option"),
        ("model.norm=group", r"model\.groups = None is unset: norm='group' needs groups \(the number of groups\) or "
                             r"group_size"),
        ("model.groups=0", r"model\.groups = 0 must be a positive int"),
        ("model.renorm_rmax=0.5", r"model\.renorm_rmax = 0\.5 must be a number >= 1"),
        ("parallel.members=0", r"parallel\.members = 0 must be a positive int \(devices the members are split over\) "
                               r"or 'auto'"),
        ("parallel.members=half", r"parallel\.members = 'half' is not valid: expected an integer or one of 'auto'"),
        ("parallel.data=0", r"parallel\.data = 0 must be a positive int"),
        ("parallel.data=1.5", r"parallel\.data = 1\.5 has the wrong type: expected an integer"),
        ("parallel.sync_bn=1", r"parallel\.sync_bn = 1 has the wrong type: expected a boolean"),
        ("parallel.devices=2", r"parallel\.devices is not a known key; valid keys in \[parallel\]: members, data, "
                               r"sync_bn"),
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


def test_parallel_table_is_one_layout_for_the_study():
    from bnjax.train import Parallel

    assert parse_config(BASE).parallel == Parallel(members="auto", data=1, sync_bn=True)
    c = parse_config(apply_overrides(BASE, ["parallel.members=2", "parallel.data=2", "parallel.sync_bn=false"]))
    assert c.parallel == Parallel(members=2, data=2, sync_bn=False)
    assert all(v.train == parse_config(BASE).variant(v.name).train for v in c.variants)  # variants untouched
    with pytest.raises(ConfigError, match=r"variants\[0\]\.parallel is not a known key"):
        parse_config({**BASE, "variants": [{"name": "a", "parallel": {"data": 2}}]})


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
    (tmp_path / "b.toml").write_text('[study]\nname = "b"\n[model]\nnorm = "grp"\n')
    rows = list_studies(tmp_path)
    assert [(r.name, r.description, r.error is None) for r in rows] == [("a", "first study", True), ("b", "", False)]
    assert "model.norm = 'grp'" in rows[1].error


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


# --------------------------------------------------------------------------------------- every normalizer

@pytest.mark.parametrize("model, check", [
    ({"norm": "group", "groups": 4}, {"groups": 4}),
    ({"norm": "group", "group_size": 8}, {"group_size": 8}),
    ({"norm": "rms", "ln_eps": 1e-6}, {"ln_eps": 1e-6}),
    ({"norm": "ghost", "virtual_batch_size": 5, "bn_momentum": 0.8}, {"virtual_batch_size": 5, "bn_momentum": 0.8}),
    ({"norm": "renorm", "renorm_rmax": 2.0, "renorm_dmax": 1.0, "renorm_warmup_steps": 100, "renorm_hold_steps": 10},
     {"renorm_rmax": 2.0, "renorm_dmax": 1.0, "renorm_warmup_steps": 100, "renorm_hold_steps": 10}),
    ({"norm": "layer", "norm_position": "after"}, {"norm_position": "after"}),
])
def test_every_norm_and_its_keys_parse(model, check):
    cfg = parse_config({**BASE, "model": {**BASE["model"], **model}, "variants": [{"name": "a"}]})
    spec = cfg.variants[0].model
    assert spec.norm == model["norm"] and all(getattr(spec, k) == v for k, v in check.items())


def test_ghost_batch_must_divide_the_training_batch():
    """The rule lives once, in the ghost layer; the run checks it (on shapes) before anything is written."""
    from bnjax.run._rundir import load_and_check
    from bnjax.run.runner import _check_variant

    raw = {**BASE, "model": {"norm": "ghost", "virtual_batch_size": 5}}
    cfg = parse_config(raw)
    assert cfg.variants[0].model.virtual_batch_size == 5  # batch 25
    load_and_check(cfg.variants[:1], lambda v, d: _check_variant(cfg.parallel, v, d))
    bad = parse_config(apply_overrides(raw, ["variants.none.train.batch_size=12"]))
    with pytest.raises(ConfigError, match=r"variant 'none': train\.batch_size = 12 gives training batches of 12 rows, "
                                          r"which the model refuses: ghost_batch_norm: virtual_batch_size=5 must be a "
                                          r"positive int dividing the batch size N=12"):
        load_and_check(bad.variants[:1], lambda v, d: _check_variant(bad.parallel, v, d))
    with pytest.raises(ConfigError, match=r"model\.virtual_batch_size = None is unset: norm='ghost' needs"):
        parse_config({**BASE, "model": {"norm": "ghost"}})


# ------------------------------------------------------------------------------------------- model.factory

FACTORY = """\
import bnjax

def build(input_shape, num_classes, *, width=4):
    return bnjax.serial(bnjax.Dense(input_shape[-1], width), bnjax.Dense(width, num_classes))

def anything(**options):
    return bnjax.Dense(options["input_shape"][-1], options["num_classes"])

def broken(input_shape, num_classes):
    return {"init": None}

def needs(input_shape, num_classes, depth):
    return bnjax.Dense(input_shape[-1], num_classes)
"""


def _factory_config(tmp_path, factory, **options):
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "m.py").write_text(FACTORY)
    return parse_config({"study": {"name": "f"}, "model": {"factory": factory, **options}}, root=tmp_path)


def test_factory_builds_a_layer_from_the_data_sizes_and_the_table(tmp_path):
    from bnjax.run.config import FactoryModel

    cfg = _factory_config(tmp_path, "models/m.py:build", width=6)
    model = cfg.variants[0].model
    assert isinstance(model, FactoryModel) and model.path == (tmp_path / "models" / "m.py").resolve()
    assert cfg.variants[0].to_dict()["model"] == {"factory": "models/m.py:build", "width": 6}
    layer = model.build((5,), 3)
    params, _ = layer.init(__import__("jax").random.key(0))
    assert params["dense_0"]["weight"].shape == (6, 5) and params["dense_1"]["weight"].shape == (3, 6)
    anything = _factory_config(tmp_path, "models/m.py:anything").variants[0].model.build((7,), 2)
    assert anything.init(__import__("jax").random.key(0))[0]["weight"].shape == (2, 7)
    # The saved config (config.json) holds the absolute path, so it loads from anywhere.
    assert resolved_raw(cfg)["model"]["factory"] == f"{(tmp_path / 'models' / 'm.py').resolve()}:build"


@pytest.mark.parametrize("factory, options, match", [
    ("models/m.py", {}, r"model\.factory = 'models/m\.py' must name a Python file and a function in it"),
    ("models/none.py:build", {}, r"model\.factory = 'models/none\.py:build': no file .*none\.py \(a relative path is "
                                 r"taken from the project root"),
    ("models/m.py:nope", {}, r"m\.py defines no function 'nope'; it defines anything, broken, build, needs"),
    ("models/m.py:build", {"depth": 2}, r"model\.depth is not an argument of build\(input_shape, num_classes, \*, "
                                        r"width=4\); valid keys in \[model\] besides factory: width"),
    ("models/m.py:build", {"num_classes": 2}, r"model\.num_classes comes from the data"),
    ("models/m.py:needs", {}, r"needs\(\) needs the argument 'depth'; set model\.depth"),
    ("models/m.py:broken", {}, r"broken\(\) returned a dict, not a bnjax\.Layer"),
])
def test_factory_errors_name_the_key(tmp_path, factory, options, match):
    with pytest.raises(ConfigError, match=match):
        _factory_config(tmp_path, factory, **options).variants[0].model.build((5,), 3)
