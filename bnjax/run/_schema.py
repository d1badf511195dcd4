"""Checks TOML values against the type hints of a frozen dataclass; every error names key, value and fix."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from bnjax._typing import FieldError


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range; the message names the key and the fix."""


TABLES = {"StudyInfo": "study", "DataConfig": "data", "MLPSpec": "model", "TrainConfig": "train",
          "SweepConfig": "sweep", "Member": "sweep", "Parallel": "parallel"}
"""The config table of each settings class whose fields a :class:`bnjax.FieldError` names."""


def config_error(e: FieldError, table: str | None = None) -> ConfigError:
    """``e`` restated against its config key, ``table.field = value expected`` (the table from ``e.owner``
    unless given); the library's sentence is kept as it is."""
    return ConfigError(f"{table or TABLES.get(e.owner, e.owner)}.{e.field} = {e.value!r} {e.expected}")


def describe(hint: Any) -> str:
    """Human-readable name of a type hint, used in error messages ("a float", "a list of ints")."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is bool:
        return "a boolean (true/false)"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} values"
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" (or omitted)" if type(None) in args else "")
    return getattr(hint, "__name__", str(hint))


def _example(key: str, value: str) -> str:
    name = key.split(".")[-1]
    return "." if "[" in name else f", e.g. {name} = {value}."


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Returns ``value`` converted to ``hint`` (lists -> tuples, ints -> floats) or raises ConfigError."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} is not valid: expected {describe(hint)}.")
    if origin is Literal:
        if value not in args or isinstance(value, bool) != isinstance(args[0], bool):
            raise ConfigError(f"{key} = {value!r} is not a valid choice: use one of {', '.join(map(repr, args))}.")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected {describe(hint)}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected {describe(hint)}" + _example(key, "10"))
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected {describe(hint)}" + _example(key, "1e-3"))
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f'{key} = {value!r} has the wrong type: expected {describe(hint)}' + _example(key, '"..."'))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected {describe(hint)}, e.g. [1, 2].")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{key} = {value!r} must have {len(args)} entries.")
        return tuple(coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args))) if args else tuple(value)
    return value


def field_hints(cls: type) -> dict[str, Any]:
    """Type hint of every init field of dataclass ``cls`` (string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def check_keys(section: str, raw: dict[str, Any], valid: typing.Iterable[str]) -> None:
    """Raises ConfigError naming the first unknown key of ``raw`` and listing the valid ones."""
    valid = list(valid)
    for k in raw:
        if k not in valid:
            raise ConfigError(f"{section}.{k} is not a known key; valid keys in [{section}]: {', '.join(valid)}.")


def build(cls: type, section: str, raw: dict[str, Any], *, exclude: typing.Iterable[str] = (), **fixed: Any) -> Any:
    """Constructs dataclass ``cls`` from a TOML table, checking keys, types and the class's own validation.

    The class validates in ``__post_init__`` and raises :class:`bnjax.FieldError` (field, value, expected),
    which is restated against the table's key: ``model.norm = 'bn' is not a valid option; ...``.

    Args:
      cls: the frozen dataclass.
      section: the table's name, used as the key prefix in errors (``"model"`` -> ``model.norm``).
      raw: the table.
      exclude: fields the table may not set (filled in ``fixed`` by the caller).
      **fixed: values for fields not read from the table.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] must be a table (section), got {raw!r}.")
    hints = {k: v for k, v in field_hints(cls).items() if k not in set(exclude) and k not in fixed}
    check_keys(section, raw, hints)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.init and required and f.name not in raw and f.name not in fixed:
            raise ConfigError(f"{section}.{f.name} is missing; [{section}] needs it.")
    values = {k: coerce(f"{section}.{k}", v, hints[k]) for k, v in raw.items()}
    try:
        return cls(**values, **fixed)
    except FieldError as e:
        raise config_error(e, section) from None


def import_file(path: Path, prefix: str) -> types.ModuleType:
    """Imports the Python file ``path`` as module ``prefix + stem`` (registered in ``sys.modules``, which
    dataclasses defined in it need), never as part of the ``bnjax`` package: a study's analysis module or a
    config's model factory."""
    name = f"{prefix}{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
