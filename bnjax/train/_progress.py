"""What a run has done and how it resumes: the metric history, the step losses and epoch times; checkpoints that
carry them (saved when due); the restore that hands a resumed run its checkpoint's epochs.

The rule: an epoch exists iff a checkpoint holds it, and the checkpoint carries that epoch's metrics.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from bnjax._typing import Layer
from bnjax.train import _checkpoint
from bnjax.train._calls import Placed, gather_states, init_states, split_states
from bnjax.train._config import PLACEMENT_FIELDS, TrainConfig
from bnjax.train._members import TrainState, state_shapes
from bnjax.train._setup import Run


@dataclass
class Progress:
    """What a run has done: epochs, metric history, step losses, epoch times; the states on the devices."""

    epoch: int
    history: dict[str, np.ndarray]
    loss_history: np.ndarray
    epoch_times: list[float]
    states: list[TrainState] = field(default_factory=list)

    def record(self, epoch: int, values: dict[str, np.ndarray], epochs: int) -> None:
        for k, v in values.items():
            if k not in self.history:
                self.history[k] = np.full((len(v), epochs + 1), np.nan)
            self.history[k][:, epoch] = v

    def values(self, epoch: int, steps: int) -> dict[str, np.ndarray]:
        """What ``callback`` got for ``epoch``: every metric's ``(K,)`` column, and from epoch 1 ``"loss"``,
        the mean train-mode loss of the epoch's steps."""
        out = {k: v[:, epoch].copy() for k, v in self.history.items()}
        if epoch > 0:
            out["loss"] = np.ascontiguousarray(self.loss_history[:, (epoch - 1) * steps: epoch * steps]).mean(axis=1)
        return out


def _layer_identity(layer: Layer) -> dict[str, Any]:
    """What a checkpoint fingerprint records of the model: its name, spec, defaults, structure and pytrees."""
    shapes = jax.eval_shape(layer.init, jax.random.key(0))
    return {
        "name": layer.name,
        "spec": _checkpoint.plain(layer.spec),
        "defaults": [[k, v] for k, v in layer.defaults],
        "layers": [[name, sub.name, getattr(sub.apply, "__qualname__", "")] for name, sub in layer.layers],
        "pytrees": json.dumps(jax.tree.map(lambda a: [list(a.shape), str(a.dtype)], shapes), sort_keys=True),
    }


def fingerprint(run: Run, data: Any) -> dict[str, Any]:
    placement = {f: TrainConfig.__dataclass_fields__[f].default for f in PLACEMENT_FIELDS}
    return _checkpoint.make_fingerprint(_layer_identity(run.layer), run.cfg.replace(**placement),
                                        [m.to_dict() for m in run.members], data, shared_batches=run.shared)


def restore(run: Run, placed: Placed, checkpoint_dir: str | None, fingerprint: Any, resume: bool) -> Progress:
    """The progress to start from: a checkpoint's (process 0 reads it, every process gets it), else a fresh
    initialisation."""
    k = run.num_members
    payload = None
    if checkpoint_dir is not None and resume:
        payload = _checkpoint.load_checkpoint(checkpoint_dir, fingerprint) if jax.process_index() == 0 else None
        if jax.process_count() > 1:
            payload = _broadcast_payload(payload)
    if payload is None:
        return Progress(0, {}, np.zeros((k, 0), np.float32), [], init_states(run, placed))
    template = state_shapes(run.layer, run.cfg, run.members)
    host = _checkpoint.restore_tree(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), template), payload["state"])
    return Progress(
        epoch=int(payload["epoch"]),
        # np.array copies: restored buffers are read-only and the history is filled in place.
        history={name: np.array(v, np.float64) for name, v in payload["history"].items()},
        loss_history=np.array(payload["loss_history"], np.float32).reshape(k, -1),
        epoch_times=[float(t) for t in np.asarray(payload["epoch_times"]).reshape(-1)],
        states=split_states(host, placed),
    )


def _broadcast_payload(payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """Process 0's checkpoint payload on every process (the checkpoint may live on process 0's disk only)."""
    from flax import serialization
    from jax.experimental import multihost_utils

    blob = b"" if payload is None else serialization.msgpack_serialize(payload)
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(blob) if payload is not None else -1)))
    if size < 0:
        return None
    data = np.frombuffer(blob, np.uint8) if jax.process_index() == 0 else np.zeros(size, np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(data), np.uint8)
    return serialization.msgpack_restore(data.tobytes())


AUTO_EVERY_EPOCH_BYTES = 64 * 2**20
"""With ``checkpoint_every="auto"``, states smaller than this are saved every epoch."""


class Checkpointer:
    """Saves the progress at epoch boundaries when due (process 0 writes; every process takes part in gathering
    the state): every ``every`` seconds; with ``"auto"`` every epoch while the state is under
    :data:`AUTO_EVERY_EPOCH_BYTES`, and for a larger one once the time since the last save is at least nine times
    what that save took, so saving costs at most a tenth of the run; and always at the last epoch, so a finished
    call's checkpoint holds its final state."""

    def __init__(self, directory: str | None, fingerprint: Any, every: float | str, epochs: int) -> None:
        if every != "auto" and not (isinstance(every, (int, float)) and math.isfinite(every) and every >= 0):
            raise ValueError(f"train_ensemble: checkpoint_every={every!r} must be 'auto' or a number of seconds >= 0.")
        self.directory, self.fingerprint, self.every, self.epochs = directory, fingerprint, every, epochs
        self.last, self.cost, self.size = time.perf_counter(), 0.0, 0

    def __call__(self, progress: Progress, placed: Placed) -> None:
        if self.directory is None:
            return
        elapsed = time.perf_counter() - self.last
        if self.every == "auto":  # small states every epoch; a large one once saving is a tenth of the time
            due = self.size < AUTO_EVERY_EPOCH_BYTES or elapsed >= 9 * self.cost
        else:
            due = elapsed >= self.every
        due = due or progress.epoch == self.epochs
        if jax.process_count() > 1:  # process 0's clock decides for all: gathering the state is a collective
            from jax.experimental import multihost_utils

            due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
        if not due:
            return
        t0 = time.perf_counter()
        state = gather_states(progress.states, placed)
        if jax.process_index() == 0:
            _checkpoint.save_checkpoint(self.directory, self.fingerprint, {
                "epoch": progress.epoch,
                "state": _checkpoint.to_state_dict(state),
                "history": progress.history,
                "loss_history": progress.loss_history,
                "epoch_times": np.asarray(progress.epoch_times, np.float64),
            })
        self.last = time.perf_counter()
        self.cost = self.last - t0
        self.size = sum(np.asarray(a).nbytes for a in jax.tree.leaves(state))
