"""CIFAR-10 from the official ``cifar-10-batches-py`` (pickle) or ``cifar-10-batches-bin`` directories."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bnjax.data._raw import RawDataset

try:  # NumPy >= 2 keeps the array internals in numpy._core; 1.x in numpy.core.
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
RECORD_BYTES = 1 + 3 * 32 * 32
"""One record of the binary format: a label byte, then 1024 red, 1024 green and 1024 blue bytes."""


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global (a callable or class) outside the allow-list."""


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    """Stands in for ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# The official python batches were written by Python 2 cPickle: dicts, lists, byte strings, ints and one
# uint8 ndarray per batch. Rebuilding that ndarray needs exactly these globals (under their NumPy 1.x and
# 2.x module names); they construct plain arrays and call nothing else. Every other global (os.system,
# builtins.eval, subprocess.Popen, ...) is refused before it can be called.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the NumPy array globals above; builtin containers need no globals."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"refusing to load global {module}.{name}") from None


def _load_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = path.read_bytes()
    try:
        batch = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch, unpickling refused ({exc}); CIFAR-10 batches hold only "
            "dicts, lists, bytes, ints and one uint8 array, and nothing else is loaded"
        ) from exc
    except Exception as exc:  # truncated or garbled pickles raise EOFError, ValueError, TypeError, ...
        raise ValueError(f"{path}: corrupt CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: expected a dict with keys b'data' and b'labels', got {type(batch).__name__}")
    x, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != RECORD_BYTES - 1:
        desc = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {desc}")
    if not isinstance(labels, (list, np.ndarray)) or not all(isinstance(v, (int, np.integer)) for v in labels):
        raise ValueError(f"{path}: b'labels' must be a list of ints")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"{path}: {len(y)} labels for {x.shape[0]} images")
    return x, y


def _load_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size
    if size == 0 or size % RECORD_BYTES:
        raise ValueError(
            f"{path}: size {size} bytes is not a positive multiple of the {RECORD_BYTES}-byte CIFAR-10 record "
            "(1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 binary batch"
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _find_batches(root: Path) -> tuple[Path, str]:
    """Returns ``(directory, "bin" | "py")``; the binary format wins when both are present (no unpickling)."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"cifar10: directory {root} not found; pass root= the cifar-10-batches-py or "
            "cifar-10-batches-bin directory (or the directory containing it)"
        )
    for directory in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        if (directory / "data_batch_1.bin").is_file():
            return directory, "bin"
        if (directory / "data_batch_1").is_file():
            return directory, "py"
    raise FileNotFoundError(
        f"cifar10: no data_batch_1 or data_batch_1.bin in {root}, {root / 'cifar-10-batches-py'} or "
        f"{root / 'cifar-10-batches-bin'}; pass root= the directory unpacked from the CIFAR-10 python or "
        "binary archive"
    )


def _load_split(directory: Path, fmt: str, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        path = directory / (f"{name}.bin" if fmt == "bin" else name)
        if not path.is_file():
            raise FileNotFoundError(f"cifar10: {path} not found (the directory holds an incomplete dataset)")
        x, y = _load_bin_batch(path) if fmt == "bin" else _load_py_batch(path)
        if y.size and int(y.max()) > 9:
            raise ValueError(f"{path}: labels must be 0..9, found {int(y.max())}")
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs)
    # Rows are channel-planar (1024 R, 1024 G, 1024 B, each 32x32 row-major); return NHWC.
    nhwc = np.ascontiguousarray(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return nhwc, np.concatenate(ys).astype(np.uint8)


def load_cifar10(root: str | os.PathLike[str]) -> RawDataset:
    """Loads CIFAR-10 (Krizhevsky 2009) from the python or binary batch files; nothing is downloaded.

    ``root`` may be the batch directory itself or the directory containing ``cifar-10-batches-bin/`` or
    ``cifar-10-batches-py/``; the format is detected from the files (binary preferred when both exist).

    - python format: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, pickled dicts with
      ``b"data"``: uint8 array ``(n, 3072)`` and ``b"labels"``: list of n ints. They are read with a
      restricted unpickler (``encoding="bytes"``) that resolves no global except the few NumPy names that
      rebuild a plain array, so a pickle that would call ``os.system`` or similar is refused unexecuted.
    - binary format: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``, records of
      3073 bytes: one label byte, then 3072 pixel bytes.

    Each 3072-byte row is 1024 red, 1024 green, 1024 blue values, each plane a 32x32 image in row-major
    order; the loader returns images as NHWC, so ``x[n, i, j, c]`` is ``row[c * 1024 + i * 32 + j]``.

    Returns:
      ``RawDataset`` named ``"cifar10"``: ``x_train`` uint8 ``(50000, 32, 32, 3)``, ``y_train`` uint8
      ``(50000,)``, ``x_test`` uint8 ``(10000, 32, 32, 3)``, ``y_test`` uint8 ``(10000,)`` (the row counts
      are whatever the files hold); labels 0..9; ``num_classes = 10``.

    Raises:
      FileNotFoundError: no CIFAR-10 batches under ``root``, or a batch file is missing.
      ValueError: a refused or corrupt pickle, a binary file whose size is not a multiple of 3073, or
        labels outside 0..9; the message names the file.
    """
    directory, fmt = _find_batches(Path(root))
    x_train, y_train = _load_split(directory, fmt, TRAIN_BATCHES)
    x_test, y_test = _load_split(directory, fmt, (TEST_BATCH,))
    return RawDataset("cifar10", x_train, y_train, x_test, y_test, num_classes=10)
