"""Study configs: TOML parsed once into frozen dataclasses, with errors that name the key, the value and the fix.

A config has these tables (every key optional unless marked)::

    [study]      name (required), description, analysis
    [data]       name and the dataset's prepare options (see :class:`DataConfig`)
    [model]      the fields of :class:`bnjax.nn.MLPSpec` except ``in_features``/``num_classes`` (set by the data)
    [train]      the fields of :class:`bnjax.train.TrainConfig`
    [sweep]      seeds = [...] and numeric axes (weight_scale, dropout, learning_rate, bn_momentum): lists whose
                 cartesian product (with the seeds) is trained as ONE vmapped ensemble per variant
    [[variants]] name (required), description, and overriding [data]/[model]/[train]/[sweep] tables; each
                 variant is one compiled program (structure: norm kind, batch size, hidden sizes, ...)

``study.analysis`` is the path of the study's analysis module (claims and study plots), relative to the
**project root, taken as the parent of the directory holding the config** (``configs/x.toml`` ->
``./experiments/x.py``); an absolute path is used as is. Command-line overrides (``--set train.epochs=2``) go
through the same checks; a value is parsed as a TOML literal (``[0, 1]``, ``1e-3``, ``true``, ``"batch"``) and a
bare word is taken as a string. An override of a base table key wins over the variants' own values too.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnjax.data import DATASET_NAMES, Dataset, load_dataset, prepare
from bnjax.nn import MLPSpec
from bnjax.run._schema import ConfigError, build, check_keys, coerce, field_hints
from bnjax.train import TrainConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "StudyConfig",
    "StudyInfo",
    "StudyListing",
    "SweepConfig",
    "Variant",
    "apply_overrides",
    "list_studies",
    "load_config",
    "parse_config",
    "parse_override",
]

SECTIONS = ("study", "data", "model", "train", "sweep", "variants")
VARIANT_KEYS = ("name", "description", "data", "model", "train", "sweep")
SWEEP_AXES = ("weight_scale", "dropout", "learning_rate", "bn_momentum")
"""Numeric hyperparameters an ensemble sweeps as data (one compiled program for all their values)."""
_MODEL_FROM_DATA = ("in_features", "num_classes")


@dataclass(frozen=True)
class StudyInfo:
    """``[study]``: what the study is and which module judges it."""

    name: str
    description: str = ""
    analysis: str = ""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"name={self.name!r} must be a non-empty word of letters, digits, '-', '_' or '.', "
                             f"e.g. name = \"bn_vs_baseline\" (it names the results directory).")


def _model_config_post_init(self: Any) -> None:
    # Validate with the real MLPSpec so ranges and choices have one source of truth; the data-dependent sizes
    # are placeholders here and filled in by ModelConfig.spec().
    MLPSpec(in_features=1, num_classes=2, **dataclasses.asdict(self))


def _model_config_spec(self: Any, in_features: int, num_classes: int) -> MLPSpec:
    """The :class:`bnjax.nn.MLPSpec` for a dataset with ``in_features`` inputs and ``num_classes`` classes."""
    return MLPSpec(in_features=in_features, num_classes=num_classes, **dataclasses.asdict(self))


def _make_model_config() -> type:
    hints = field_hints(MLPSpec)
    fields = []
    for f in dataclasses.fields(MLPSpec):
        if f.name in _MODEL_FROM_DATA:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        fields.append((f.name, hints[f.name], field(default=default)))
    return dataclasses.make_dataclass(
        "ModelConfig", fields, frozen=True,
        namespace={"__post_init__": _model_config_post_init, "spec": _model_config_spec,
                   "__module__": __name__,
                   "__doc__": "``[model]``: the fields of MLPSpec except in_features and num_classes (from the data)."},
    )


ModelConfig = _make_model_config()


@dataclass(frozen=True)
class SweepConfig:
    """``[sweep]``: the members of each variant's ensemble, the cartesian product of the axes and the seeds.

    Attributes:
      seeds: member seeds (init, batch order, dropout masks); at least one, no repeats.
      weight_scale, dropout, learning_rate, bn_momentum: values of each swept axis (``[]`` = not swept, the
        model/train value is used). ``dropout`` is the drop probability (keep = 1 - dropout).
    """

    seeds: tuple[int, ...] = (0,)
    weight_scale: tuple[float, ...] = ()
    dropout: tuple[float, ...] = ()
    learning_rate: tuple[float, ...] = ()
    bn_momentum: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds=[] must list at least one seed, e.g. seeds = [0, 1, 2].")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds={list(self.seeds)} must be distinct ints >= 0.")
        ranges = {
            "weight_scale": (lambda v: v > 0, "> 0"),
            "dropout": (lambda v: 0 <= v < 1, "in [0, 1) (the drop probability; keep = 1 - dropout)"),
            "learning_rate": (lambda v: v > 0, "> 0"),
            "bn_momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        }
        for axis, (ok, text) in ranges.items():
            values = getattr(self, axis)
            for v in values:
                if not ok(v):
                    raise ValueError(f"{axis}={list(values)}: the value {v!r} is out of range; each must be {text}.")
            if len(set(values)) != len(values):
                raise ValueError(f"{axis}={list(values)} repeats a value; list each value once.")

    @property
    def axes(self) -> tuple[str, ...]:
        """The swept non-seed axes, in the order of :data:`SWEEP_AXES`."""
        return tuple(a for a in SWEEP_AXES if getattr(self, a))

    @property
    def num_members(self) -> int:
        n = len(self.seeds)
        for a in self.axes:
            n *= len(getattr(self, a))
        return n

    def members(self) -> dict[str, list[Any]]:
        """Equal-length lists (one entry per member) over ``"seed"`` and the swept axes.

        Members are ordered axis-major with the seed varying fastest, so the members that differ only in
        seed are adjacent.
        """
        axes = self.axes
        grid = itertools.product(*(getattr(self, a) for a in axes), self.seeds)
        out: dict[str, list[Any]] = {a: [] for a in axes}
        out["seed"] = []
        for combo in grid:
            for a, v in zip(axes, combo[:-1]):
                out[a].append(float(v))
            out["seed"].append(int(combo[-1]))
        return out


@dataclass(frozen=True)
class Variant:
    """One compiled program of a study: resolved data, model, training settings and the ensemble's members."""

    name: str
    description: str
    data: DataConfig
    model: Any  # ModelConfig
    train: TrainConfig
    sweep: SweepConfig

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "data": self.data.to_dict(),
                "model": _asdict(self.model), "train": _asdict(self.train), "sweep": _asdict(self.sweep)}


