"""Training K models ("members") at once: one compiled program per epoch, members under ``jax.vmap``.

Each member has its own seed (init, dropout and -- unless batches are shared -- shuffling), weight scale,
drop rate, learning rate and BN momentum. A member whose loss or parameters become non-finite is frozen and
reported; the others continue undisturbed. ``K = 1`` runs the same program without ``vmap``; with shared
batches the first layer of all members is one matmul (:func:`bnjax.train.make_shared_batch_ensemble_step`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._typing import FieldError, Layer
from bnjax.nn._mlp import MLPSpec
from bnjax.train import _checkpoint
from bnjax.train._config import MEMBER_FIELDS, MODEL_OPTIONS, Member, TrainConfig, cast_compute
from bnjax.train._model import Model, as_model, stats_layout
from bnjax.train._precise_bn import _average_stats, check_precise_options
from bnjax.train._sharded import (
    Layout,
    Parallel,
    make_layout,
    make_sharded_epoch_fn,
    make_sharded_eval_fn,
    pad_members,
    to_devices,
    to_host,
)
from bnjax.train._step import (
    TrainState,
    epoch_batches,
    evaluate,
    init_train_state,
    make_shared_batch_ensemble_step,
    make_train_step,
    shared_shuffle_key,
)

SPLITS = ("train", "val", "test")
_READERS = {"weight_scale": "bnjax.Dense", "dropout": "bnjax.Dropout", "bn_momentum": "bnjax.BatchNorm"}


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
class EnsembleResult:
    """Outcome of :func:`train_ensemble` for ``K`` members over ``E`` epochs.

    Attributes:
      members: per member, its settings as plain values (:meth:`Member.to_dict`: ``"seed"``,
        ``"learning_rate"`` and the options it sets; an MLP's members set ``"weight_scale"``, ``"dropout"``
        and ``"bn_momentum"`` too).
      history: metric -> ``(K, E + 1)`` float64 array; column 0 is before training. Metrics ``train_acc``,
        ``val_acc``, ``test_acc``, ``train_loss``, ``val_loss``, ``test_loss`` (eval mode; "train" is the fixed
        subset of ``cfg.eval_train_samples`` examples; losses are mean cross-entropy without the L2 term), plus
        the same with a ``"_precise"`` suffix when ``cfg.precise_bn_batches > 0``.
      loss_history: ``(K, E * steps_per_epoch)`` float32 train-mode loss of every step (what was minimised,
        L2 term included); NaN after a member diverged.
      diverged_step: ``(K,)`` int, the 0-based global step at which the member diverged, or -1.
      params, batch_stats: final values, stacked with a leading ``K`` axis (NumPy).
      epoch_times: wall-clock seconds of each epoch's training (evaluation excluded; epochs restored from a
        checkpoint keep their recorded times).
      steps_per_epoch: optimizer steps per epoch.
      compile_seconds: time to compile the epoch program in this process.
      spec: the :class:`bnjax.MLPSpec` trained (sizes filled in from the data), or None for a Layer model.
      cfg: the training configuration.
      model: what was trained: the spec, or the :class:`bnjax.Layer`.
    """

    members: list[dict[str, Any]]
    history: dict[str, np.ndarray]
    loss_history: np.ndarray
    diverged_step: np.ndarray
    params: Any
    batch_stats: Any
    epoch_times: list[float]
    steps_per_epoch: int
    compile_seconds: float = 0.0
    spec: MLPSpec | None = field(default=None, repr=False)
    cfg: TrainConfig | None = field(default=None, repr=False)
    model: Layer | MLPSpec | None = field(default=None, repr=False)

    @property
    def num_members(self) -> int:
        return len(self.members)

    def final(self, metric: str) -> np.ndarray:
        """``(K,)`` values of ``metric`` after the last epoch."""
        return self.history[metric][:, -1]

    def member(self, k: int) -> dict[str, Any]:
        """Member ``k``'s settings, final metrics and divergence step as plain Python values."""
        out = dict(self.members[k])
        out.update({m: _json_float(v[k, -1]) for m, v in self.history.items()})
        out["diverged_step"] = int(self.diverged_step[k])
        return out

    def to_json(self) -> dict[str, Any]:
        """A ``json.dumps``-ready dict (no parameters; NaN/inf become None)."""
        return {
            "members": self.members,
            "history": {m: [[_json_float(v) for v in row] for row in a] for m, a in self.history.items()},
            "loss_history": [[_json_float(v) for v in row] for row in self.loss_history],
            "diverged_step": [int(d) for d in self.diverged_step],
            "epoch_times": [float(t) for t in self.epoch_times],
            "steps_per_epoch": self.steps_per_epoch,
            "compile_seconds": self.compile_seconds,
            "spec": None if self.spec is None else dataclasses.asdict(self.spec),
            "cfg": None if self.cfg is None else dataclasses.asdict(self.cfg),
        }


