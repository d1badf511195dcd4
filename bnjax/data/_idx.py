"""Reader for the IDX format of MNIST and Fashion-MNIST, gzipped or raw."""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

# IDX type codes (third magic byte) -> big-endian NumPy dtype, from the MNIST page (yann.lecun.com/exdb/mnist).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_maybe_gzip(path: str | os.PathLike[str]) -> bytes:
    """Returns the bytes of ``path``, decompressed when the file starts with the gzip magic ``1f 8b``.

    The content is sniffed rather than trusted to the ``.gz`` suffix (no raw IDX file starts with ``1f``).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the gzip stream is corrupt or truncated; the message names the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    # BadGzipFile (bad header), EOFError (stream cut short) and zlib.error (bad deflate data) all mean the
    # same thing to a user: the download is damaged.
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{os.fspath(path)}: corrupt or truncated gzip stream ({exc}); re-fetch the file") from exc


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads one IDX file (``.gz`` or raw) into a NumPy array.

    Format: 4 magic bytes ``00 00 <type code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
    ``prod(sizes)`` items in big-endian order. Type codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64. MNIST images are ``idx3`` uint8 ``(N, 28, 28)``
    and labels ``idx1`` uint8 ``(N,)``.

    Args:
      path: the file; gzip compression is detected from its first bytes.

    Returns:
      An array of shape ``sizes`` in the native byte order of the file's type (``uint8`` for MNIST).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: bad magic, unknown type code, or a payload whose length differs from ``prod(sizes)``
        items (a truncated or padded file); corrupt gzip. Every message names the file.
    """
    name = os.fspath(path)
    data = read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"{name}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number")
    zero0, zero1, code, ndim = data[:4]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(
            f"{name}: not an IDX file: bad magic number {data[:4].hex()} (expected 0000 followed by a type "
            "code and the number of dimensions)"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02X} in the magic number (known: {known})")
    if ndim == 0:
        raise ValueError(f"{name}: IDX magic number says 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{name}: truncated IDX header: expected {header} bytes for {ndim} dimension sizes, found {len(data)}"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = {1: "label", 3: "image"}.get(ndim, "array")
        raise ValueError(
            f"{name}: expected {expected} bytes of {what} data for shape {shape} {dtype.name} after the "
            f"{header}-byte header, found {found}"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    # astype makes a writable copy in native byte order (big-endian arrays are slow and surprise callers).
    return array.astype(dtype.newbyteorder("="))
