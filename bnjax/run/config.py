"""Study configs: TOML parsed once into frozen dataclasses, with errors that name the key, the value and the fix.

A config has these tables (every key optional unless marked)::

    [study]      name (required), description, analysis
    [data]       name and the dataset's prepare options (see :class:`DataConfig`)
    [model]      the fields of :class:`bnjax.MLPSpec` except ``in_features``/``num_classes`` (set by the data);
                 or factory = "path/to/file.py:function" and that function's keyword options (a user model)
    [train]      the fields of :class:`bnjax.train.TrainConfig`
    [sweep]      seeds = [...] and numeric axes (weight_scale, dropout, learning_rate, bn_momentum): lists whose
                 cartesian product (with the seeds) is trained as ONE vmapped ensemble per variant
    [parallel]   members, data, sync_bn: how each ensemble is spread over the devices (:class:`bnjax.train.Parallel`;
                 one table for the whole study, not per variant)
    [[variants]] name (required), description, and overriding [data]/[model]/[train]/[sweep] tables; each
                 variant is one compiled program (structure: norm kind, batch size, hidden sizes, ...)

``study.analysis`` is the path of the study's analysis module (claims and study plots), relative to the
**project root, taken as the parent of the directory holding the config** (``configs/x.toml`` ->
``./experiments/x.py``); an absolute path is used as is. ``model.factory`` is resolved the same way; its
function returns a :class:`bnjax.Layer` and is called as ``function(input_shape=..., num_classes=...,
**options)`` (see :class:`FactoryModel`). Command-line overrides (``--set train.epochs=2``) go
through the same checks; a value is parsed as a TOML literal (``[0, 1]``, ``1e-3``, ``true``, ``"batch"``) and a
bare word is taken as a string. An override of a base table key wins over the variants' own values too.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import json
import math
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnjax._typing import FieldError, Layer
from bnjax.data import DATASET_NAMES, Dataset, load_dataset, prepare
from bnjax.nn import MLPSpec
from bnjax.run._schema import ConfigError, build, check_keys, coerce, import_file
from bnjax.train import Member, Parallel, TrainConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "FactoryModel",
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

SECTIONS = ("study", "data", "model", "train", "sweep", "parallel", "variants")
VARIANT_KEYS = ("name", "description", "data", "model", "train", "sweep")
SWEEP_AXES = ("weight_scale", "dropout", "learning_rate", "bn_momentum")
"""Numeric hyperparameters an ensemble sweeps as data (one compiled program for all their values)."""
_MODEL_FROM_DATA = ("in_features", "num_classes")
_FACTORY_DATA_ARGS = ("input_shape", "num_classes", "in_features")


@dataclass(frozen=True)
class StudyInfo:
    """``[study]``: what the study is and which module judges it."""

    name: str
    description: str = ""
    analysis: str = ""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise FieldError("StudyInfo", "name", self.name, "must be a non-empty word of letters, digits, '-', "
                             "'_' or '.', e.g. name = \"bn_vs_baseline\" (it names the results directory).")


def _frozen(value: Any) -> Any:
    """TOML lists as tuples (hashable, as MLPSpec's ``hidden``), tables as sorted pairs."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class FactoryModel:
    """``[model]`` with ``factory = "path/to/file.py:function"``: a user's model and the options it is built with.

    The function returns a :class:`bnjax.Layer` mapping ``(B, *input_shape)`` inputs to ``(B, num_classes)``
    logits. It is called with the data's sizes under the names it declares -- ``input_shape`` (one example's
    shape, e.g. ``(28, 28, 1)``; examples keep their shape, nothing is flattened), ``num_classes``,
    ``in_features`` (``prod(input_shape)``) -- and the ``[model]`` table's other keys as keyword arguments::

        def build(input_shape, num_classes, *, channels=16, norm="batch"):  # factory = "models/cnn.py:build"
            ...
            return bnjax.serial(...)

    A ``**options`` parameter receives every table key (and ``input_shape``, ``num_classes``). Sweeps
    (``[sweep]`` weight_scale, dropout, bn_momentum) reach the returned layer as options.

    Attributes:
      factory: the text as written in the config.
      path: the file, absolute (relative paths are taken from the project root, as ``study.analysis``).
      function: the function's name in the file.
      options: the table's other keys, as sorted ``(key, value)`` pairs (TOML lists become tuples).
    """

    factory: str
    path: Path
    function: str
    options: tuple[tuple[str, Any], ...] = ()

    def load(self) -> Callable[..., Layer]:
        """Imports the file and returns the function, after checking that it takes the table's keys.

        Raises:
          ConfigError: no such file, no such function, or a key the function does not take.
        """
        key = f"model.factory = {self.factory!r}"
        if not self.path.is_file():
            raise ConfigError(f"{key}: no file {self.path} (a relative path is taken from the project root, the "
                              f"parent of the config's directory).")
        module = import_file(self.path, "bnjax_model_")
        name = module.__name__
        fn = getattr(module, self.function, None)
        if not callable(fn):
            found = sorted(k for k, v in vars(module).items()
                           if callable(v) and getattr(v, "__module__", None) == name and not k.startswith("_"))
            raise ConfigError(f"{key}: {self.path.name} defines no function {self.function!r}; it defines "
                              f"{', '.join(found) or 'none'}.")
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for k, _ in self.options:
            if k in _FACTORY_DATA_ARGS:
                raise ConfigError(f"model.{k} comes from the data; remove it from [model].")
            if not takes_any and k not in params:
                valid = [p for p, v in params.items() if p not in _FACTORY_DATA_ARGS and v.kind is not v.VAR_POSITIONAL]
                raise ConfigError(f"model.{k} is not an argument of {self.function}{inspect.signature(fn)}; valid "
                                  f"keys in [model] besides factory: {', '.join(valid) or 'none'}.")
        given = {k for k, _ in self.options} | set(_FACTORY_DATA_ARGS)
        for p in params.values():
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in given:
                raise ConfigError(f"{key}: {self.function}() needs the argument {p.name!r}; set model.{p.name} in "
                                  f"[model].")
        return fn

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Layer:
        """The model for examples of ``input_shape`` and ``num_classes`` classes (see the class docstring)."""
        fn = self.load()
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        data = {"input_shape": tuple(input_shape), "num_classes": int(num_classes),
                "in_features": math.prod(input_shape)}
        kwargs = {k: v for k, v in data.items() if k in params or (takes_any and k != "in_features")}
        layer = fn(**kwargs, **dict(self.options))
        if not isinstance(layer, Layer):
            raise ConfigError(f"model.factory = {self.factory!r}: {self.function}() returned a "
                              f"{type(layer).__name__}, not a bnjax.Layer; return an init/apply pair, e.g. "
                              f"bnjax.serial(...) or bnjax.Layer(init, apply, name).")
        return layer

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, **dict(self.options)}


