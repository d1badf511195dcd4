"""What a run trains, checked once: the model as a Layer, the members, the training and evaluation sets, the
device layout. Everything a caller can fix is raised here, before anything is compiled or written."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._typing import FieldError, Layer
from bnjax.nn._mlp import as_layer
from bnjax.train._chunks import check_member_chunk
from bnjax.train._config import TrainConfig
from bnjax.train._members import (
    MODEL_OPTIONS,
    Member,
    Members,
    member_defaults,
    resolve_members,
    state_shapes,
)
from bnjax.train._model import stats_layout
from bnjax.train._precise_bn import check_precise_options
from bnjax.train._sharded import Layout, Parallel, make_layout
from bnjax.train._step import make_train_step

SPLITS = ("train", "val", "test")


class DatasetLike(Protocol):
    """What :func:`train_ensemble` reads from a dataset (``bnjax.data.Dataset`` has it)."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any
    num_classes: int


@dataclass
class Run:
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
    state = state_shapes(layer, cfg, [Member(**member_defaults(layer))])
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


def setup(model: Any, cfg: TrainConfig, data: Any, members: Members, parallel: Parallel | None,
           shared: bool) -> Run:
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
    run = Run(layer, cfg, resolved, inputs, shared, layout)
    if cfg.precise_bn_batches:
        state = jax.eval_shape(layer.init, jax.random.key(0))[1]
        if stats_layout(state):
            check_precise_options(layer, fn)
    return run


def check_inputs(model: Any, cfg: TrainConfig, data: DatasetLike, members: Members = None,
                 parallel: Parallel | None = None) -> None:
    """Raises the ValueError/TypeError :func:`train_ensemble` would raise for these arguments, without training
    (a runner calls it before writing anything)."""
    setup(model, cfg, data, members, parallel, shared=False)