def _json_float(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _model_of(model: Any, fn: str) -> Model:
    if isinstance(model, MLPSpec) and (model.in_features is None or model.num_classes is None):
        raise ValueError(f"{fn}: the MLPSpec has in_features={model.in_features!r}, num_classes="
                         f"{model.num_classes!r}; set both (train_ensemble fills them from the data).")
    return as_model(model, fn)


def resolve_members(
    model: Layer | MLPSpec, cfg: TrainConfig, members: Mapping[str, Sequence[Any]] | Sequence[Member] | None
) -> list[Member]:
    """The validated :class:`Member` list of ``members``, with defaults filled in.

    ``members`` is a dict of equal-length lists over ``"seed"``, ``"learning_rate"``, ``"weight_scale"``,
    ``"dropout"``, ``"bn_momentum"`` (one entry per member), a sequence of :class:`Member`, or None (one
    member). Missing settings take ``cfg.seed`` and ``cfg.learning_rate``, and for an :class:`bnjax.MLPSpec`
    the spec's ``weight_scale``, ``dropout`` and ``bn_momentum`` (a Layer keeps its own values). A setting
    that members give explicitly must be an option the model takes (ValueError otherwise: a sweep that the
    model ignores would train identical members).
    """
    fn = "train_ensemble"
    m = _model_of(model, fn)
    defaults: dict[str, Any] = {"seed": cfg.seed, "learning_rate": cfg.learning_rate}
    if m.spec is not None:
        defaults |= {k: getattr(m.spec, k) for k in MODEL_OPTIONS}
    if members is None:
        return [Member(**defaults)]
    if isinstance(members, Mapping):
        unknown = sorted(set(members) - set(MEMBER_FIELDS))
        if unknown:
            raise ValueError(f"{fn}: members has unknown keys {unknown}; valid keys are {MEMBER_FIELDS}.")
        lengths = {k: len(v) for k, v in members.items()}
        if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"{fn}: members must hold non-empty lists of one common length, got lengths {lengths}.")
        given = list(members)
        rows = [{k: members[k][i] for k in given} for i in range(next(iter(lengths.values())))]
    elif isinstance(members, Sequence) and members and all(isinstance(x, Member) for x in members):
        given = sorted({k for x in members for k, v in x.to_dict().items() if k in MODEL_OPTIONS})
        rows = [{k: v for k, v in x.to_dict().items()} for x in members]
    else:
        raise TypeError(f"{fn}: members must be a dict of equal-length lists over {MEMBER_FIELDS} or a non-empty "
                        f"list of bnjax.train.Member, got {type(members).__name__}.")
    out = []
    for k, row in enumerate(rows):
        try:
            out.append(Member(**(defaults | row)))
        except FieldError as e:
            raise ValueError(f"{fn}: members[{e.field!r}][{k}]={e.value!r} {e.expected}") from None
    for name in given:
        where = MODEL_OPTIONS.get(name)
        if where is not None and not m.takes(name, where):
            raise ValueError(
                f"{fn}: members set {name!r}, but the model's {where} takes no {name!r} option, so every member "
                f"would train alike; drop it from the members, or give the model a layer that reads it "
                f"({_READERS[name]})."
            )
    return out


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _member(m: Member | Mapping[str, Any]) -> Member:
    return m if isinstance(m, Member) else Member(**m)


