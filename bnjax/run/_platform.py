"""Process setup for the CLI: JAX's persistent compilation cache, on by default for ``bnjax run`` and
``bnjax bench``.

A library user turns it on with JAX directly: ``jax.config.update("jax_compilation_cache_dir", path)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["CACHE_ENV", "compile_cache_dir", "compile_cache_wanted", "enable_compile_cache"]

CACHE_ENV = "BNJAX_COMPILE_CACHE"
"""Set to ``0`` to turn the persistent compilation cache off for every command (as ``--no-compile-cache``)."""


def compile_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bnjax/jax-compile`` (``~/.cache/bnjax/jax-compile`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnjax" / "jax-compile"


def compile_cache_wanted(flag_off: bool) -> bool:
    """Whether ``bnjax run``/``bench`` use the persistent cache: yes unless ``--no-compile-cache`` or
    ``BNJAX_COMPILE_CACHE=0``."""
    return not flag_off and os.environ.get(CACHE_ENV, "1") != "0"


def enable_compile_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (default :func:`compile_cache_dir`).

    Every compiled program is stored (no minimum compile time or size), so a second run of the same study in
    a fresh process loads its programs instead of compiling them. Returns the directory, or None when it cannot
    be created (the run then compiles as usual; a cache is an optimisation, never a reason to fail).
    """
    path = Path(directory) if directory is not None else compile_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
