"""Training K models ("members") at once: one compiled program per epoch, members under ``jax.vmap``.

Each member has its own seed (init, dropout and -- unless batches are shared -- shuffling), weight scale,
drop rate, learning rate and BN momentum. A member whose loss or parameters become non-finite is frozen and
reported; the others continue undisturbed. ``K = 1`` runs the same program without ``vmap``; with shared
batches the first layer of all members is one matmul (:func:`bnjax.train.make_shared_batch_ensemble_step`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from bnjax.nn._mlp import MLPSpec
from bnjax.train import _checkpoint
from bnjax.train._config import TrainConfig
from bnjax.train._precise_bn import _average_stats
from bnjax.train._step import (
    TrainState,
    epoch_batches,
    evaluate,
    init_train_state,
    make_shared_batch_ensemble_step,
    make_train_step,
    shared_shuffle_key,
)

MEMBER_KEYS = ("seed", "weight_scale", "dropout", "learning_rate", "bn_momentum")
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
class EnsembleResult:
    """Outcome of :func:`train_ensemble` for ``K`` members over ``E`` epochs.

    Attributes:
      members: per member, its resolved hyperparameters ``{"seed", "weight_scale", "dropout",
        "learning_rate", "bn_momentum"}``.
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

    @property
    def num_members(self) -> int:
        return len(self.members)

    def final(self, metric: str) -> np.ndarray:
        """``(K,)`` values of ``metric`` after the last epoch."""
        return self.history[metric][:, -1]

    def member(self, k: int) -> dict[str, Any]:
        """Member ``k``'s hyperparameters, final metrics and divergence step as plain Python values."""
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


def resolve_members(spec: MLPSpec, cfg: TrainConfig, members: dict[str, list[Any]] | None) -> list[dict[str, Any]]:
    """Per-member hyperparameters from ``members`` (a dict of equal-length lists), defaults from spec/cfg."""
    fn = "train_ensemble"
    defaults = {
        "seed": cfg.seed, "weight_scale": spec.weight_scale, "dropout": spec.dropout,
        "learning_rate": cfg.learning_rate, "bn_momentum": spec.bn_momentum,
    }
    if members is None:
        return [defaults]
    if not isinstance(members, dict):
        raise TypeError(f"{fn}: members must be a dict of equal-length lists over {MEMBER_KEYS}, "
                        f"got {type(members).__name__}.")
    unknown = sorted(set(members) - set(MEMBER_KEYS))
    if unknown:
        raise ValueError(f"{fn}: members has unknown keys {unknown}; valid keys are {MEMBER_KEYS}.")
    lengths = {k: len(v) for k, v in members.items()}
    if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"{fn}: members must hold non-empty lists of one common length, got lengths {lengths}.")
    k_members = next(iter(lengths.values()))
    out = []
    for k in range(k_members):
        m = dict(defaults)
        for name, values in members.items():
            v = values[k]
            if name == "seed":
                if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"{fn}: members['seed'][{k}]={v!r} must be an int >= 0.")
                m[name] = int(v)
            else:
                if not isinstance(v, (int, float, np.number)) or isinstance(v, bool) or not math.isfinite(v):
                    raise ValueError(f"{fn}: members[{name!r}][{k}]={v!r} must be a finite number.")
                m[name] = float(v)
        out.append(m)
    ranges = {"dropout": (0.0, 1.0, "[0, 1)"), "bn_momentum": (0.0, 1.0, "[0, 1]")}
    for k, m in enumerate(out):
        if not 0.0 <= m["dropout"] < 1.0:
            raise ValueError(f"{fn}: members['dropout'][{k}]={m['dropout']!r} must be in {ranges['dropout'][2]}.")
        if not 0.0 <= m["bn_momentum"] <= 1.0:
            raise ValueError(f"{fn}: members['bn_momentum'][{k}]={m['bn_momentum']!r} must be in [0, 1].")
        for name in ("weight_scale", "learning_rate"):
            if not m[name] > 0:
                raise ValueError(f"{fn}: members[{name!r}][{k}]={m[name]!r} must be positive.")
    return out


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def init_ensemble(spec: MLPSpec, cfg: TrainConfig, members: list[dict[str, Any]]) -> TrainState:
    """The stacked initial :class:`TrainState` of resolved ``members`` (each built by :func:`init_train_state`)."""
    return _stack([init_train_state(spec, cfg, **m) for m in members])


def _squeeze(tree: Any) -> Any:
    return jax.tree.map(lambda a: a[0], tree)


def _expand(tree: Any) -> Any:
    return jax.tree.map(lambda a: a[None], tree)