def init_ensemble(model: Layer | MLPSpec, cfg: TrainConfig, members: Sequence[Member | Mapping[str, Any]]
                  ) -> TrainState:
    """The stacked initial :class:`TrainState` of ``members`` (each built by :func:`init_train_state`)."""
    m = as_model(model, "init_ensemble")
    return _stack([init_train_state(m, cfg, **_member(x).to_dict()) for x in members])


def _squeeze(tree: Any) -> Any:
    return jax.tree.map(lambda a: a[0], tree)


def _expand(tree: Any) -> Any:
    return jax.tree.map(lambda a: a[None], tree)


def make_epoch_fn(
    model: Layer | MLPSpec,
    cfg: TrainConfig,
    *,
    num_members: int,
    num_train: int,
    shared_batches: bool = False,
    use_dropout: bool | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """One epoch of ``K`` members as a pure function ``(states, x, y, shuffle_key) -> (states, losses)``.

    ``x (N, ...)``, ``y (N,)`` are the whole training set (on device); each step gathers the members'
    mini-batches from it. With ``shared_batches`` every member sees the same order, drawn from
    ``shuffle_key`` (raw key data), and the step is :func:`make_shared_batch_ensemble_step` (the first layer
    of all members as one matmul where it is a dense layer); otherwise each member shuffles with its own key
    and the step is ``jax.vmap`` of :func:`make_train_step`. ``K = 1`` runs :func:`make_train_step` without
    vmap. ``losses`` is ``(K, steps)``. Jit it with ``donate_argnums=0``.
    """
    m = as_model(model, "make_epoch_fn")
    steps = num_train // cfg.batch_size
    bs = cfg.batch_size
    single = num_members == 1
    # One member runs without vmap (a vmap of one is measurably slower); the leading axis is removed outside
    # the loop so the loop carry holds plain arrays.
    if single:
        batched_step = make_train_step(m, cfg, steps, use_dropout=use_dropout)
    elif shared_batches:
        batched_step = make_shared_batch_ensemble_step(m, cfg, steps, use_dropout=use_dropout)
    else:
        batched_step = jax.vmap(make_train_step(m, cfg, steps, use_dropout=use_dropout))

    def epoch(states: TrainState, x: jax.Array, y: jax.Array, shuffle_key: jax.Array):
        st = _squeeze(states) if single else states
        e = (st.step if single else st.step[0]) // steps
        if shared_batches:
            idx = epoch_batches(shuffle_key, e, num_train, steps, bs)  # (steps, bs)
        elif single:
            idx = epoch_batches(st.key, e, num_train, steps, bs)
        else:
            per_member = jax.vmap(lambda k: epoch_batches(k, e, num_train, steps, bs))(st.key)
            idx = jnp.swapaxes(per_member, 0, 1)  # (steps, K, bs)

        def body(carry, idx_t):
            carry, metrics = batched_step(carry, (x[idx_t], y[idx_t]))
            return carry, metrics["loss"]

        st, losses = jax.lax.scan(body, st, idx)
        return (_expand(st), losses[None]) if single else (st, losses.T)

    return epoch


def make_eval_fn(
    model: Layer | MLPSpec, cfg: TrainConfig, *, num_members: int, precise_batches: int = 0
) -> Callable[..., dict[str, jax.Array]]:
    """``(states, sets, precise_x) -> {metric: (K,)}``: eval-mode accuracy and loss on each ``(name, x, y)``
    of ``sets``; with ``precise_batches`` also after :func:`recompute_batch_stats`-style statistics from
    ``precise_x``."""
    m = as_model(model, "make_eval_fn")

    def one(params, batch_stats, sets, precise_x):
        out = {}
        variants = [("", batch_stats)]
        if precise_batches:
            xb = precise_x.reshape(precise_batches, cfg.batch_size, *precise_x.shape[1:])
            cparams, cxb = cast_compute(cfg.compute_dtype, params, xb)
            variants.append(("_precise", _average_stats(m, cparams, batch_stats, cxb, unbiased=False, rate=0.0,
                                                        key=None)))
        for suffix, stats in variants:
            for name, (x, y) in sets.items():
                r = evaluate(m, params, stats, x, y, batch_size=cfg.eval_batch_size, compute_dtype=cfg.compute_dtype)
                out[f"{name}_acc{suffix}"] = r["acc"]
                out[f"{name}_loss{suffix}"] = r["loss"]
        return out

    if num_members == 1:
        return lambda states, sets, precise_x: _expand(
            one(_squeeze(states.params), _squeeze(states.batch_stats), sets, precise_x)
        )
    batched = jax.vmap(one, in_axes=(0, 0, None, None))
    return lambda states, sets, precise_x: batched(states.params, states.batch_stats, sets, precise_x)


def _program_model(m: Model) -> Model:
    """``m`` with the spec fields that only give traced per-member defaults reset, for program caching."""
    if m.spec is None:
        return m
    return as_model(m.spec.replace(weight_scale=1.0, dropout=0.0, bn_momentum=0.0), "train_ensemble")


def _program_cfg(cfg: TrainConfig, *, eval_fields: bool = False) -> TrainConfig:
    """``cfg`` with the fields the compiled program does not depend on reset, for program caching."""
    common = {"learning_rate": 1.0, "seed": 0}
    if eval_fields:  # the evaluation program reads only these
        return TrainConfig(batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                           precise_bn_batches=cfg.precise_bn_batches, compute_dtype=cfg.compute_dtype)
    epochs = cfg.epochs if cfg.schedule == "cosine" else 1  # only the cosine schedule reads the run length
    return cfg.replace(eval_train_samples=1, eval_batch_size=1, precise_bn_batches=0, epochs=epochs, **common)


@functools.lru_cache(maxsize=16)
def _jitted_eval(model: Model, cfg: TrainConfig, num_members: int) -> Callable[..., Any]:
    return jax.jit(make_eval_fn(model, cfg, num_members=num_members, precise_batches=cfg.precise_bn_batches))


def _state_avals(model: Model, cfg: TrainConfig, options: tuple[str, ...], num_members: int) -> TrainState:
    """Shapes and dtypes of the stacked state of ``num_members`` members that set ``options`` (what a compiled
    epoch is lowered for)."""
    template = Member(seed=0, learning_rate=1.0, **{k: 0.5 for k in options})
    return jax.eval_shape(lambda: init_ensemble(model, cfg, [template] * num_members))


@functools.lru_cache(maxsize=16)
def _compiled_epoch(
    model: Model, cfg: TrainConfig, num_members: int, num_train: int, shared: bool, use_dropout: bool,
    options: tuple[str, ...], x_aval: jax.ShapeDtypeStruct,
) -> Any:
    """The compiled epoch program, cached: a sweep that repeats a configuration compiles it once.

    ``options``: the model options the members set (they shape the traced ``hyper`` of the state).
    """
    fn = jax.jit(
        make_epoch_fn(model, cfg, num_members=num_members, num_train=num_train, shared_batches=shared,
                      use_dropout=use_dropout),
        donate_argnums=0,
    )
    states = _state_avals(model, cfg, options, num_members)
    y_aval = jax.ShapeDtypeStruct((x_aval.shape[0],), jnp.int32)
    return fn.lower(states, x_aval, y_aval, jax.eval_shape(lambda: shared_shuffle_key(0))).compile()


@functools.lru_cache(maxsize=16)
def _sharded_programs(
    model: Model, cfg: TrainConfig, eval_cfg: TrainConfig, layout: Layout, num_train: int, shared: bool,
    use_dropout: bool, options: tuple[str, ...], x_aval: jax.ShapeDtypeStruct,
) -> tuple[Any, Callable[..., Any]]:
    """The compiled epoch and the jitted evaluation of ``layout``, cached like :func:`_compiled_epoch`."""
    epoch = jax.jit(make_sharded_epoch_fn(model, cfg, layout, num_train=num_train, shared_batches=shared,
                                          use_dropout=use_dropout), donate_argnums=0)
    local = make_eval_fn(model, eval_cfg, num_members=layout.local_members,
                         precise_batches=eval_cfg.precise_bn_batches)
    members, replicated = layout.member_sharding(), layout.sharding()
    states = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=members),
                          _state_avals(model, cfg, options, layout.padded_members))
    x = jax.ShapeDtypeStruct(x_aval.shape, x_aval.dtype, sharding=replicated)
    y = jax.ShapeDtypeStruct((x_aval.shape[0],), jnp.int32, sharding=replicated)
    key = jax.eval_shape(lambda: shared_shuffle_key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
    return epoch.lower(states, x, y, key).compile(), jax.jit(make_sharded_eval_fn(local, layout))


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


def _as_split(data: Any, split: str, m: Model) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(getattr(data, f"x_{split}"), np.float32)
    y = np.asarray(getattr(data, f"y_{split}"))
    if m.spec is not None:  # an MLP reads flat vectors; an empty split stays (0, D)
        d = m.spec.in_features
        x = x.reshape(len(x), -1) if len(x) else x.reshape(0, d)
        if x.shape[1] != d:
            raise ValueError(
                f"train_ensemble: data.x_{split} has {x.shape[1]} features per example (shape "
                f"{np.shape(getattr(data, f'x_{split}'))}) but spec.in_features={d}; set "
                f"MLPSpec(in_features={x.shape[1]}) (or None: from the data)."
            )
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"train_ensemble: data.y_{split} must be {len(x)} integer labels, got shape {y.shape} "
                         f"dtype {y.dtype}.")
    return x, y.astype(np.int32)


