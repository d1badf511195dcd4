"""Training K models ("members") at once: the outline of a run -- set up, restore, loop, result.

Each member has its own seed (init, dropout and -- unless batches are shared -- shuffling), weight scale,
drop rate, learning rate and BN momentum. A member whose loss or parameters become non-finite is frozen and
reported; the others continue undisturbed. The members train in one compiled program per epoch (``vmap``;
``K = 1`` without it), in chunks of ``cfg.member_chunk`` when they do not fit in memory at once, sharded over
a device mesh with ``parallel``. Resume has one rule: an epoch exists iff a checkpoint holds it, and the
checkpoint carries that epoch's metrics, which a resumed run hands to ``callback`` again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._typing import FieldError, Layer
from bnjax.nn._mlp import MLPSpec, as_layer
from bnjax.train import _checkpoint
from bnjax.train._chunks import ChunkPlan, check_member_chunk, plan_chunks
from bnjax.train._config import PLACEMENT_FIELDS, TrainConfig
from bnjax.train._members import (
    MODEL_OPTIONS,
    Member,
    Members,
    TrainState,
    init_members,
    member_arrays,
    member_defaults,
    resolve_members,
    shared_shuffle_key,
)
from bnjax.train._model import stats_layout
from bnjax.train._precise_bn import check_precise_options
from bnjax.train._programs import ProgramSpec, Programs, compile_programs
from bnjax.train._result import EnsembleResult
from bnjax.train._sharded import Layout, Parallel, make_layout, pad_members, to_devices, to_host
from bnjax.train._step import make_train_step

SPLITS = ("train", "val", "test")
Callback = Callable[[int, dict[str, np.ndarray]], None]


class DatasetLike(Protocol):
    """What :func:`train_ensemble` reads from a dataset (``bnjax.data.Dataset`` has it)."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any
    num_classes: int


# ------------------------------------------------------------------------------------------------ set up

@dataclass
class _Run:
    """What a run trains, fixed once its arguments are checked."""

    layer: Layer
    cfg: TrainConfig
    members: list[Member]
    inputs: dict[str, Any]
    shared: bool
    layout: Layout | None

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def steps(self) -> int:
        return len(self.inputs["x"]) // self.cfg.batch_size

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(sorted(k for k in MODEL_OPTIONS if getattr(self.members[0], k) is not None))

    @property
    def use_dropout(self) -> bool:
        return any(m.dropout is not None and m.dropout > 0 for m in self.members)


def _as_split(data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(getattr(data, f"x_{split}"), np.float32)
    y = np.asarray(getattr(data, f"y_{split}"))
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"train_ensemble: data.y_{split} must be {len(x)} integer labels, got shape {y.shape} "
                         f"dtype {y.dtype}.")
    return x, y.astype(np.int32)


@functools.lru_cache(maxsize=64)
def _check_model(layer: Layer, cfg: TrainConfig, example: tuple[int, ...], num_classes: int, rows: int) -> None:
    """The model trains on ``rows`` rows (a device's share of a batch) and maps a batch to ``(batch,
    num_classes)`` logits (checked on shapes only, so a layer's own refusal -- e.g. ghost batches that do not
    divide the rows -- surfaces here, before anything runs). Cached: a runner checks before it trains."""
    fn = "train_ensemble"
    params, stats = jax.eval_shape(layer.init, jax.random.key(0))
    xb = jax.ShapeDtypeStruct((cfg.batch_size, *example), jnp.float32)
    out = jax.eval_shape(lambda p, s, xb: layer.apply(p, s, xb, False)[0], params, stats, xb)
    if tuple(out.shape) != (cfg.batch_size, num_classes):
        raise ValueError(f"{fn}: the model maps a batch of {cfg.batch_size} examples of shape {example} to an output "
                         f"of shape {tuple(out.shape)}; it must give ({cfg.batch_size}, {num_classes}) logits for the "
                         f"data's {num_classes} classes.")
    state = jax.eval_shape(lambda: init_members(layer, cfg, *member_arrays([Member(**member_defaults(layer))])))
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
    batch = (jax.ShapeDtypeStruct((rows, *example), jnp.float32), jax.ShapeDtypeStruct((rows,), jnp.int32))
    try:
        jax.eval_shape(make_train_step(layer, cfg, 1), state, batch)
    except ValueError as e:
        share = "" if rows == cfg.batch_size else f", each device's share of a batch of {cfg.batch_size}"
        raise FieldError("TrainConfig", "batch_size", cfg.batch_size,
                         f"gives training batches of {rows} rows{share}, which the model refuses: {e}") from None


