"""Layer factories (``Layer(init, apply)`` pairs) and the ``serial`` combinator."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn._batch_norm import batch_norm, batch_norm_init
from bnjax.nn._dense import dense, dense_init
from bnjax.nn._dropout import dropout, dropout_init
from bnjax.nn._layer_norm import layer_norm, layer_norm_init


def BatchNorm(num_features: int, *, average: str = "ema", dtype: Any = None, **options: Any) -> Layer:
    """:func:`bnjax.batch_norm` as a :class:`Layer`; ``options`` are its keyword options (momentum, eps...)."""
    init_kw = {"average": average} | ({} if dtype is None else {"dtype": dtype})
    return Layer(
        lambda key: batch_norm_init(num_features, **init_kw),
        partial(batch_norm, average=average, **options),
        "bn",
    )


def LayerNorm(shape: int | tuple[int, ...], *, dtype: Any = None, **options: Any) -> Layer:
    """:func:`bnjax.layer_norm` as a :class:`Layer`."""
    init_kw = {} if dtype is None else {"dtype": dtype}
    return Layer(lambda key: layer_norm_init(shape, **init_kw), partial(layer_norm, **options), "ln")


def Dropout(rate: Any) -> Layer:
    """:func:`bnjax.dropout` with drop probability ``rate`` as a :class:`Layer`."""
    return Layer(lambda key: dropout_init(), partial(dropout, rate=rate), "dropout")


def Dense(in_features: int, out_features: int, **init_options: Any) -> Layer:
    """:func:`bnjax.dense` as a :class:`Layer`; ``init_options`` go to :func:`bnjax.dense_init`."""
    return Layer(lambda key: dense_init(key, in_features, out_features, **init_options), dense, "dense")


def Activation(fn: Callable[[Array], Array], name: str | None = None) -> Layer:
    """A parameter-free elementwise layer, e.g. ``Activation(jax.nn.relu)``."""

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None):
        del params, train, key
        return fn(x), batch_stats

    return Layer(lambda key: ({}, {}), apply, name or getattr(fn, "__name__", "activation"))


def serial(*layers: Layer, names: tuple[str, ...] | None = None) -> Layer:
    """Composes layers left to right into one :class:`Layer`.

    ``params`` and ``batch_stats`` are dicts keyed by layer name (``"dense_0"``, ``"bn_0"``, ``"dense_1"``,
    ... unless ``names`` is given); layers with empty params/stats are left out of the dicts. Layer ``i``
    gets ``jax.random.fold_in(key, i)`` as its key, so keys are distinct per layer and stable when other
    layers change.
    """
    if names is None:
        counts: dict[str, int] = {}
        auto = []
        for layer in layers:
            i = counts.get(layer.name, 0)
            counts[layer.name] = i + 1
            auto.append(f"{layer.name}_{i}")
        names = tuple(auto)
    if len(names) != len(layers) or len(set(names)) != len(names):
        raise ValueError(f"serial: names={names!r} must be {len(layers)} distinct strings, one per layer.")

    def init(key: PRNGKey) -> tuple[Params, State]:
        params, stats = {}, {}
        for i, (name, layer) in enumerate(zip(names, layers)):
            p, s = layer.init(jax.random.fold_in(key, i))
            if p:
                params[name] = p
            if s:
                stats[name] = s
        return params, stats

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None):
        new_stats = {}
        for i, (name, layer) in enumerate(zip(names, layers)):
            k = None if key is None else jax.random.fold_in(key, i)
            x, s = layer.apply(params.get(name, {}), batch_stats.get(name, {}), x, train, key=k)
            if s:
                new_stats[name] = s
        return x, new_stats

    return Layer(init, apply, "serial")
