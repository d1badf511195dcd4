"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package and cached."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import random
import zipfile
from pathlib import Path

import numpy as np

from bnjax._io import atomic_write
from bnjax.data._raw import RawDataset

LENGTH = 40
"""Samples per MNIST-1D sequence (``final_seq_length`` of the package's default arguments)."""
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def default_cache_dir() -> Path:
    """``$BNJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/bnjax``, else ``~/.cache/bnjax``."""
    if os.environ.get("BNJAX_CACHE_DIR"):
        return Path(os.environ["BNJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnjax"


def _generate(seed: int, num_samples: int) -> dict[str, np.ndarray]:
    # Imported here: mnist1d pulls in scipy, matplotlib and requests, which most bnjax users never need.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    # make_dataset reseeds the global `random` and `np.random` generators; restore them so that loading
    # data does not change what unrelated code draws afterwards.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x_train": data["x"], "y_train": data["y"], "x_test": data["x_test"], "y_test": data["y_test"]}


def _cache_file(cache_dir: str, seed: int, num_samples: int) -> Path:
    version = importlib.metadata.version("mnist1d")
    return Path(cache_dir) / f"mnist1d-v{version}-seed{seed}-n{num_samples}.npz"


def _read_cache(path: Path, num_samples: int) -> dict[str, np.ndarray] | None:
    try:
        # The file is opened here, not by np.load, which leaks its handle when the zip is damaged.
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            arrays = {k: f[k] for k in _KEYS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # missing or damaged: regenerate and overwrite
    total = sum(arrays[k].shape[0] for k in ("y_train", "y_test"))
    if total != num_samples or arrays["x_train"].shape[1:] != (LENGTH,):
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # The cache is an optimization: a read-only or full disk must not stop the run, so OSError is swallowed.
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError:
        pass


@functools.lru_cache(maxsize=8)
def _load_cached(seed: int, num_samples: int, cache_dir: str) -> dict[str, np.ndarray]:
    path = _cache_file(cache_dir, seed, num_samples) if cache_dir else None
    arrays = _read_cache(path, num_samples) if path is not None else None
    if arrays is None:
        arrays = _generate(seed, num_samples)
        if path is not None:
            _write_cache(path, arrays)
    return arrays


def load_mnist1d(
    seed: int = 42, num_samples: int = 5000, *, cache_dir: str | os.PathLike[str] | None | bool = None
) -> RawDataset:
    """Generates MNIST-1D locally with ``mnist1d.data.make_dataset`` (the package's download helper is
    never called).

    The package's default arguments are used (``get_dataset_args()``: template length 12, padding
    [36, 60], translation <= 48, correlated noise 0.25, iid noise 0.02, shear 0.75, no sequence shuffle,
    80/20 train/test split), with ``seed`` and ``num_samples`` replaced. The defaults reproduce the
    published data set. ``make_dataset`` reseeds NumPy's and Python's global generators; their states
    are restored afterwards.

    Generation takes a few seconds, so results are cached per process and, unless ``cache_dir=False``,
    on disk as ``mnist1d-v<package version>-seed<seed>-n<num_samples>.npz`` (written atomically; a
    damaged file is regenerated).

    Args:
      seed: generator seed (default 42, the published data set).
      num_samples: total number of sequences, split 80/20 into train/test; must be a positive multiple
        of 10 (one tenth per class).
      cache_dir: directory of the disk cache; ``None`` means ``default_cache_dir()``
        (``$BNJAX_CACHE_DIR`` or ``~/.cache/bnjax``); ``False`` disables the disk cache.

    Returns:
      ``RawDataset`` named ``"mnist1d"``: ``x_train`` float64 ``(0.8 n, 40)``, ``y_train`` int64
      ``(0.8 n,)``, ``x_test`` float64 ``(0.2 n, 40)``, ``y_test`` int64 ``(0.2 n,)``; with the defaults
      4000 train and 1000 test sequences. Inputs are standardized over the whole set by the package
      (mean 0, std 1); ``num_classes = 10``. The arrays are fresh copies; mutating them does not touch
      the cache.

    Raises:
      ValueError: ``num_samples`` is not a positive multiple of 10, or ``seed`` is negative.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 10 or num_samples % 10:
        raise ValueError(f"load_mnist1d: num_samples must be a positive multiple of 10, got {num_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"load_mnist1d: seed must be a non-negative int, got {seed!r}")
    if cache_dir is True:
        raise ValueError("load_mnist1d: cache_dir must be a directory, None (default directory) or False, got True")
    directory = "" if cache_dir is False else os.fspath(default_cache_dir() if cache_dir is None else cache_dir)
    arrays = _load_cached(seed, num_samples, directory)
    return RawDataset("mnist1d", num_classes=10, **{k: v.copy() for k, v in arrays.items()})