def _build_model(section: str, raw: Any, root: Path) -> MLPSpec | FactoryModel:
    """``[model]`` as an :class:`bnjax.MLPSpec` (sizes left to the data) or a :class:`FactoryModel`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] must be a table, got {raw!r}.")
    if "factory" not in raw:
        return build(MLPSpec, section, raw, exclude=_MODEL_FROM_DATA, in_features=None, num_classes=None)
    text = coerce(f"{section}.factory", raw["factory"], str)
    file, sep, function = text.rpartition(":")
    if not sep or not file.endswith(".py") or not function.isidentifier():
        raise ConfigError(f"{section}.factory = {text!r} must name a Python file and a function in it, "
                          f"\"path/to/file.py:function\", e.g. factory = \"experiments/cnn.py:build\".")
    path = Path(file)
    options = tuple(sorted((k, _frozen(v)) for k, v in raw.items() if k != "factory"))
    return FactoryModel(factory=text, path=(path if path.is_absolute() else root / path).resolve(),
                        function=function, options=options)


def _model_table(model: MLPSpec | FactoryModel) -> dict[str, Any]:
    """The ``[model]`` table a variant resolved to (what ``spec.json`` and the report's setup table show)."""
    if isinstance(model, FactoryModel):
        return model.to_dict()
    return {k: v for k, v in dataclasses.asdict(model).items() if k not in _MODEL_FROM_DATA}


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
        # Each value is checked by the one member type (bnjax.train.Member) that the engine validates with.
        if not self.seeds:
            raise FieldError("SweepConfig", "seeds", [], "must list at least one seed, e.g. seeds = [0, 1, 2].")
        for axis in ("seed", *SWEEP_AXES):
            values = self.seeds if axis == "seed" else getattr(self, axis)
            name = "seeds" if axis == "seed" else axis
            for v in values:
                try:
                    Member(**{axis: v})
                except FieldError as e:
                    raise FieldError("SweepConfig", name, list(values),
                                     f"holds {v!r}, which is out of range: each value {e.expected}") from None
            if len(set(values)) != len(values):
                raise FieldError("SweepConfig", name, list(values), "repeats a value; list each value once.")

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
    model: MLPSpec | FactoryModel
    train: TrainConfig
    sweep: SweepConfig

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "data": self.data.to_dict(),
                "model": json.loads(json.dumps(_model_table(self.model))), "train": _asdict(self.train),
                "sweep": _asdict(self.sweep)}


