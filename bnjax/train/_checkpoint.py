"""Epoch-boundary checkpoints you can trust: msgpack files (flax.serialization) with a checksum and a fingerprint.

The file holds the whole training state (parameters, batch statistics, optimizer state, keys, step,
divergence flags), the metric history so far and a fingerprint of what produced it (model, training
configuration, members, data identity). A checkpoint is only resumed by the run it fingerprints.

File layout (format 2)::

    b"BNJAXCKP"                8 bytes, magic
    format                     uint32 little-endian (2)
    body length                uint64 little-endian
    SHA-256 of the body        32 bytes
    body                       msgpack of {"format", "fingerprint" (JSON text), "payload"}

Every save keeps the previous checkpoint as ``checkpoint.prev.msgpack``. A load verifies the length and the
checksum; a damaged file (truncated, a flipped byte) is reported by name and the previous intact one is used
instead; when none is intact the load refuses (:class:`CheckpointError`), never returning damaged bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from bnjax._io import atomic_write, remove_stale_temporaries

CHECKPOINT_NAME = "checkpoint.msgpack"
PREVIOUS_NAME = "checkpoint.prev.msgpack"
FORMAT_VERSION = 2
MAGIC = b"BNJAXCKP"
_HEADER = struct.Struct("<8sIQ32s")  # magic, format, body length, SHA-256 of the body
_log = logging.getLogger("bnjax")


class CheckpointError(ValueError):
    """A checkpoint cannot be trusted (damaged, another run's); the message names the file and what to do."""


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


def plain(obj: Any) -> Any:
    """A dataclass as a dict, anything else as it is (what a fingerprint records of a spec or a config)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else obj


def make_fingerprint(model: Any, cfg: Any, members: list[dict[str, Any]], data: Any, **options: Any) -> dict[str, Any]:
    """A JSON-friendly description of a run; two runs with equal fingerprints compute the same thing.

    ``model`` describes the model (a dataclass such as an :class:`bnjax.MLPSpec`, or JSON-able values).
    """
    return json.loads(json.dumps({
        "model": plain(model),
        "cfg": plain(cfg),
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
    """Where :func:`save_checkpoint` writes the newest checkpoint in ``directory``."""
    return Path(directory) / CHECKPOINT_NAME


def previous_checkpoint_path(directory: str | os.PathLike[str]) -> Path:
    """Where the checkpoint before the newest is kept (the fallback of a damaged newest one)."""
    return Path(directory) / PREVIOUS_NAME


def _encode(fingerprint: dict[str, Any], payload: dict[str, Any]) -> bytes:
    body = serialization.msgpack_serialize(
        {"format": FORMAT_VERSION, "fingerprint": json.dumps(fingerprint, sort_keys=True), "payload": payload}
    )
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(body), hashlib.sha256(body).digest()) + body


def _decode(path: Path) -> dict[str, Any]:
    """The verified contents of one checkpoint file; raises CheckpointError saying what is wrong with it."""
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise CheckpointError(f"{path}: not a bnjax checkpoint (no {MAGIC.decode()} header)")
        raise CheckpointError(f"{path}: truncated to {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"{path}: not a bnjax checkpoint, or one written before checksums (format 1); "
                              f"its bytes cannot be verified")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this bnjax reads format {FORMAT_VERSION}")
    body = data[_HEADER.size:]
    if len(body) != length:
        what = "truncated" if len(body) < length else "longer than written"
        raise CheckpointError(f"{path}: {what}: {len(body)} bytes of contents, the header says {length}")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: corrupt: the SHA-256 checksum of its contents does not match the one "
                              f"stored when it was written")
    raw = serialization.msgpack_restore(body)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION or "payload" not in raw:
        raise CheckpointError(f"{path}: the checksum matches but the contents are not a checkpoint")
    return raw


def save_checkpoint(directory: str | os.PathLike[str], fingerprint: dict[str, Any], payload: dict[str, Any]) -> Path:
    """Writes ``payload`` (a pytree of NumPy arrays, numbers, strings) with ``fingerprint`` and a checksum.

    The bytes go to a temporary file in the same directory and are flushed and fsynced; then the newest
    checkpoint becomes ``checkpoint.prev.msgpack`` and the new file is renamed to ``checkpoint.msgpack``
    (``os.replace`` is atomic on POSIX). A crash or a full disk at any point leaves the earlier checkpoints as
    they were (at worst only the previous one, which :func:`load_checkpoint` then uses), never a torn one.

    Raises:
      OSError: the directory cannot be written (full disk, read-only file system, permissions); the message
        names the file, and the checkpoints written before are untouched.
    """
    directory = Path(directory)
    remove_stale_temporaries(directory, CHECKPOINT_NAME)  # left by a process killed mid-write
    try:
        return atomic_write(checkpoint_path(directory), _encode(fingerprint, payload),
                            keep_previous=previous_checkpoint_path(directory))
    except OSError as e:
        raise OSError(e.errno, f"could not write the checkpoint ({e.strerror or e}); the checkpoints written "
                               f"before it are kept", e.filename) from e


def verify_checkpoints(directory: str | os.PathLike[str]) -> tuple[Path | None, list[str]]:
    """``(first intact checkpoint, problems)`` in ``directory``, newest first; ``(None, [])`` when there is none.

    Checks the length and checksum only (not the fingerprint), so a caller can refuse damaged checkpoints
    before doing anything else. ``problems`` has one line per damaged file, naming it.
    """
    problems = []
    for path in (checkpoint_path(directory), previous_checkpoint_path(directory)):
        if not path.exists():
            continue
        try:
            _decode(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        return path, problems
    return None, problems


def load_checkpoint(directory: str | os.PathLike[str], fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The payload of the newest intact checkpoint in ``directory``, or None if there is none.

    A damaged newest checkpoint (truncated, corrupt) is reported by name on the ``bnjax`` logger (warning)
    and the previous one is loaded instead.

    Raises:
      CheckpointError (a ValueError): every checkpoint in ``directory`` is damaged (the message names each
        file and what is wrong with it), or the checkpoint was written by a different run (its fingerprint
        differs; the message lists every difference).
    """
    problems: list[str] = []
    for path in (checkpoint_path(directory), previous_checkpoint_path(directory)):
        if not path.exists():
            continue
        try:
            raw = _decode(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        diffs = _differences(json.loads(raw["fingerprint"]), json.loads(json.dumps(fingerprint, sort_keys=True)))
        if diffs:
            shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            raise CheckpointError(
                f"Refusing to resume from {path}: it was written by a different run ({shown}). Use a new output "
                f"directory (--out), or delete {path} to start this run from scratch."
            )
        payload = raw["payload"]
        if problems:
            epoch = f" (epoch {payload['epoch']})" if isinstance(payload, dict) and "epoch" in payload else ""
            _log.warning("%s; resuming from the previous checkpoint %s%s instead", "; ".join(problems), path.name,
                         epoch)
        return payload
    if problems:
        raise CheckpointError(
            f"No intact checkpoint to resume from in {Path(directory)}: " + "; ".join(problems)
            + f". Delete {Path(directory)} to train this part again from scratch."
        )
    return None


def restore_tree(template: Any, state_dict: Any) -> Any:
    """``template``'s pytree structure with the leaves of a restored state dict (flax.serialization)."""
    return serialization.from_state_dict(template, state_dict)


def to_state_dict(tree: Any) -> Any:
    """A msgpack-ready nested dict of NumPy arrays of ``tree`` (flax.serialization)."""
    return serialization.to_state_dict(tree)
