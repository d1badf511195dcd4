"""Epoch-boundary checkpoints: one msgpack file (flax.serialization), written atomically, with a fingerprint.

The file holds the whole training state (parameters, batch statistics, optimizer state, keys, step,
divergence flags), the metric history so far and a fingerprint of what produced it (model, training
configuration, members, data identity). A checkpoint is only resumed by the run it fingerprints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

CHECKPOINT_NAME = "checkpoint.msgpack"
FORMAT_VERSION = 1


def data_identity(data: Any) -> dict[str, Any]:
    """Name, shapes, dtypes and a cheap content hash of a dataset (256 sampled rows of each x, all labels)."""
    ident: dict[str, Any] = {"name": str(getattr(data, "name", "")), "num_classes": int(data.num_classes)}
    h = hashlib.blake2b(digest_size=12)
    for split in ("train", "val", "test"):
        x = np.asarray(getattr(data, f"x_{split}"))
        y = np.asarray(getattr(data, f"y_{split}"))
        ident[f"x_{split}"] = [list(x.shape), str(x.dtype)]
        ident[f"y_{split}"] = [list(y.shape), str(y.dtype)]
        rows = x[:: max(1, len(x) // 256)] if len(x) else x
        h.update(np.ascontiguousarray(rows).tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
    ident["hash"] = h.hexdigest()
    return ident


def make_fingerprint(spec: Any, cfg: Any, members: list[dict[str, Any]], data: Any, **options: Any) -> dict[str, Any]:
    """A JSON-friendly description of a run; two runs with equal fingerprints compute the same thing."""
    return json.loads(json.dumps({
        "spec": dataclasses.asdict(spec),
        "cfg": dataclasses.asdict(cfg),
        "members": members,
        "data": data_identity(data),
        "options": options,
    }))


def _differences(saved: Any, current: Any, path: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(saved) | set(current), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in saved or k not in current:
                was = repr(saved[k]) if k in saved else "missing"
                now = repr(current[k]) if k in current else "missing"
                out.append(f"{p}: {was} (checkpoint) vs {now} (now)")
            else:
                out.extend(_differences(saved[k], current[k], p))
        return out
    return [] if saved == current else [f"{path}: {saved!r} (checkpoint) vs {current!r} (now)"]


def checkpoint_path(directory: str | os.PathLike[str]) -> Path:
    """Where :func:`save_checkpoint` writes in ``directory``."""
    return Path(directory) / CHECKPOINT_NAME


def save_checkpoint(directory: str | os.PathLike[str], fingerprint: dict[str, Any], payload: dict[str, Any]) -> Path:
    """Writes ``payload`` (a pytree of NumPy arrays, numbers, strings) with ``fingerprint`` atomically.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and the file is renamed
    over ``checkpoint.msgpack`` (``os.replace`` is atomic on POSIX), so a crash leaves either the previous or
    the new checkpoint, never a torn one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = serialization.msgpack_serialize(
        {"format": FORMAT_VERSION, "fingerprint": json.dumps(fingerprint, sort_keys=True), "payload": payload}
    )
    target = checkpoint_path(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{CHECKPOINT_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Persist the rename itself (the directory entry), so a power loss cannot bring the old file back.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_checkpoint(directory: str | os.PathLike[str], fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The payload of the checkpoint in ``directory``, or None if there is none.

    Raises:
      ValueError: the checkpoint was written by a different run (its fingerprint differs); the message lists
        every difference.
    """
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    raw = serialization.msgpack_restore(path.read_bytes())
    if raw.get("format") != FORMAT_VERSION:
        raise ValueError(f"load_checkpoint: {path} has format {raw.get('format')!r}, expected {FORMAT_VERSION}; "
                         f"remove it or use a new output directory.")
    diffs = _differences(json.loads(raw["fingerprint"]), json.loads(json.dumps(fingerprint, sort_keys=True)))
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ValueError(
            f"Refusing to resume from {path}: it was written by a different run ({shown}). Use a new output "
            f"directory (--out), or delete {path} to start this run from scratch."
        )
    return raw["payload"]


def restore_tree(template: Any, state_dict: Any) -> Any:
    """``template``'s pytree structure with the leaves of a restored state dict (flax.serialization)."""
    return serialization.from_state_dict(template, state_dict)


def to_state_dict(tree: Any) -> Any:
    """A msgpack-ready nested dict of NumPy arrays of ``tree`` (flax.serialization)."""
    return serialization.to_state_dict(tree)