def _check_output(m: Model, x: np.ndarray, num_classes: int, batch_size: int) -> None:
    """The model maps a training batch to ``(batch, num_classes)`` logits (checked on shapes only)."""
    fn = "train_ensemble"
    params, stats = jax.eval_shape(m.layer.init, jax.random.key(0))
    xb = jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), jnp.float32)
    out = jax.eval_shape(lambda p, s, xb: m.layer.apply(p, s, xb, False)[0], params, stats, xb)
    if tuple(out.shape) != (batch_size, num_classes):
        raise ValueError(f"{fn}: the model maps a batch of {batch_size} examples of shape {tuple(x.shape[1:])} to "
                         f"an output of shape {tuple(out.shape)}; it must give ({batch_size}, {num_classes}) logits "
                         f"for the data's {num_classes} classes.")


def _loop_inputs(m: Model, cfg: TrainConfig, data: Any) -> dict[str, Any]:
    fn = "train_ensemble"
    splits = {s: _as_split(data, s, m) for s in SPLITS}
    n_train = len(splits["train"][0])
    if n_train < cfg.batch_size:
        raise ValueError(f"{fn}: the training set has {n_train} examples, fewer than cfg.batch_size="
                         f"{cfg.batch_size}; lower the batch size.")
    num_classes = int(data.num_classes)
    if m.spec is not None and num_classes != m.spec.num_classes:
        raise ValueError(f"{fn}: data has {num_classes} classes but spec.num_classes={m.spec.num_classes}.")
    for s, (_, y) in splits.items():
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{fn}: data.y_{s} has labels outside [0, {num_classes}).")
    if m.spec is None:
        _check_output(m, splits["train"][0], num_classes, cfg.batch_size)
    # Fixed subsets, the same for every member and every epoch (seeded by cfg.seed).
    rng = np.random.default_rng([cfg.seed, 7])
    x_tr, y_tr = splits["train"]
    sub = np.sort(rng.permutation(n_train)[: min(cfg.eval_train_samples, n_train)])
    sets = {"train": (x_tr[sub], y_tr[sub]), "val": splits["val"], "test": splits["test"]}
    precise_x = np.zeros((0, *x_tr.shape[1:]), np.float32)
    if cfg.precise_bn_batches:
        need = cfg.precise_bn_batches * cfg.batch_size
        if need > n_train:
            raise ValueError(f"{fn}: cfg.precise_bn_batches={cfg.precise_bn_batches} batches of {cfg.batch_size} "
                             f"need {need} training examples, there are {n_train}; lower precise_bn_batches.")
        precise_x = x_tr[np.random.default_rng([cfg.seed, 11]).permutation(n_train)[:need]]
    return {"x": x_tr, "y": y_tr, "sets": sets, "precise_x": precise_x}


