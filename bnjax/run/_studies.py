"""Where the project's studies live, so ``bnjax list`` and ``bnjax run NAME`` work from any directory.

The repository keeps ONE copy of the studies, in its top-level ``configs/`` (TOML) and ``experiments/``
(analysis modules). A built wheel ships them as ``bnjax/_studies/configs/*.toml`` and
``bnjax/_studies/experiments/*.py`` (the ``package-dir`` mapping in ``pyproject.toml``); a clone or an
editable install finds them beside the ``bnjax`` package. Either way a config's ``study.analysis``
(``experiments/x.py``) resolves against the parent of the config's directory, so both layouts need no
special case in :func:`bnjax.run.config.load_config`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

__all__ = ["default_configs_dir", "find_config", "shipped_configs_dir"]

_PACKAGE = Path(__file__).resolve().parents[1]  # .../bnjax


def shipped_configs_dir() -> Path | None:
    """The directory of the studies that come with bnjax, or None if this installation has none.

    ``<site-packages>/bnjax/_studies/configs`` in an installed wheel; ``<clone>/configs`` when bnjax is
    imported from a source checkout (editable install or ``PYTHONPATH``).
    """
    wheel = _PACKAGE / "_studies" / "configs"
    if wheel.is_dir():
        return wheel
    clone = _PACKAGE.parent
    if (clone / "configs").is_dir() and (clone / "pyproject.toml").is_file():
        return clone / "configs"
    return None


def default_configs_dir() -> Path | None:
    """What ``bnjax list`` shows without ``--configs``: ``./configs`` if it holds a ``*.toml``, else the shipped
    studies (None when there are neither)."""
    local = Path("configs")
    if local.is_dir() and any(local.glob("*.toml")):
        return local
    return shipped_configs_dir()


def _study_name(path: Path) -> str | None:
    try:
        name = tomllib.loads(path.read_text()).get("study", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def find_config(name_or_path: str | Path) -> Path:
    """The config file that ``bnjax run NAME_OR_PATH`` runs.

    An existing file is used as given (a ``.toml`` config or a run directory's ``config.json``). Otherwise an
    argument without a directory part is a study name (or its ``.toml`` file name), looked up as
    ``./configs/NAME.toml``, then among the shipped studies by file name and by ``study.name``.

    Raises:
      FileNotFoundError: naming the argument and the shipped study names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    dirs = [d for d in (Path("configs"), shipped_configs_dir()) if d is not None and d.is_dir()]
    if name and path.name == name and path.suffix != ".json":  # a bare name (or file name), not a path
        file_name = name if path.suffix == ".toml" else f"{name}.toml"
        for d in dirs:
            if (d / file_name).is_file():
                return d / file_name
        for d in dirs:
            for candidate in sorted(d.glob("*.toml")):
                if _study_name(candidate) == name:
                    return candidate
    shipped = shipped_configs_dir()
    names = sorted(p.stem for p in shipped.glob("*.toml")) if shipped is not None else []
    known = f"the studies shipped with bnjax are: {', '.join(names)}" if names else "this installation ships no studies"
    raise FileNotFoundError(f"config {name_or_path} not found: give a config file's path or a study name "
                            f"(`bnjax list` shows them; {known}).")
