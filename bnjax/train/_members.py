"""An ensemble's members: their settings (:class:`Member`), the validated list a caller asks for, and their
training state, initialised one at a time or for the whole ensemble as one jitted, vmapped program (the same
values, since each member's init reads only its own seed and settings).

Randomness is counter based: a member's keys derive from its seed alone (``member_keys``), so a member trains
the same numbers alone, in any ensemble, in any chunk and on any device layout.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._typing import Array, FieldError, Layer, Params, State
from bnjax.nn import _checks
from bnjax.nn._mlp import MLPSpec, as_layer
from bnjax.train._config import TrainConfig, make_optimizer
from bnjax.train._model import takes

MEMBER_FIELDS = ("seed", "learning_rate", "weight_scale", "dropout", "bn_momentum")
"""A member's settings: its seed, the learning rate (read by the optimizer step) and the model options."""
MODEL_OPTIONS = {"weight_scale": "init", "dropout": "apply", "bn_momentum": "apply"}
"""The member settings that reach the model as options (:class:`bnjax.Layer`), and whether ``init`` or
``apply`` reads them."""


def _member_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` as member setting ``name`` (a sentence after the value), or None."""
    if name == "seed":
        return None if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0 else (
            "must be an int >= 0.")
    if not isinstance(value, (int, float, np.number)) or isinstance(value, bool) or not math.isfinite(value):
        return "must be a finite number."
    if name in ("learning_rate", "weight_scale"):
        return None if value > 0 else "must be > 0."
    if name == "dropout":
        return None if _checks.drop_rate_ok(value) else _checks.DROP_RATE_RANGE
    if name == "bn_momentum":
        return None if _checks.momentum_ok(value) else _checks.MOMENTUM_RANGE
    raise KeyError(f"{name!r} is not a member setting; they are {MEMBER_FIELDS}.")


@dataclass(frozen=True)
class Member:
    """One member of an ensemble: its seed and the settings it trains with, each a traced value in the one
    compiled program of the ensemble.

    Attributes:
      seed: init, dropout masks and (unless batches are shared) the batch order.
      learning_rate: base learning rate of the optimizer step (the schedule multiplies it).
      weight_scale: init option ``weight_scale`` (:func:`bnjax.Dense` with ``init="normal"``); None: the
        model's own.
      dropout: apply option ``dropout``, the drop probability (:func:`bnjax.Dropout`); None: the model's own.
      bn_momentum: apply option ``bn_momentum`` (:func:`bnjax.BatchNorm` and its variants); None: the model's
        own.

    Raises:
      FieldError: a value out of range (``seed`` an int >= 0, ``learning_rate``/``weight_scale`` > 0,
        ``dropout`` in [0, 1), ``bn_momentum`` in [0, 1]).
    """

    seed: int = 0
    learning_rate: float = 1e-3
    weight_scale: float | None = None
    dropout: float | None = None
    bn_momentum: float | None = None

    def __post_init__(self) -> None:
        for name in MEMBER_FIELDS:
            v = getattr(self, name)
            if v is None and name in MODEL_OPTIONS:
                continue
            bad = _member_problem(name, v)
            if bad is not None:
                raise FieldError("Member", name, v, bad)
            object.__setattr__(self, name, int(v) if name == "seed" else float(v))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values, unset options left out (what results and reports store)."""
        return {k: getattr(self, k) for k in MEMBER_FIELDS if getattr(self, k) is not None}



# fold_in tags that separate the random streams derived from one seed.
_INIT, _TRAIN, _SHUFFLE, _DROPOUT = 0, 1, 2, 3


class TrainState(NamedTuple):
    """Everything that changes during training, for one member (stacked on a leading axis for ensembles).

    Attributes:
      params, batch_stats: the model's pytrees (``model.init`` layout).
      opt_state: optax state of :func:`make_optimizer`.
      key: raw ``uint32`` key data of the member's training key (dropout, and shuffling unless shared).
      hyper: the member's traced settings (float32): ``"learning_rate"`` plus the apply options it sets
        (``"dropout"``, ``"bn_momentum"``; an MLP's members always set both, from ``Layer.defaults``).
      step: global step count (int32), the number of steps taken so far.
      diverged_step: -1, or the 0-based global step at which the member diverged (see
        :func:`make_train_step`); from then on its parameters and batch statistics are frozen.
    """

    params: Params
    batch_stats: State
    opt_state: Any
    key: Array
    hyper: dict[str, Array]
    step: Array
    diverged_step: Array


def seed_key_data(seeds: Sequence[int] | np.ndarray) -> np.ndarray:
    """``(K, 2)`` uint32 raw data of ``jax.random.key(seed)`` for each seed, computed on the host at once
    (threefry's seeding: high and low 32 bits; without ``jax_enable_x64`` JAX keeps the low 32 bits only)."""
    s = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    hi = (s >> np.uint64(32)) if jax.config.jax_enable_x64 else np.zeros_like(s)
    return np.stack([hi, s & np.uint64(0xFFFFFFFF)], axis=-1).astype(np.uint32)


def member_keys(seed: int) -> tuple[Array, Array]:
    """``(init_key, train_key)`` of a member, both derived from its seed only."""
    base = jax.random.key(seed)
    return jax.random.fold_in(base, _INIT), jax.random.fold_in(base, _TRAIN)


def shared_shuffle_key(seed: int) -> Array:
    """Raw key data of the shuffle stream that all members share when ``shared_batches=True``: the one a
    member with this ``seed`` shuffles with on its own, so a run of one member is the same either way."""
    return jax.random.key_data(member_keys(seed)[1])


def member_defaults(layer: Layer) -> dict[str, Any]:
    """The member settings a model sets by default (``Layer.defaults`` restricted to the member options)."""
    return {k: v for k, v in layer.defaults if k in MODEL_OPTIONS}


def _init_member(layer: Layer, cfg: TrainConfig, seed_data: Array, values: Mapping[str, Array]) -> TrainState:
    """One member's initial state from its raw seed key data and its settings (traceable, vmappable)."""
    base = jax.random.wrap_key_data(seed_data)
    init_key, train_key = jax.random.fold_in(base, _INIT), jax.random.fold_in(base, _TRAIN)
    init_options = {k: v for k, v in values.items() if MODEL_OPTIONS.get(k) == "init" and takes(layer, k, "init")}
    params, batch_stats = layer.init(init_key, **init_options)
    hyper = {k: jnp.asarray(v, jnp.float32) for k, v in values.items() if MODEL_OPTIONS.get(k) != "init"}
    return TrainState(
        params=params,
        batch_stats=batch_stats,
        opt_state=make_optimizer(cfg).init(params),
        key=jax.random.key_data(train_key),
        hyper=hyper,
        step=jnp.zeros((), jnp.int32),
        diverged_step=jnp.full((), -1, jnp.int32),
    )


@functools.lru_cache(maxsize=32)
def _jitted_init(layer: Layer, cfg: TrainConfig, vmapped: bool) -> Any:
    one = functools.partial(_init_member, layer, cfg)
    return jax.jit(jax.vmap(one) if vmapped else one)


def member_arrays(members: Sequence[Member]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(seed key data (K, 2), {setting: (K,) float32})`` of ``members`` (the settings every member sets)."""
    names = [k for k in ("learning_rate", *MODEL_OPTIONS) if getattr(members[0], k) is not None]
    values = {k: np.asarray([getattr(m, k) for m in members], np.float32) for k in names}
    return seed_key_data([m.seed for m in members]), values


def init_members(layer: Layer, cfg: TrainConfig, seed_data: Any, values: Mapping[str, Any]) -> TrainState:
    """The stacked initial state of the members given as arrays (:func:`member_arrays`): one jitted, vmapped
    program, compiled once per model, configuration and member count."""
    return _jitted_init(layer, _init_cfg(cfg), True)(seed_data, dict(values))


def state_shapes(layer: Layer, cfg: TrainConfig, members: Sequence[Member]) -> TrainState:
    """The stacked initial state of ``members`` as ``jax.ShapeDtypeStruct`` leaves (traced, nothing computed)."""
    return jax.eval_shape(lambda: init_members(layer, cfg, *member_arrays(members)))


def _init_cfg(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with what the initial state does not depend on reset (only the optimizer's kind shapes it)."""
    return TrainConfig(optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, momentum=cfg.momentum)


def init_train_state(
    model: Layer | MLPSpec,
    cfg: TrainConfig,
    *,
    seed: int | None = None,
    weight_scale: Any = None,
    learning_rate: Any = None,
    dropout: Any = None,
    bn_momentum: Any = None,
) -> TrainState:
    """The initial :class:`TrainState` of one member.

    ``seed`` and ``learning_rate`` default to ``cfg``'s; ``weight_scale``, ``dropout`` and ``bn_momentum``
    to the model's ``Layer.defaults`` (an MLP's spec values) and otherwise to "not set" (the layers' own
    values). The model is initialised from ``member_keys(seed)[0]`` with ``init(key, weight_scale=...)`` when
    it is set. Equal, bit for bit, to the member's slice of :func:`init_ensemble`.
    """
    layer = as_layer(model, "init_train_state")
    given = {"weight_scale": weight_scale, "dropout": dropout, "bn_momentum": bn_momentum}
    values = member_defaults(layer) | {k: v for k, v in given.items() if v is not None}
    values["learning_rate"] = cfg.learning_rate if learning_rate is None else learning_rate
    seed_data = seed_key_data([cfg.seed if seed is None else seed])[0]
    floats = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    return _jitted_init(layer, _init_cfg(cfg), False)(seed_data, floats)


def init_ensemble(model: Layer | MLPSpec, cfg: TrainConfig, members: Sequence[Member | Mapping[str, Any]]
                  ) -> TrainState:
    """The stacked initial :class:`TrainState` of ``members`` (``K`` :class:`Member`, or dicts of their
    fields), computed by one jitted, vmapped program: member ``k``'s slice equals
    ``init_train_state(model, cfg, **members[k].to_dict())`` exactly."""
    layer = as_layer(model, "init_ensemble")
    resolved = [m if isinstance(m, Member) else Member(**m) for m in members]
    if not resolved:
        raise ValueError("init_ensemble: members is empty; give at least one Member.")
    defaults = member_defaults(layer)
    resolved = [Member(**(defaults | m.to_dict())) for m in resolved]
    if len({tuple(k for k, v in m.to_dict().items()) for m in resolved}) != 1:
        raise ValueError("init_ensemble: every member must set the same settings (weight_scale, dropout, "
                         "bn_momentum: all or none), so that their states stack.")
    return init_members(layer, cfg, *member_arrays(resolved))


_READERS = {"weight_scale": "bnjax.Dense", "dropout": "bnjax.Dropout", "bn_momentum": "bnjax.BatchNorm"}
Members = Mapping[str, Sequence[Any]] | Sequence[Member] | None


def _rows(members: Members, fn: str) -> tuple[list[str], list[dict[str, Any]]]:
    """``(the settings given explicitly, one dict per member)`` of a dict of lists or a list of Member."""
    if isinstance(members, Mapping):
        unknown = sorted(set(members) - set(MEMBER_FIELDS))
        if unknown:
            raise ValueError(f"{fn}: members has unknown keys {unknown}; valid keys are {MEMBER_FIELDS}.")
        lengths = {k: len(v) for k, v in members.items()}
        if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"{fn}: members must hold non-empty lists of one common length, got lengths {lengths}.")
        return list(members), [{k: members[k][i] for k in members} for i in range(next(iter(lengths.values())))]
    if isinstance(members, Sequence) and members and all(isinstance(x, Member) for x in members):
        given = sorted({k for x in members for k in x.to_dict() if k in MODEL_OPTIONS})
        return given, [x.to_dict() for x in members]
    raise TypeError(f"{fn}: members must be a dict of equal-length lists over {MEMBER_FIELDS} or a non-empty "
                    f"list of bnjax.train.Member, got {type(members).__name__}.")


def resolve_members(model: Layer | MLPSpec, cfg: TrainConfig, members: Members) -> list[Member]:
    """The validated :class:`Member` list of ``members``, with defaults filled in.

    ``members`` is a dict of equal-length lists over ``"seed"``, ``"learning_rate"``, ``"weight_scale"``,
    ``"dropout"``, ``"bn_momentum"`` (one entry per member), a sequence of :class:`Member`, or None (one
    member). Missing settings take ``cfg.seed`` and ``cfg.learning_rate``, and the model's ``Layer.defaults``
    (an MLP's ``weight_scale``, ``dropout`` and ``bn_momentum``; other layers keep their own values). A setting
    that members give explicitly must be an option the model takes (ValueError otherwise: a sweep that the
    model ignores would train identical members).
    """
    fn = "train_ensemble"
    layer = as_layer(model, fn)
    defaults = {"seed": cfg.seed, "learning_rate": cfg.learning_rate} | member_defaults(layer)
    if members is None:
        return [Member(**defaults)]
    given, rows = _rows(members, fn)
    out = []
    for k, row in enumerate(rows):
        try:
            out.append(Member(**(defaults | row)))
        except FieldError as e:
            raise ValueError(f"{fn}: members[{e.field!r}][{k}]={e.value!r} {e.expected}") from None
    for name in given:
        where = MODEL_OPTIONS.get(name)
        if where is not None and not takes(layer, name, where):
            raise ValueError(
                f"{fn}: members set {name!r}, but the model's {where} takes no {name!r} option, so every member "
                f"would train alike; drop it from the members, or give the model a layer that reads it "
                f"({_READERS[name]})."
            )
    return out