def _loop_inputs(layer: Layer, cfg: TrainConfig, data: Any, rows: int) -> dict[str, Any]:
    """The training set, the fixed evaluation sets and the precise-BN rows, as checked NumPy arrays."""
    splits = {s: _as_split(data, s) for s in SPLITS}
    x_tr, y_tr = splits["train"]
    n_train = len(x_tr)
    if n_train < cfg.batch_size:
        raise FieldError("TrainConfig", "batch_size", cfg.batch_size,
                         f"is larger than the training set ({n_train} examples); lower the batch size.")
    num_classes = int(data.num_classes)
    for s, (_, y) in splits.items():
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"train_ensemble: data.y_{s} has labels outside [0, {num_classes}).")
    _check_model(layer, cfg, tuple(x_tr.shape[1:]), num_classes, rows)
    # Fixed subsets, the same for every member and every epoch (seeded by cfg.seed).
    sub = np.sort(np.random.default_rng([cfg.seed, 7]).permutation(n_train)[: min(cfg.eval_train_samples, n_train)])
    sets = {"train": (x_tr[sub], y_tr[sub]), "val": splits["val"], "test": splits["test"]}
    precise_x = np.zeros((0, *x_tr.shape[1:]), np.float32)
    if cfg.precise_bn_batches:
        need = cfg.precise_bn_batches * cfg.batch_size
        if need > n_train:
            raise FieldError("TrainConfig", "precise_bn_batches", cfg.precise_bn_batches,
                             f"batches of {cfg.batch_size} need {need} training examples, there are {n_train}; lower "
                             f"it.")
        precise_x = x_tr[np.random.default_rng([cfg.seed, 11]).permutation(n_train)[:need]]
    return {"x": x_tr, "y": y_tr, "sets": sets, "precise_x": precise_x}


def _setup(model: Any, cfg: TrainConfig, data: Any, members: Members, parallel: Parallel | None,
           shared: bool) -> _Run:
    """Checks every argument (raising what a caller can fix) and resolves the model, members and layout."""
    fn = "train_ensemble"
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"{fn}: cfg must be a TrainConfig, got {type(cfg).__name__}.")
    layer = as_layer(model, fn, input_shape=tuple(np.shape(data.x_train)[1:]), num_classes=int(data.num_classes))
    resolved = resolve_members(layer, cfg, members)
    check_member_chunk(cfg.member_chunk, len(resolved))
    layout = None
    if parallel is not None:
        layout = make_layout(parallel, len(resolved), cfg.batch_size)
        if layout.single_device and jax.process_count() == 1:
            layout = None
    inputs = _loop_inputs(layer, cfg, data, cfg.batch_size // (1 if layout is None else layout.data))
    run = _Run(layer, cfg, resolved, inputs, shared, layout)
    if cfg.precise_bn_batches:
        state = jax.eval_shape(layer.init, jax.random.key(0))[1]
        if stats_layout(state):
            check_precise_options(layer, fn)
    return run


def check_inputs(model: Any, cfg: TrainConfig, data: DatasetLike, members: Members = None,
                 parallel: Parallel | None = None) -> None:
    """Raises the ValueError/TypeError :func:`train_ensemble` would raise for these arguments, without training
    (a runner calls it before writing anything)."""
    _setup(model, cfg, data, members, parallel, shared=False)


# ------------------------------------------------------------------------------------------ device side

@dataclass
class _Placed:
    """The run on its devices: the chunk plan, the compiled programs and the inputs they read."""

    plan: ChunkPlan
    layout: Layout | None
    programs: Programs
    args: tuple[Any, ...]  # x, y, shuffle key (the epoch's inputs after the state)
    eval_args: tuple[Any, ...]  # sets, precise_x
    compile_seconds: float


def _layout_for(run: _Run, width: int) -> Layout | None:
    if run.layout is None:
        return None
    return make_layout(Parallel(run.layout.members, run.layout.data, run.layout.sync_bn), width,
                       run.cfg.batch_size)


def _program_spec(run: _Run, width: int) -> ProgramSpec:
    aval = lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)  # noqa: E731
    sets = tuple(sorted((name, (aval(x), aval(y))) for name, (x, y) in run.inputs["sets"].items()))
    inputs = (aval(run.inputs["x"]), aval(run.inputs["y"]), sets, aval(run.inputs["precise_x"]))
    return ProgramSpec(run.layer, run.cfg, width, len(run.inputs["x"]), run.shared, run.use_dropout, run.options,
                       inputs, _layout_for(run, width), jax.config.jax_default_matmul_precision)