def make_epoch_fn(
    spec: MLPSpec,
    cfg: TrainConfig,
    *,
    num_members: int,
    num_train: int,
    shared_batches: bool = False,
    use_dropout: bool | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """One epoch of ``K`` members as a pure function ``(states, x, y, shuffle_key) -> (states, losses)``.

    ``x (N, D)``, ``y (N,)`` are the whole training set (on device); each step gathers the members'
    mini-batches from it. With ``shared_batches`` every member sees the same order, drawn from
    ``shuffle_key`` (raw key data), and the step is :func:`make_shared_batch_ensemble_step` (the first layer
    of all members as one matmul); otherwise each member shuffles with its own key and the step is
    ``jax.vmap`` of :func:`make_train_step`. ``K = 1`` runs :func:`make_train_step` without vmap. ``losses``
    is ``(K, steps)``. Jit it with ``donate_argnums=0``.
    """
    steps = num_train // cfg.batch_size
    bs = cfg.batch_size
    single = num_members == 1
    # One member runs without vmap (a vmap of one is measurably slower); the leading axis is removed outside
    # the loop so the loop carry holds plain arrays.
    if single:
        batched_step = make_train_step(spec, cfg, steps, use_dropout=use_dropout)
    elif shared_batches:
        batched_step = make_shared_batch_ensemble_step(spec, cfg, steps, use_dropout=use_dropout)
    else:
        batched_step = jax.vmap(make_train_step(spec, cfg, steps, use_dropout=use_dropout))

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
    spec: MLPSpec, cfg: TrainConfig, *, num_members: int, precise_batches: int = 0
) -> Callable[..., dict[str, jax.Array]]:
    """``(states, sets, precise_x) -> {metric: (K,)}``: eval-mode accuracy and loss on each ``(name, x, y)``
    of ``sets``; with ``precise_batches`` also after :func:`recompute_batch_stats`-style statistics from
    ``precise_x``."""

    def one(params, batch_stats, sets, precise_x):
        out = {}
        variants = [("", batch_stats)]
        if precise_batches:
            xb = precise_x.reshape(precise_batches, cfg.batch_size, -1)
            variants.append(("_precise", _average_stats(spec, params, batch_stats, xb, unbiased=False, rate=0.0, key=None)))
        for suffix, stats in variants:
            for name, (x, y) in sets.items():
                r = evaluate(spec, params, stats, x, y, batch_size=cfg.eval_batch_size)
                out[f"{name}_acc{suffix}"] = r["acc"]
                out[f"{name}_loss{suffix}"] = r["loss"]
        return out

    if num_members == 1:
        return lambda states, sets, precise_x: _expand(
            one(_squeeze(states.params), _squeeze(states.batch_stats), sets, precise_x)
        )
    batched = jax.vmap(one, in_axes=(0, 0, None, None))
    return lambda states, sets, precise_x: batched(states.params, states.batch_stats, sets, precise_x)


def _program_spec(spec: MLPSpec) -> MLPSpec:
    """``spec`` with the fields that only give traced per-member defaults reset, for program caching."""
    return spec.replace(weight_scale=1.0, dropout=0.0, bn_momentum=0.0)


def _program_cfg(cfg: TrainConfig, *, eval_fields: bool = False) -> TrainConfig:
    """``cfg`` with the fields the compiled program does not depend on reset, for program caching."""
    common = {"learning_rate": 1.0, "seed": 0}
    if eval_fields:  # the evaluation program reads only these
        return TrainConfig(batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                           precise_bn_batches=cfg.precise_bn_batches)
    epochs = cfg.epochs if cfg.schedule == "cosine" else 1  # only the cosine schedule reads the run length
    return cfg.replace(eval_train_samples=1, eval_batch_size=1, precise_bn_batches=0, epochs=epochs, **common)


@functools.lru_cache(maxsize=16)
def _jitted_eval(spec: MLPSpec, cfg: TrainConfig, num_members: int) -> Callable[..., Any]:
    return jax.jit(make_eval_fn(spec, cfg, num_members=num_members, precise_batches=cfg.precise_bn_batches))


@functools.lru_cache(maxsize=16)
def _compiled_epoch(
    spec: MLPSpec, cfg: TrainConfig, num_members: int, num_train: int, shared: bool, use_dropout: bool,
    x_aval: jax.ShapeDtypeStruct,
) -> Any:
    """The compiled epoch program, cached: a sweep that repeats a configuration compiles it once."""
    fn = jax.jit(
        make_epoch_fn(spec, cfg, num_members=num_members, num_train=num_train, shared_batches=shared,
                      use_dropout=use_dropout),
        donate_argnums=0,
    )
    members = [{"seed": 0, "weight_scale": 1.0, "dropout": 0.0, "learning_rate": 1.0, "bn_momentum": 0.0}]
    states = jax.eval_shape(lambda: init_ensemble(spec, cfg, members * num_members))
    y_aval = jax.ShapeDtypeStruct((x_aval.shape[0],), jnp.int32)
    return fn.lower(states, x_aval, y_aval, jax.eval_shape(lambda: shared_shuffle_key(0))).compile()


