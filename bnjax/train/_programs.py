"""The compiled programs of an ensemble: one epoch (a ``lax.scan`` of steps) and one evaluation, each for a
fixed number of members per call, compiled ahead of time and cached, with their memory needs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from bnjax._typing import Layer
from bnjax.nn._mlp import MLPSpec, as_layer
from bnjax.train._config import PLACEMENT_FIELDS, TrainConfig, cast_compute
from bnjax.train._members import Member, TrainState, shared_shuffle_key, state_shapes
from bnjax.train._precise_bn import _average_stats
from bnjax.train._sharded import Layout, make_sharded_epoch_fn, make_sharded_eval_fn
from bnjax.train._step import (
    EPOCH_UNROLL,
    epoch_batches,
    evaluate,
    make_shared_batch_ensemble_step,
    make_train_step,
)


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
    layer = as_layer(model, "make_epoch_fn")
    steps = num_train // cfg.batch_size
    bs = cfg.batch_size
    single = num_members == 1
    # One member runs without vmap (a vmap of one is measurably slower); the leading axis is removed outside
    # the loop so the loop carry holds plain arrays.
    if single:
        batched_step = make_train_step(layer, cfg, steps, use_dropout=use_dropout)
    elif shared_batches:
        batched_step = make_shared_batch_ensemble_step(layer, cfg, steps, use_dropout=use_dropout)
    else:
        batched_step = jax.vmap(make_train_step(layer, cfg, steps, use_dropout=use_dropout))

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

        st, losses = jax.lax.scan(body, st, idx, unroll=EPOCH_UNROLL if single else 1)
        return (_expand(st), losses[None]) if single else (st, losses.T)

    return epoch


def make_eval_fn(
    model: Layer | MLPSpec, cfg: TrainConfig, *, num_members: int, precise_batches: int = 0
) -> Callable[..., dict[str, jax.Array]]:
    """``(states, sets, precise_x) -> {metric: (K,)}``: eval-mode accuracy and loss on each ``(name, x, y)``
    of ``sets``; with ``precise_batches`` also after :func:`recompute_batch_stats`-style statistics from
    ``precise_x``."""
    layer = as_layer(model, "make_eval_fn")

    def one(params, batch_stats, sets, precise_x):
        out = {}
        variants = [("", batch_stats)]
        if precise_batches:
            xb = precise_x.reshape(precise_batches, cfg.batch_size, *precise_x.shape[1:])
            cparams, cxb = cast_compute(cfg.compute_dtype, params, xb)
            variants.append(("_precise", _average_stats(layer, cparams, batch_stats, cxb, unbiased=False, rate=0.0,
                                                        key=None, precision=cfg.matmul_precision)))
        for suffix, stats in variants:
            for name, (x, y) in sets.items():
                r = evaluate(layer, params, stats, x, y, batch_size=cfg.eval_batch_size,
                             compute_dtype=cfg.compute_dtype, matmul_precision=cfg.matmul_precision)
                out[f"{name}_acc{suffix}"] = r["acc"]
                out[f"{name}_loss{suffix}"] = r["loss"]
        return out

    if num_members == 1:
        return lambda states, sets, precise_x: _expand(
            one(_squeeze(states.params), _squeeze(states.batch_stats), sets, precise_x)
        )
    batched = jax.vmap(one, in_axes=(0, 0, None, None))
    return lambda states, sets, precise_x: batched(states.params, states.batch_stats, sets, precise_x)


def program_cfg(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the fields the compiled programs do not depend on reset, for program caching."""
    epochs = cfg.epochs if cfg.schedule == "cosine" else 1  # only the cosine schedule reads the run length
    placement = {f: TrainConfig.__dataclass_fields__[f].default for f in PLACEMENT_FIELDS}
    return cfg.replace(learning_rate=1.0, seed=0, epochs=epochs, **placement)


@dataclass(frozen=True)
class ProgramSpec:
    """What the programs of one call are compiled for (hashable: the cache key).

    ``width`` members per call (padded to a multiple of the layout's ``"members"`` devices); ``options``: the
    member settings that shape the state's ``hyper``; ``inputs``: ``(x, y, sets, precise_x)`` as
    ``ShapeDtypeStruct`` (``sets`` as sorted ``(name, (x, y))`` pairs).
    """

    layer: Layer
    cfg: TrainConfig
    width: int
    num_train: int
    shared: bool
    use_dropout: bool
    options: tuple[str, ...]
    inputs: Any
    layout: Layout | None = None
    default_precision: Any = None  # jax.config's jax_default_matmul_precision when it was made (it shapes the
    # compiled matmuls, so it is part of the cache key)


@dataclass(frozen=True)
class Programs:
    """The compiled epoch and evaluation of a :class:`ProgramSpec`, and the bytes each needs per device."""

    epoch: Any
    evaluate: Any
    epoch_bytes: int
    eval_bytes: int

    @property
    def bytes(self) -> int:
        """The larger of the two programs' needs (they do not run at once)."""
        return max(self.epoch_bytes, self.eval_bytes)


def _needed_bytes(compiled: Any) -> int:
    """Arguments + outputs (less what they alias) + temporaries of a compiled program, 0 where unknown."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - a backend without memory analysis: nothing to size chunks by
        return 0


def _state_avals(p: ProgramSpec) -> TrainState:
    template = Member(seed=0, learning_rate=1.0, **{k: 0.5 for k in p.options})
    avals = state_shapes(p.layer, p.cfg, [template] * p.width)
    if p.layout is None:
        return avals
    sharding = p.layout.member_sharding()
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), avals)


def _replicated(tree: Any, layout: Layout | None) -> Any:
    if layout is None:
        return tree
    sharding = layout.sharding()
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


@functools.lru_cache(maxsize=16)
def compile_programs(p: ProgramSpec) -> Programs:
    """The compiled programs of ``p``, cached: a sweep that repeats a configuration compiles them once."""
    cfg, layout = program_cfg(p.cfg), p.layout
    x, y, sets, precise = p.inputs
    sets = {name: xy for name, xy in sets}
    if layout is None:
        epoch_fn = make_epoch_fn(p.layer, cfg, num_members=p.width, num_train=p.num_train, shared_batches=p.shared,
                                 use_dropout=p.use_dropout)
        eval_fn = make_eval_fn(p.layer, cfg, num_members=p.width, precise_batches=cfg.precise_bn_batches)
    else:
        epoch_fn = make_sharded_epoch_fn(p.layer, cfg, layout, num_train=p.num_train, shared_batches=p.shared,
                                         use_dropout=p.use_dropout)
        local = make_eval_fn(p.layer, cfg, num_members=layout.local_members, precise_batches=cfg.precise_bn_batches)
        eval_fn = make_sharded_eval_fn(local, layout)
    states = _state_avals(p)
    key = jax.eval_shape(lambda: shared_shuffle_key(0))
    x, y, sets, precise, key = _replicated((x, y, sets, precise, key), layout)
    epoch = jax.jit(epoch_fn, donate_argnums=0).lower(states, x, y, key).compile()
    evaluate_ = jax.jit(eval_fn).lower(states, sets, precise).compile()
    return Programs(epoch, evaluate_, _needed_bytes(epoch), _needed_bytes(evaluate_))