@dataclass(frozen=True)
class StudyConfig:
    """A parsed config. ``variants`` are fully resolved (base tables merged with each variant's overrides).

    Attributes:
      study: name, description and analysis module.
      variants: the programs to train, in config order.
      raw: the TOML tables after overrides (what ``config.json`` stores; parsing it again gives this config).
      root: the directory ``study.analysis`` is resolved against (the project root).
    """

    study: StudyInfo
    variants: tuple[Variant, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)
    root: Path = field(default=Path("."), compare=False)

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def analysis_path(self) -> Path | None:
        """Absolute path of the analysis module, or None when the study has none."""
        if not self.study.analysis:
            return None
        p = Path(self.study.analysis)
        return (p if p.is_absolute() else (self.root / p)).resolve()

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; variants are {[v.name for v in self.variants]}.")


def _asdict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(obj)))


# ----------------------------------------------------------------------------------------------- data section

_PREPARE_HINTS = {k: v for k, v in typing.get_type_hints(prepare).items() if k not in ("raw", "return")}


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: which dataset and how to split/preprocess it (:func:`bnjax.data.load_dataset`).

    Attributes:
      name: one of :data:`bnjax.data.DATASET_NAMES`.
      root: data directory (needed by ``mnist``/``cifar10``; ``fashion_mnist`` defaults to the Debian path).
      loader: the loader's options (``[data.loader]``, e.g. ``{seed = 42}`` for ``mnist1d``), as sorted pairs.
      options: the ``prepare`` options the config sets (``num_train``, ``num_val``, ``num_test``, ``seed``,
        ``flatten``, ``scale``, ``center``, ``standardize``), as sorted pairs; unset options keep the
        dataset's defaults (:func:`bnjax.data.dataset_defaults`).
    """

    name: str = "mnist1d"
    root: str | None = None
    loader: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            raise ValueError(f"name={self.name!r} is not a known dataset; use one of {', '.join(DATASET_NAMES)}.")

    def load(self) -> Dataset:
        """The prepared dataset (``load_dataset(name, root=..., loader_options=..., **options)``)."""
        return load_dataset(self.name, root=self.root, loader_options=dict(self.loader), **dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.root is not None:
            out["root"] = self.root
        if self.loader:
            out["loader"] = dict(self.loader)
        out.update(self.options)
        return out


def _build_data(section: str, raw: Any) -> DataConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] must be a table, got {raw!r}.")
    check_keys(section, raw, ["name", "root", "loader", *_PREPARE_HINTS])
    name = coerce(f"{section}.name", raw.get("name", "mnist1d"), str)
    if name not in DATASET_NAMES:
        raise ConfigError(f"{section}.name = {name!r} is not a known dataset; use one of {', '.join(DATASET_NAMES)}.")
    root = coerce(f"{section}.root", raw.get("root"), str | None)
    loader = raw.get("loader", {})
    if not isinstance(loader, dict):
        raise ConfigError(f"{section}.loader = {loader!r} must be a table, e.g. loader = {{ seed = 42 }}.")
    options = {k: coerce(f"{section}.{k}", v, _PREPARE_HINTS[k]) for k, v in raw.items() if k in _PREPARE_HINTS}
    for k in ("num_train", "num_test"):
        if options.get(k) is not None and options[k] < 1 - (k == "num_test"):
            raise ConfigError(f"{section}.{k} = {options[k]!r} is out of range; it must be >= {1 - (k == 'num_test')}.")
    if options.get("num_val", 0) < 0:
        raise ConfigError(f"{section}.num_val = {options['num_val']!r} is out of range; it must be >= 0.")
    return DataConfig(name=name, root=root, loader=tuple(sorted(loader.items())), options=tuple(sorted(options.items())))


# ----------------------------------------------------------------------------------------------------- parsing

def _build_variant(where: str, name: str, description: str, tables: dict[str, dict[str, Any]]) -> Variant:
    try:
        data = _build_data("data", tables["data"])
        model = build(ModelConfig, "model", tables["model"])
        train = build(TrainConfig, "train", tables["train"])
        sweep = build(SweepConfig, "sweep", tables["sweep"])
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    return Variant(name=name, description=description, data=data, model=model, train=train, sweep=sweep)


def parse_config(raw: Mapping[str, Any], *, root: str | Path = ".", source: str = "config") -> StudyConfig:
    """Checks a config given as nested dicts (parsed TOML or a saved ``config.json``) and resolves its variants.

    Args:
      raw: the tables (``{"study": {...}, "model": {...}, "variants": [{...}, ...]}``).
      root: directory that a relative ``study.analysis`` path is resolved against.
      source: file name used to prefix error messages.

    Raises:
      ConfigError: an unknown table or key, a value of the wrong type, or one the dataclasses reject.
    """
    try:
        raw = copy.deepcopy(dict(raw))
        check_keys("config", {k: None for k in raw}, SECTIONS)
        if "study" not in raw:
            raise ConfigError("[study] is missing; every config needs at least [study] name = \"...\".")
        study = build(StudyInfo, "study", raw["study"])
        for sec in ("data", "model", "train", "sweep"):
            if not isinstance(raw.get(sec, {}), dict):
                raise ConfigError(f"[{sec}] must be a table, got {raw[sec]!r}.")
        # The base tables are checked on their own first, so an error in them is reported there, not against
        # the first variant that inherits it.
        _build_variant("", study.name, "", {sec: raw.get(sec, {}) for sec in ("data", "model", "train", "sweep")})
        variants_raw = raw.get("variants", [])
        if not isinstance(variants_raw, list) or not all(isinstance(v, dict) for v in variants_raw):
            raise ConfigError("variants must be an array of tables: write each as [[variants]] with a name = \"...\".")
        if not variants_raw:
            variants_raw = [{"name": study.name}]
        variants = []
        names: list[str] = []
        for i, vr in enumerate(variants_raw):
            where = f"variants[{i}]"
            check_keys(where, vr, VARIANT_KEYS)
            name = coerce(f"{where}.name", vr.get("name"), str)
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ConfigError(f"{where}.name = {name!r} must be a non-empty word of letters, digits, '-', '_' "
                                  f"or '.' (it names a directory).")
            if name in names:
                raise ConfigError(f"{where}.name = {name!r} repeats an earlier variant's name; names must be unique.")
            names.append(name)
            description = coerce(f"{where}.description", vr.get("description", ""), str)
            tables = {}
            for sec in ("data", "model", "train", "sweep"):
                override = vr.get(sec, {})
                if not isinstance(override, dict):
                    raise ConfigError(f"{where}.{sec} must be a table, e.g. {sec} = {{ key = value }}.")
                tables[sec] = {**raw.get(sec, {}), **override}
            prefix = f"variants[{i}] ({name}): " if "variants" in raw else ""
            variants.append(_build_variant(prefix, name, description, tables))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return StudyConfig(study=study, variants=tuple(variants), raw=raw, root=Path(root).resolve())


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"train.epochs=2"`` -> ``(("train", "epochs"), 2)``; the value is a TOML literal or a bare word."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like section.key=value, e.g. --set train.epochs=2.")
    key, value_text = (s.strip() for s in text.split("=", 1))
    path = tuple(key.split("."))
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {text!r}: the key {key!r} must name a table and a key, e.g. train.epochs.")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text  # a bare word such as batch: a string
    return path, value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with ``--set`` overrides applied.

    ``section.key=value`` sets the base table and, where a variant sets the same key, that variant too (the
    command line wins); ``variants.NAME.section.key=value`` sets one variant; ``study.key=value`` sets [study].
    """
    out = copy.deepcopy(dict(raw))
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "variants":
            if len(path) != 4:
                raise ConfigError(f"--set {text!r}: a variant override is variants.NAME.section.key=value.")
            _, name, sec, key = path
            matches = [v for v in out.get("variants", []) if v.get("name") == name]
            if not matches:
                names = [v.get("name") for v in out.get("variants", [])]
                raise ConfigError(f"--set {text!r}: no variant named {name!r}; variants are {names}.")
            matches[0].setdefault(sec, {})[key] = value
            continue
        if len(path) != 2:
            raise ConfigError(f"--set {text!r}: the key must be section.key (e.g. train.epochs) or "
                              f"variants.NAME.section.key.")
        sec, key = path
        if sec not in SECTIONS or sec == "variants":
            raise ConfigError(f"--set {text!r}: unknown table {sec!r}; use one of study, data, model, train, sweep.")
        out.setdefault(sec, {})[key] = value
        for v in out.get("variants", []):
            if isinstance(v, dict) and isinstance(v.get(sec), dict) and key in v[sec]:
                v[sec][key] = value
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Reads a TOML config (or a run directory's ``config.json``), applies ``--set`` overrides and checks it.

    A relative ``study.analysis`` is resolved against the parent of the config's directory (the project root)
    for a ``.toml`` file, and as saved (absolute) for a ``config.json``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found; `bnjax list` shows the configs in ./configs.")
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    raw = apply_overrides(raw, overrides)
    return parse_config(raw, root=path.resolve().parent.parent, source=str(path))


def resolved_raw(config: StudyConfig) -> dict[str, Any]:
    """``config.raw`` with ``study.analysis`` made absolute, so the saved copy loads from any directory."""
    raw = copy.deepcopy(dict(config.raw))
    if config.analysis_path is not None:
        raw["study"]["analysis"] = str(config.analysis_path)
    return raw


@dataclass(frozen=True)
class StudyListing:
    """One line of ``bnjax list``: a config file, its study name and description, or why it does not parse."""

    path: str
    name: str
    description: str
    error: str | None = None


def list_studies(directory: str | Path = "configs") -> list[StudyListing]:
    """Every ``*.toml`` in ``directory`` (sorted), parsed and checked like ``bnjax run`` would."""
    out = []
    for path in sorted(Path(directory).glob("*.toml")):
        try:
            cfg = load_config(path)
            out.append(StudyListing(str(path), cfg.study.name, cfg.study.description))
        except (ConfigError, OSError) as e:
            out.append(StudyListing(str(path), path.stem, "", str(e)))
    return out