def _as_split(data: Any, split: str, in_features: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(getattr(data, f"x_{split}"), np.float32)
    y = np.asarray(getattr(data, f"y_{split}"))
    x = x.reshape(len(x), -1) if len(x) else x.reshape(0, in_features)  # an empty split stays (0, D)
    if x.shape[1] != in_features:
        raise ValueError(
            f"train_ensemble: data.x_{split} has {x.shape[1]} features per example (shape "
            f"{np.shape(getattr(data, f'x_{split}'))}) but spec.in_features={in_features}; set "
            f"MLPSpec(in_features={x.shape[1]})."
        )
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"train_ensemble: data.y_{split} must be {len(x)} integer labels, got shape {y.shape} "
                         f"dtype {y.dtype}.")
    return x, y.astype(np.int32)


def _loop_inputs(spec: MLPSpec, cfg: TrainConfig, data: Any) -> dict[str, Any]:
    fn = "train_ensemble"
    splits = {s: _as_split(data, s, spec.in_features) for s in SPLITS}
    n_train = len(splits["train"][0])
    if n_train < cfg.batch_size:
        raise ValueError(f"{fn}: the training set has {n_train} examples, fewer than cfg.batch_size="
                         f"{cfg.batch_size}; lower the batch size.")
    num_classes = int(data.num_classes)
    if num_classes != spec.num_classes:
        raise ValueError(f"{fn}: data has {num_classes} classes but spec.num_classes={spec.num_classes}.")
    for s, (_, y) in splits.items():
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{fn}: data.y_{s} has labels outside [0, {num_classes}).")
    # Fixed subsets, the same for every member and every epoch (seeded by cfg.seed).
    rng = np.random.default_rng([cfg.seed, 7])
    x_tr, y_tr = splits["train"]
    sub = np.sort(rng.permutation(n_train)[: min(cfg.eval_train_samples, n_train)])
    sets = {"train": (x_tr[sub], y_tr[sub]), "val": splits["val"], "test": splits["test"]}
    precise_x = np.zeros((0, spec.in_features), np.float32)
    if cfg.precise_bn_batches:
        need = cfg.precise_bn_batches * cfg.batch_size
        if need > n_train:
            raise ValueError(f"{fn}: cfg.precise_bn_batches={cfg.precise_bn_batches} batches of {cfg.batch_size} "
                             f"need {need} training examples, there are {n_train}; lower precise_bn_batches.")
        precise_x = x_tr[np.random.default_rng([cfg.seed, 11]).permutation(n_train)[:need]]
    return {"x": x_tr, "y": y_tr, "sets": sets, "precise_x": precise_x}


def check_inputs(spec: MLPSpec, cfg: TrainConfig, data: DatasetLike, members: dict[str, list[Any]] | None = None,
                 ) -> None:
    """Raises the ValueError/TypeError :func:`train_ensemble` would raise for these arguments, without training
    (a runner calls it before writing anything)."""
    resolve_members(spec, cfg, members)
    _loop_inputs(spec, cfg, data)