def _place(run: _Run, log: Callable[[str], None] | None) -> _Placed:
    """Plans the chunks, compiles their programs and puts the inputs on the devices."""
    t0 = time.perf_counter()
    multiple = 1 if run.layout is None else run.layout.members
    plan = plan_chunks(run.num_members, run.cfg.member_chunk, multiple,
                       lambda width: compile_programs(_program_spec(run, width)).bytes)
    if log is not None and (plan.num_chunks > 1 or run.cfg.member_chunk != "auto"):
        log(f"{plan.num_chunks} chunk(s) of members: {plan.reason}")
    spec = _program_spec(run, plan.width)
    with _out_of_memory(run.cfg, plan.size):
        programs = compile_programs(spec)
    layout = spec.layout
    x, y, sets, precise = run.inputs["x"], run.inputs["y"], run.inputs["sets"], run.inputs["precise_x"]
    key = jax.device_get(shared_shuffle_key(run.cfg.seed))
    if layout is None:
        placed = jax.device_put((x, y, key, sets, precise))
    else:
        placed = to_devices((x, y, key, sets, precise), layout.sharding())
    return _Placed(plan, layout, programs, placed[:3], placed[3:], time.perf_counter() - t0)


@contextlib.contextmanager
def _out_of_memory(cfg: TrainConfig, size: int) -> Iterator[None]:
    """Turns the device running out of memory into one error that names ``member_chunk`` and a smaller value."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - XLA reports OOM as a runtime error whose text says so
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text and "out of memory" not in text:
            raise
        first = next((line for line in text.splitlines() if line.strip()), type(e).__name__)[:200]
        raise FieldError("TrainConfig", "member_chunk", cfg.member_chunk,
                         f"ran out of memory with {size} members per call ({first}); set a smaller member_chunk, "
                         f"e.g. {max(1, size // 2)}.") from None


def _call_members(run: _Run, plan: ChunkPlan, start: int, stop: int) -> list[Member]:
    """Members ``start:stop``, padded to the call's width with copies of the last (results dropped)."""
    chunk = run.members[start:stop]
    return chunk + [chunk[-1]] * (plan.width - len(chunk))


def _place_state(state: TrainState, placed: _Placed) -> TrainState:
    if placed.layout is None:
        return jax.device_put(state)
    return to_devices(jax.device_get(state), placed.layout.member_sharding())


def _init_states(run: _Run, placed: _Placed) -> list[TrainState]:
    """Each call's initial state (one vmapped init program per call)."""
    out = []
    for start, stop in placed.plan.calls:
        state = init_members(run.layer, run.cfg, *member_arrays(_call_members(run, placed.plan, start, stop)))
        out.append(state if placed.layout is None else _place_state(state, placed))
    return out


def _split_states(host: TrainState, placed: _Placed) -> list[TrainState]:
    """A host state of all members as each call's padded state on its devices."""
    out = []
    for start, stop in placed.plan.calls:
        part = jax.tree.map(lambda a: np.asarray(a)[start:stop], host)
        out.append(_place_state(pad_members(part, placed.plan.width), placed))
    return out


def _gather_states(states: list[TrainState], placed: _Placed) -> TrainState:
    """Every member's state as NumPy (unpadded; a collective over the processes: all must call it)."""
    parts = []
    for (start, stop), st in zip(placed.plan.calls, states):
        host = jax.device_get(st) if placed.layout is None else to_host(st, placed.layout)
        parts.append(jax.tree.map(lambda a: np.asarray(a)[: stop - start], host))
    return jax.tree.map(lambda *a: np.concatenate(a), *parts)


def _epoch(run: _Run, placed: _Placed, states: list[TrainState]) -> tuple[list[TrainState], np.ndarray]:
    """One epoch of every call; the members' ``(K, steps)`` train losses on the host."""
    out, losses = [], []
    with _out_of_memory(run.cfg, placed.plan.size):
        for st in states:
            st, loss = placed.programs.epoch(st, *placed.args)
            out.append(st)
            losses.append(loss)
        host = jax.device_get(losses)  # one transfer per call; blocks until the epoch has run
    return out, np.concatenate([h[: stop - start] for h, (start, stop) in zip(host, placed.plan.calls)])