@dataclass(frozen=True)
class StudyConfig:
    """A parsed config. ``variants`` are fully resolved (base tables merged with each variant's overrides).

    Attributes:
      study: name, description and analysis module.
      variants: the programs to train, in config order.
      parallel: ``[parallel]``, how every variant's ensemble is spread over the devices
        (:class:`bnjax.train.Parallel`: ``members``, ``data``, ``sync_bn``); it does not change the results
        beyond float summation order, so a run may resume with another layout.
      raw: the TOML tables after overrides (what ``config.json`` stores; parsing it again gives this config).
      root: the directory ``study.analysis`` is resolved against (the project root).
    """

    study: StudyInfo
    variants: tuple[Variant, ...]
    parallel: Parallel = field(default_factory=Parallel)
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
            raise FieldError("DataConfig", "name", self.name,
                             f"is not a known dataset; use one of {', '.join(DATASET_NAMES)}.")

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
    # Types are checked here (from prepare's signature); ranges by prepare itself when the data is loaded, which
    # the runner does before training anything.
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] must be a table, got {raw!r}.")
    check_keys(section, raw, ["name", "root", "loader", *_PREPARE_HINTS])
    name = coerce(f"{section}.name", raw.get("name", "mnist1d"), str)
    root = coerce(f"{section}.root", raw.get("root"), str | None)
    loader = raw.get("loader", {})
    if not isinstance(loader, dict):
        raise ConfigError(f"{section}.loader = {loader!r} must be a table, e.g. loader = {{ seed = 42 }}.")
    options = {k: coerce(f"{section}.{k}", v, _PREPARE_HINTS[k]) for k, v in raw.items() if k in _PREPARE_HINTS}
    try:
        return DataConfig(name=name, root=root, loader=tuple(sorted(loader.items())),
                          options=tuple(sorted(options.items())))
    except FieldError as e:
        raise ConfigError(f"{section}.{e.field} = {e.value!r} {e.expected}") from None


# ----------------------------------------------------------------------------------------------------- parsing

def _build_variant(
    where: str, name: str, description: str, tables: dict[str, dict[str, Any]], root: Path
) -> Variant:
    try:
        data = _build_data("data", tables["data"])
        model = _build_model("model", tables["model"], root)
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
        parallel = build(Parallel, "parallel", raw.get("parallel", {}))
        for sec in ("data", "model", "train", "sweep"):
            if not isinstance(raw.get(sec, {}), dict):
                raise ConfigError(f"[{sec}] must be a table, got {raw[sec]!r}.")
        # The base tables are checked on their own first, so an error in them is reported there, not against
        # the first variant that inherits it.
        root = Path(root).resolve()
        _build_variant("", study.name, "", {sec: raw.get(sec, {}) for sec in ("data", "model", "train", "sweep")},
                       root)
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
            variants.append(_build_variant(prefix, name, description, tables, root))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return StudyConfig(study=study, variants=tuple(variants), parallel=parallel, raw=raw, root=root)


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
            raise ConfigError(f"--set {text!r}: unknown table {sec!r}; use one of study, data, model, train, sweep, "
                              f"parallel.")
        out.setdefault(sec, {})[key] = value
        for v in out.get("variants", []) if sec != "parallel" else []:
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
    """``config.raw`` with ``study.analysis`` and ``model.factory`` paths made absolute, so the saved copy loads
    from any directory."""
    raw = copy.deepcopy(dict(config.raw))
    if config.analysis_path is not None:
        raw["study"]["analysis"] = str(config.analysis_path)
    tables = [raw.get("model")] + [v.get("model") for v in raw.get("variants", []) if isinstance(v, dict)]
    for table in tables:
        if isinstance(table, dict) and isinstance(table.get("factory"), str):
            file, sep, function = table["factory"].rpartition(":")
            if sep and not Path(file).is_absolute():
                table["factory"] = f"{(config.root / file).resolve()}:{function}"
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