def train_ensemble(
    spec: MLPSpec,
    cfg: TrainConfig,
    data: DatasetLike,
    members: dict[str, list[Any]] | None = None,
    *,
    shared_batches: bool = False,
    callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
) -> EnsembleResult:
    """Trains ``K`` MLPs at once and evaluates them after every epoch.

    Every epoch is one jitted call (state buffers donated): a ``lax.scan`` over ``N_train // batch_size``
    mini-batches drawn by a permutation computed on device; then one jitted evaluation in eval mode on a
    fixed training subset, the validation and the test set.

    Args:
      spec: the model; ``spec.in_features`` must equal the flattened size of an example.
      cfg: the training configuration.
      data: an object with ``x_train, y_train, x_val, y_val, x_test, y_test`` (NumPy; x is flattened to
        ``(N, -1)`` float32, y integer labels) and ``num_classes`` (``bnjax.data.Dataset``); ``name`` is used
        in the checkpoint fingerprint when present.
      members: dict of equal-length lists over ``"seed"``, ``"weight_scale"``, ``"dropout"``,
        ``"learning_rate"``, ``"bn_momentum"``; missing keys take ``cfg.seed`` / the spec and cfg values.
        ``None``: one member with ``cfg.seed``. Member ``k``'s init and randomness depend only on its own
        values, so it trains exactly as it would alone (up to float reassociation under vmap).
      shared_batches: every member sees the same mini-batch order (drawn from ``cfg.seed``) instead of its
        own (drawn from its seed); dropout masks stay per member. Faster: the first layer of all members is
        then one matmul (on the 2-core CPU about 0.65-0.7x the time of K single-model steps, against
        0.85-1.1x with an order per member). Natural for hyperparameter sweeps (paired comparisons); keep the
        default when members are replicates whose data order should vary too.
      callback: ``callback(epoch, metrics)`` after each epoch (1-based), ``metrics`` maps every history
        metric plus ``"loss"`` (mean train-mode loss of the epoch) to a ``(K,)`` NumPy array.
      checkpoint_dir: if set, the full state is saved there at every epoch boundary (atomically).
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (its fingerprint must match
        this call, otherwise ValueError). With ``resume=False`` an existing checkpoint is overwritten.

    Returns:
      An :class:`EnsembleResult`.
    """
    fn = "train_ensemble"
    if not isinstance(spec, MLPSpec) or not isinstance(cfg, TrainConfig):
        raise TypeError(f"{fn}: spec must be an MLPSpec and cfg a TrainConfig, got {type(spec).__name__} and "
                        f"{type(cfg).__name__}.")
    if resume and checkpoint_dir is None:
        raise ValueError(f"{fn}: resume=True needs checkpoint_dir, the directory holding the checkpoint.")
    resolved = resolve_members(spec, cfg, members)
    k_members = len(resolved)
    inputs = _loop_inputs(spec, cfg, data)
    n_train = len(inputs["x"])
    steps = n_train // cfg.batch_size
    use_dropout = any(m["dropout"] > 0 for m in resolved)

    states = init_ensemble(spec, cfg, resolved)
    history = {}
    loss_history = np.zeros((k_members, 0), np.float32)
    epoch_times: list[float] = []
    start_epoch = 0
    fingerprint = None
    if checkpoint_dir is not None:
        fingerprint = _checkpoint.make_fingerprint(spec, cfg, resolved, data, shared_batches=shared_batches)
        payload = _checkpoint.load_checkpoint(checkpoint_dir, fingerprint) if resume else None
        if payload is not None:
            states = jax.device_put(_checkpoint.restore_tree(jax.device_get(states), payload["state"]))
            # np.array copies: restored buffers are read-only and the history is filled in place.
            history = {k: np.array(v, np.float64) for k, v in payload["history"].items()}
            loss_history = np.array(payload["loss_history"], np.float32).reshape(k_members, -1)
            epoch_times = [float(t) for t in np.asarray(payload["epoch_times"]).reshape(-1)]
            start_epoch = int(payload["epoch"])

    x_dev, y_dev = jnp.asarray(inputs["x"]), jnp.asarray(inputs["y"])
    sets = {name: (jnp.asarray(x), jnp.asarray(y)) for name, (x, y) in inputs["sets"].items()}
    precise_x = jnp.asarray(inputs["precise_x"])
    shuffle_key = shared_shuffle_key(cfg.seed)

    eval_fn = _jitted_eval(_program_spec(spec), _program_cfg(cfg, eval_fields=True), k_members)
    t0 = time.perf_counter()
    compiled = None
    if start_epoch < cfg.epochs:
        compiled = _compiled_epoch(
            _program_spec(spec), _program_cfg(cfg), k_members, n_train, shared_batches, use_dropout,
            jax.ShapeDtypeStruct(x_dev.shape, x_dev.dtype),
        )
    compile_seconds = time.perf_counter() - t0

    def record(epoch: int, metrics: dict[str, jax.Array]) -> dict[str, np.ndarray]:
        values = {k: np.asarray(v, np.float64).reshape(k_members) for k, v in metrics.items()}
        for k, v in values.items():
            if k not in history:
                history[k] = np.full((k_members, cfg.epochs + 1), np.nan)
            history[k][:, epoch] = v
        return values

    if start_epoch == 0:
        record(0, eval_fn(states, sets, precise_x))
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        states, losses = compiled(states, x_dev, y_dev, shuffle_key)
        losses = np.asarray(losses)  # blocks until the epoch has run
        epoch_times.append(time.perf_counter() - t0)
        loss_history = np.concatenate([loss_history, losses], axis=1)
        values = record(epoch, eval_fn(states, sets, precise_x))
        if checkpoint_dir is not None:
            _checkpoint.save_checkpoint(checkpoint_dir, fingerprint, {
                "epoch": epoch,
                "state": _checkpoint.to_state_dict(jax.device_get(states)),
                "history": history,
                "loss_history": loss_history,
                "epoch_times": np.asarray(epoch_times, np.float64),
            })
        if callback is not None:
            callback(epoch, values | {"loss": losses.mean(axis=1)})

    final = jax.device_get(states)
    return EnsembleResult(
        members=resolved,
        history=history,
        loss_history=loss_history,
        diverged_step=np.asarray(final.diverged_step, np.int64),
        params=final.params,
        batch_stats=final.batch_stats,
        epoch_times=epoch_times,
        steps_per_epoch=steps,
        compile_seconds=compile_seconds,
        spec=spec,
        cfg=cfg,
    )