def _evaluate(run: _Run, placed: _Placed, states: list[TrainState]) -> dict[str, np.ndarray]:
    """Every metric as a ``(K,)`` float64 array (one transfer per call)."""
    with _out_of_memory(run.cfg, placed.plan.size):
        parts = jax.device_get([placed.programs.evaluate(st, *placed.eval_args) for st in states])
    calls = placed.plan.calls
    return {k: np.concatenate([np.asarray(p[k], np.float64).reshape(-1)[: stop - start]
                               for p, (start, stop) in zip(parts, calls)]) for k in parts[0]}


# ----------------------------------------------------------------------------------- progress and resume

@dataclass
class _Progress:
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


def _fingerprint(run: _Run, data: Any) -> dict[str, Any]:
    placement = {f: TrainConfig.__dataclass_fields__[f].default for f in PLACEMENT_FIELDS}
    return _checkpoint.make_fingerprint(_layer_identity(run.layer), run.cfg.replace(**placement),
                                        [m.to_dict() for m in run.members], data, shared_batches=run.shared)


def _restore(run: _Run, placed: _Placed, checkpoint_dir: str | None, fingerprint: Any, resume: bool) -> _Progress:
    """The progress to start from: a checkpoint's (process 0 reads it, every process gets it), else a fresh
    initialisation."""
    k = run.num_members
    payload = None
    if checkpoint_dir is not None and resume:
        payload = _checkpoint.load_checkpoint(checkpoint_dir, fingerprint) if jax.process_index() == 0 else None
        if jax.process_count() > 1:
            payload = _broadcast_payload(payload)
    if payload is None:
        return _Progress(0, {}, np.zeros((k, 0), np.float32), [], _init_states(run, placed))
    template = jax.eval_shape(lambda: init_members(run.layer, run.cfg, *member_arrays(run.members)))
    host = _checkpoint.restore_tree(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), template), payload["state"])
    return _Progress(
        epoch=int(payload["epoch"]),
        # np.array copies: restored buffers are read-only and the history is filled in place.
        history={name: np.array(v, np.float64) for name, v in payload["history"].items()},
        loss_history=np.array(payload["loss_history"], np.float32).reshape(k, -1),
        epoch_times=[float(t) for t in np.asarray(payload["epoch_times"]).reshape(-1)],
        states=_split_states(host, placed),
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


class _Checkpointer:
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

    def __call__(self, progress: _Progress, placed: _Placed) -> None:
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
        state = _gather_states(progress.states, placed)
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


# ----------------------------------------------------------------------------------------------- the loop

def _train(run: _Run, placed: _Placed, progress: _Progress, callback: Callback | None,
           checkpoint: _Checkpointer) -> None:
    """Epoch 0's evaluation (a fresh run) and the remaining epochs; the restored epochs are replayed to
    ``callback`` first, so it sees every epoch of the run exactly once after a resume too."""
    epochs, steps = run.cfg.epochs, run.steps
    if not progress.history:  # a fresh run: evaluate before training
        progress.record(0, _evaluate(run, placed, progress.states), epochs)
    for e in range(progress.epoch + 1):
        if callback is not None:
            callback(e, progress.values(e, steps))
    for e in range(progress.epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        progress.states, losses = _epoch(run, placed, progress.states)
        progress.epoch_times.append(time.perf_counter() - t0)
        progress.loss_history = np.concatenate([progress.loss_history, losses], axis=1)
        progress.record(e, _evaluate(run, placed, progress.states), epochs)
        progress.epoch = e
        checkpoint(progress, placed)  # before the callback: an interrupt there keeps this epoch's checkpoint
        if callback is not None:
            callback(e, progress.values(e, steps))


def train_ensemble(
    model: Layer | MLPSpec,
    cfg: TrainConfig,
    data: DatasetLike,
    members: Members = None,
    *,
    shared_batches: bool = False,
    callback: Callback | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    parallel: Parallel | None = None,
    checkpoint_every: float | str = "auto",
    log: Callable[[str], None] | None = None,
) -> EnsembleResult:
    """Trains ``K`` models at once and evaluates them before training and after every epoch.

    Every epoch is one jitted call per chunk of members (state buffers donated): a ``lax.scan`` over
    ``N_train // batch_size`` mini-batches drawn by a permutation computed on device; then one jitted
    evaluation in eval mode on a fixed training subset, the validation and the test set, whose metrics reach
    the host as whole arrays (one transfer per chunk).

    Args:
      model: a :class:`bnjax.Layer` (any ``init``/``apply`` pair mapping ``(B, *example_shape)`` inputs to
        ``(B, num_classes)`` logits, e.g. ``bnjax.serial(...)`` or what a config's ``model.factory`` returns)
        or an :class:`bnjax.MLPSpec` (built by :func:`bnjax.mlp` here, once; its ``in_features``/
        ``num_classes`` may be None, then they come from the data).
      cfg: the training configuration (``cfg.member_chunk`` sets how many members one call trains).
      data: an object with ``x_train, y_train, x_val, y_val, x_test, y_test`` (NumPy; x as float32 with the
        example shape the model takes -- an MLP flattens each example --, y integer labels) and
        ``num_classes`` (``bnjax.data.Dataset``); ``name`` is used in the checkpoint fingerprint when present.
      members: a dict of equal-length lists over ``"seed"``, ``"learning_rate"``, ``"weight_scale"``,
        ``"dropout"``, ``"bn_momentum"``, or a list of :class:`Member` (see :func:`resolve_members` for the
        defaults). ``None``: one member with ``cfg.seed``. Member ``k``'s init and randomness depend only on
        its own values, so it trains exactly as it would alone (up to float reassociation under vmap).
      shared_batches: every member sees the same mini-batch order (drawn from ``cfg.seed``) instead of its
        own (drawn from its seed); dropout masks stay per member. Faster when the model starts with a dense
        layer: the first layer of all members is then one matmul. Natural for hyperparameter sweeps (paired
        comparisons); keep the default when members are replicates whose data order should vary too.
      callback: ``callback(epoch, metrics)`` after the evaluation before training (epoch 0) and after each
        epoch; ``metrics`` maps every history metric to a ``(K,)`` NumPy array, plus ``"loss"`` (mean
        train-mode loss of the epoch) from epoch 1. A resumed run first calls it again for every epoch its
        checkpoint holds (0 to the checkpoint's epoch, with the saved values), then for the epochs it trains.
      checkpoint_dir: if set, the full state and the metrics so far are saved there (atomically) at epoch
        boundaries, before the callback sees the epoch.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (its fingerprint must match
        this call, otherwise ValueError). With ``resume=False`` an existing checkpoint is overwritten.
      parallel: a :class:`Parallel` layout: the members sharded over ``parallel.members`` devices, each
        member's batch over ``parallel.data`` (see :mod:`bnjax.train._sharded`). None (default) or a layout of
        one device: the single-device program. The results do not depend on it beyond float summation order
        (dropout masks are drawn per row of the global batch); a checkpoint written with one layout resumes
        with another. Over several processes (after ``jax.distributed.initialize()``) every process calls
        this with the same arguments and data, ``callback`` runs on every process, only process 0 writes the
        checkpoint and every process reads process 0's (broadcast).
      checkpoint_every: when a checkpoint is due: ``"auto"`` (default) -- every epoch while the members' state
        is under 64 MiB, and for a larger one at the first epoch boundary after nine times what the last save
        took (saving costs at most a tenth of the run); a number -- at the first epoch boundary after that many
        seconds (0: every epoch); and always at the last epoch. A resumed run trains the epochs after the last
        checkpoint again.
      log: where the run says how many chunks of members it uses and why (when more than one, or when
        ``cfg.member_chunk`` is set); None: silent.

    Returns:
      An :class:`EnsembleResult`.
    """
    if resume and checkpoint_dir is None:
        raise ValueError("train_ensemble: resume=True needs checkpoint_dir, the directory holding the checkpoint.")
    run = _setup(model, cfg, data, members, parallel, shared_batches)
    checkpoint = _Checkpointer(checkpoint_dir, None, checkpoint_every, cfg.epochs)
    placed = _place(run, log)
    checkpoint.fingerprint = _fingerprint(run, data) if checkpoint_dir is not None else None
    progress = _restore(run, placed, checkpoint_dir, checkpoint.fingerprint, resume)
    _train(run, placed, progress, callback, checkpoint)
    final = _gather_states(progress.states, placed)
    return EnsembleResult(
        members=[m.to_dict() for m in run.members],
        history=progress.history,
        loss_history=progress.loss_history,
        diverged_step=np.asarray(final.diverged_step, np.int64),
        params=final.params,
        batch_stats=final.batch_stats,
        epoch_times=progress.epoch_times,
        steps_per_epoch=run.steps,
        compile_seconds=placed.compile_seconds,
        spec=run.layer.spec,
        cfg=cfg,
        model=run.layer,
    )
