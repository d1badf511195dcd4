"""One atomic write for every file bnjax keeps: a reader (or a resumed run) sees the old file or the new one,
never a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from bnjax._faults import kill_point


def atomic_write(path: str | os.PathLike[str], write: bytes | str | Callable[[IO[bytes]], None], *,
                 keep_previous: str | os.PathLike[str] | None = None) -> Path:
    """Writes ``path`` atomically: the contents (bytes, text as UTF-8, or a function writing to a binary file)
    go to a temporary file in the same directory, flushed and fsynced; then ``os.replace`` puts it in place
    (atomic on POSIX) and the directory entry is fsynced, so a power loss cannot bring the old file back.

    ``keep_previous``: first move the current ``path`` there (a checkpoint keeps the one before it).

    Raises:
      OSError naming ``path`` (full disk, read-only file system, permissions); ``path`` is then as it was and
      no temporary file is left.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        kill_point(f"{path.name}: temporary file written")
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
            kill_point(f"{path.name}: previous kept")
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        kill_point(f"{path.name}: in place")
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temporary files (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def remove_stale_temporaries(directory: str | os.PathLike[str], name: str | None = None, *,
                             recursive: bool = False) -> None:
    """Deletes the temporary files that processes killed in :func:`atomic_write` left: those of
    ``directory/name``, or with ``name`` None every one in ``directory`` (and below it with ``recursive``)."""
    d, pattern = Path(directory), ".*.tmp" if name is None else f".{name}.*.tmp"
    for stale in d.rglob(pattern) if recursive else d.glob(pattern):
        stale.unlink(missing_ok=True)
