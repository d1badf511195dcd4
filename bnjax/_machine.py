"""What a run records about the machine and the software it ran on (``run.json``, ``summary.json``, the bench).

Package versions come from the installed distributions' metadata, the bnjax commit from git when bnjax is
imported from a checkout.
"""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

import bnjax

__all__ = ["compile_cache_on", "load_average", "software"]

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): other jobs on the machine skew timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def compile_cache_on() -> bool:
    """Whether JAX's persistent compilation cache is on: a run that loads its programs from it takes a fraction
    of a cold run's wall-clock."""
    import jax

    return bool(jax.config.jax_compilation_cache_dir)


def _git(checkout: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10,
                             check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def software() -> dict[str, str | bool | None]:
    """``{"bnjax": version, "bnjax_commit": ..., "bnjax_dirty": ..., "jax": ..., "jaxlib": ..., "flax": ...,
    "optax": ..., "numpy": ...}``; a package that is not installed is None; the commit and whether tracked files
    differ from it are given only when bnjax is imported from a git checkout."""
    out: dict[str, str | bool | None] = {"bnjax": bnjax.__version__}
    checkout = Path(bnjax.__file__).resolve().parents[1]
    if (checkout / ".git").exists():
        commit = _git(checkout, "rev-parse", "HEAD")
        if commit:
            status = _git(checkout, "status", "--porcelain", "--untracked-files=no")
            out.update(bnjax_commit=commit, bnjax_dirty=None if status is None else bool(status))
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