def _check_layout(m: Model, cfg: TrainConfig, layout: Layout) -> None:
    """What the model needs of a layout: ghost batches must be whole chunks of each device's rows."""
    if m.spec is not None and m.spec.norm == "ghost":
        rows, v = cfg.batch_size // layout.data, m.spec.virtual_batch_size
        if rows % v:
            raise ValueError(f"train_ensemble: model.virtual_batch_size = {v} does not divide the {rows} rows each "
                             f"device takes of a batch (train.batch_size = {cfg.batch_size} over parallel.data = "
                             f"{layout.data}); ghost batches are chunks of a device's rows: use a divisor of {rows}.")


def check_inputs(model: Any, cfg: TrainConfig, data: DatasetLike, members: Any = None,
                 parallel: Parallel | None = None) -> None:
    """Raises the ValueError/TypeError :func:`train_ensemble` would raise for these arguments, without training
    (a runner calls it before writing anything)."""
    m = as_model(model, "train_ensemble")
    resolved = resolve_members(m, cfg, members)
    _loop_inputs(m, cfg, data)
    if parallel is not None:
        _check_layout(m, cfg, make_layout(parallel, len(resolved), cfg.batch_size))


@dataclass(frozen=True)
class _LayerIdentity:
    """What a checkpoint fingerprint records of a Layer model: its name and its pytrees' shapes and dtypes."""

    name: str
    pytrees: str


