"""Fashion-MNIST and MNIST from their four IDX files (read from disk, never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

from bnjax.data._idx import load_idx
from bnjax.data._raw import RawDataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the four ``.gz`` files."""

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
"""The file names shared by MNIST and Fashion-MNIST, each read as ``<name>.gz`` or ``<name>``."""

_FASHION_HINT = f"install it with `apt-get install dataset-fashion-mnist` (files in {FASHION_MNIST_DIR}) or pass root="
_MNIST_HINT = "pass root= the directory holding the MNIST IDX files"


def _find(root: Path, base: str, hint: str) -> Path:
    for candidate in (root / f"{base}.gz", root / base):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root / base}.gz (or {root / base}) not found; {hint}")


def _load_idx_set(name: str, root: str | os.PathLike[str], hint: str) -> RawDataset:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: directory {root} not found; {hint}")
    arrays = {key: load_idx(_find(root, base, hint)) for key, base in MNIST_FILES.items()}
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name} in {root}: {part} images {x.shape} and labels {y.shape} do not match "
                "(expected (N, rows, cols) and (N,))"
            )
        if y.size and int(y.max()) > 9:
            raise ValueError(f"{name} in {root}: {part} labels must be 0..9, found {int(y.max())}")
    return RawDataset(name=name, num_classes=10, **arrays)


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> RawDataset:
    """Loads Fashion-MNIST (Xiao et al. 2017) from its four IDX files.

    Files (each ``.gz`` or un-gzipped): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``.

    Args:
      root: directory holding the files; default ``/usr/share/datasets/fashion-mnist`` (Debian package
        ``dataset-fashion-mnist``).

    Returns:
      ``RawDataset`` named ``"fashion_mnist"``: ``x_train`` uint8 ``(60000, 28, 28)``, ``y_train`` uint8
      ``(60000,)``, ``x_test`` uint8 ``(10000, 28, 28)``, ``y_test`` uint8 ``(10000,)``; pixels 0..255,
      labels 0..9; ``num_classes = 10``.

    Raises:
      FileNotFoundError: the directory or a file is missing (the message names the path and the fix).
      ValueError: a file is corrupt or truncated (see ``load_idx``).
    """
    return _load_idx_set("fashion_mnist", FASHION_MNIST_DIR if root is None else root, _FASHION_HINT)


def load_mnist(root: str | os.PathLike[str]) -> RawDataset:
    """Loads MNIST (LeCun et al. 1998) from its four IDX files in ``root`` (no default location).

    Same file names, format, shapes and dtypes as ``load_fashion_mnist``; the result is named ``"mnist"``.

    Raises:
      FileNotFoundError: the directory or a file is missing.
      ValueError: a file is corrupt or truncated.
    """
    return _load_idx_set("mnist", root, _MNIST_HINT)