def _identity(m: Model) -> Any:
    if m.spec is not None:
        return m.spec
    shapes = jax.eval_shape(m.layer.init, jax.random.key(0))
    text = json.dumps(jax.tree.map(lambda a: [list(a.shape), str(a.dtype)], shapes), sort_keys=True)
    return _LayerIdentity(m.layer.name, text)


def train_ensemble(
    model: Layer | MLPSpec,
    cfg: TrainConfig,
    data: DatasetLike,
    members: Mapping[str, Sequence[Any]] | Sequence[Member] | None = None,
    *,
    shared_batches: bool = False,
    callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    parallel: Parallel | None = None,
) -> EnsembleResult:
    """Trains ``K`` models at once and evaluates them before training and after every epoch.

    Every epoch is one jitted call (state buffers donated): a ``lax.scan`` over ``N_train // batch_size``
    mini-batches drawn by a permutation computed on device; then one jitted evaluation in eval mode on a
    fixed training subset, the validation and the test set.

    Args:
      model: a :class:`bnjax.Layer` (any ``init``/``apply`` pair mapping ``(B, *example_shape)`` inputs to
        ``(B, num_classes)`` logits, e.g. ``bnjax.serial(...)`` or what a config's ``model.factory`` returns)
        or an :class:`bnjax.MLPSpec` (built by :func:`bnjax.mlp`; its ``in_features``/``num_classes`` may be
        None, then they come from the data).
      cfg: the training configuration.
      data: an object with ``x_train, y_train, x_val, y_val, x_test, y_test`` (NumPy; x as float32 -- flattened
        to ``(N, -1)`` for an MLP, kept ``(N, *example_shape)`` for a Layer --, y integer labels) and
        ``num_classes`` (``bnjax.data.Dataset``); ``name`` is used in the checkpoint fingerprint when present.
      members: a dict of equal-length lists over ``"seed"``, ``"learning_rate"``, ``"weight_scale"``,
        ``"dropout"``, ``"bn_momentum"``, or a list of :class:`Member` (see :func:`resolve_members` for the
        defaults). ``None``: one member with ``cfg.seed``. Member ``k``'s init and randomness depend only on
        its own values, so it trains exactly as it would alone (up to float reassociation under vmap).
      shared_batches: every member sees the same mini-batch order (drawn from ``cfg.seed``) instead of its
        own (drawn from its seed); dropout masks stay per member. Faster when the model starts with a dense
        layer: the first layer of all members is then one matmul (on the 2-core CPU about 0.65-0.7x the time
        of K single-model steps, against 0.85-1.1x with an order per member). Natural for hyperparameter
        sweeps (paired comparisons); keep the default when members are replicates whose data order should
        vary too.
      callback: ``callback(epoch, metrics)`` after the evaluation before training (epoch 0) and after each
        epoch; ``metrics`` maps every history metric to a ``(K,)`` NumPy array, plus ``"loss"`` (mean
        train-mode loss of the epoch) from epoch 1. A resumed run calls it for the epochs it trains.
      checkpoint_dir: if set, the full state is saved there at every epoch boundary (atomically), after the
        callback has seen the epoch, so a run killed in between repeats that epoch and reports it again.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (its fingerprint must match
        this call, otherwise ValueError). With ``resume=False`` an existing checkpoint is overwritten.
      parallel: a :class:`Parallel` layout: the members sharded over ``parallel.members`` devices, each
        member's batch over ``parallel.data`` (see :mod:`bnjax.train._sharded`). None (default) or a layout of
        one device: the single-device program. The results do not depend on it beyond float summation order
        (and, with ``data > 1`` and dropout, the per-device dropout keys); a checkpoint written with one
        layout resumes with another. Over several processes (after ``jax.distributed.initialize()``) every
        process calls this with the same arguments and data, ``callback`` runs on every process, only
        process 0 writes the checkpoint and every process reads process 0's (broadcast).

    Returns:
      An :class:`EnsembleResult`.
    """
    fn = "train_ensemble"
    if isinstance(model, MLPSpec):
        x_example = np.shape(getattr(data, "x_train"))[1:]
        model = model.replace(in_features=math.prod(x_example) if model.in_features is None else model.in_features,
                              num_classes=int(data.num_classes) if model.num_classes is None else model.num_classes)
    m = as_model(model, fn)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"{fn}: cfg must be a TrainConfig, got {type(cfg).__name__}.")
    if resume and checkpoint_dir is None:
        raise ValueError(f"{fn}: resume=True needs checkpoint_dir, the directory holding the checkpoint.")
    resolved = resolve_members(m, cfg, members)
    k_members = len(resolved)
    inputs = _loop_inputs(m, cfg, data)
    n_train = len(inputs["x"])
    steps = n_train // cfg.batch_size
    use_dropout = any(x.dropout is not None and x.dropout > 0 for x in resolved)
    options = tuple(sorted(k for k in MODEL_OPTIONS if getattr(resolved[0], k) is not None))
    member_dicts = [x.to_dict() for x in resolved]

    layout = make_layout(parallel, k_members, cfg.batch_size) if parallel is not None else None
    if layout is not None and layout.single_device and jax.process_count() == 1:
        layout = None
    if layout is not None:
        _check_layout(m, cfg, layout)
    writer = jax.process_index() == 0

    states = init_ensemble(m, cfg, resolved)
    if cfg.precise_bn_batches and stats_layout(states.batch_stats):
        check_precise_options(m, fn)
    history = {}
    loss_history = np.zeros((k_members, 0), np.float32)
    epoch_times: list[float] = []
    start_epoch = 0
    fingerprint = None
    if checkpoint_dir is not None:
        fingerprint = _checkpoint.make_fingerprint(_identity(m), cfg, member_dicts, data,
                                                   shared_batches=shared_batches)
        payload = _checkpoint.load_checkpoint(checkpoint_dir, fingerprint) if resume and writer else None
        if jax.process_count() > 1 and resume:
            payload = _broadcast_payload(payload)
        if payload is not None:
            states = jax.device_put(_checkpoint.restore_tree(jax.device_get(states), payload["state"]))
            # np.array copies: restored buffers are read-only and the history is filled in place.
            history = {k: np.array(v, np.float64) for k, v in payload["history"].items()}
            loss_history = np.array(payload["loss_history"], np.float32).reshape(k_members, -1)
            epoch_times = [float(t) for t in np.asarray(payload["epoch_times"]).reshape(-1)]
            start_epoch = int(payload["epoch"])

    program = _program_model(m)
    t0 = time.perf_counter()
    compiled = None
    if layout is None:
        x_dev, y_dev = jnp.asarray(inputs["x"]), jnp.asarray(inputs["y"])
        sets = {name: (jnp.asarray(x), jnp.asarray(y)) for name, (x, y) in inputs["sets"].items()}
        precise_x = jnp.asarray(inputs["precise_x"])
        shuffle_key = shared_shuffle_key(cfg.seed)
        eval_fn = _jitted_eval(program, _program_cfg(cfg, eval_fields=True), k_members)
        if start_epoch < cfg.epochs:
            compiled = _compiled_epoch(
                program, _program_cfg(cfg), k_members, n_train, shared_batches, use_dropout, options,
                jax.ShapeDtypeStruct(x_dev.shape, x_dev.dtype),
            )
    else:  # every array a global one: the state sharded over "members", the data replicated
        replicated = layout.sharding()
        states = to_devices(pad_members(jax.device_get(states), layout.padded_members), layout.member_sharding())
        x_dev, y_dev, sets, precise_x = to_devices(
            (inputs["x"], inputs["y"], inputs["sets"], inputs["precise_x"]), replicated)
        shuffle_key = to_devices(jax.device_get(shared_shuffle_key(cfg.seed)), replicated)
        compiled, eval_fn = _sharded_programs(program, _program_cfg(cfg), _program_cfg(cfg, eval_fields=True),
                                              layout, n_train, shared_batches, use_dropout, options,
                                              jax.ShapeDtypeStruct(x_dev.shape, x_dev.dtype))
    compile_seconds = time.perf_counter() - t0

    def host_states() -> TrainState:
        """The state of the ``K`` members as NumPy (gathered from every device; every process calls it)."""
        if layout is None:
            return jax.device_get(states)
        return jax.tree.map(lambda a: a[:k_members], to_host(states, layout))

    def record(epoch: int, metrics: dict[str, jax.Array]) -> dict[str, np.ndarray]:
        values = {k: np.asarray(v, np.float64).reshape(-1)[:k_members] for k, v in metrics.items()}
        for k, v in values.items():
            if k not in history:
                history[k] = np.full((k_members, cfg.epochs + 1), np.nan)
            history[k][:, epoch] = v
        return values

    if start_epoch == 0:
        values = record(0, eval_fn(states, sets, precise_x))
        if callback is not None:
            callback(0, values)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        states, losses = compiled(states, x_dev, y_dev, shuffle_key)
        losses = np.asarray(losses)[:k_members]  # blocks until the epoch has run
        epoch_times.append(time.perf_counter() - t0)
        loss_history = np.concatenate([loss_history, losses], axis=1)
        values = record(epoch, eval_fn(states, sets, precise_x))
        if checkpoint_dir is not None:  # before the callback: an interrupt there keeps this epoch's checkpoint
            state_now = host_states()  # a collective over the processes: all take part, process 0 writes
        if checkpoint_dir is not None and writer:
            _checkpoint.save_checkpoint(checkpoint_dir, fingerprint, {
                "epoch": epoch,
                "state": _checkpoint.to_state_dict(state_now),
                "history": history,
                "loss_history": loss_history,
                "epoch_times": np.asarray(epoch_times, np.float64),
            })
        if callback is not None:
            callback(epoch, values | {"loss": losses.mean(axis=1)})

    final = host_states()
    return EnsembleResult(
        members=member_dicts,
        history=history,
        loss_history=loss_history,
        diverged_step=np.asarray(final.diverged_step, np.int64),
        params=final.params,
        batch_stats=final.batch_stats,
        epoch_times=epoch_times,
        steps_per_epoch=steps,
        compile_seconds=compile_seconds,
        spec=m.spec,
        cfg=cfg,
        model=model,
    )
