"""What the engine reads of a :class:`bnjax.Layer` beyond ``init``/``apply``: which options it takes, and the two
training concerns that look inside a composition: the divergence sentinel and the dense first layer that an
ensemble sharing its batches computes as one matmul."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn._combinators import apply_layers, layer_options, select_options
from bnjax.nn._dense import dense


def takes(layer: Layer, option: str, which: str = "apply") -> bool:
    """Whether ``layer``'s ``which`` (``"init"``/``"apply"``) may read ``option`` (a layer taking ``**options``
    may read anything)."""
    names = layer_options(layer, which)
    return names is None or option in names


def _zero_sum(y: Array) -> Array:
    # sum(y * 0): exactly 0 when every entry is finite, NaN otherwise; jit removes it when unused.
    return jnp.sum(y * jnp.zeros((), y.dtype), dtype=jnp.float32)


def forward(
    layer: Layer,
    params: Params,
    batch_stats: State,
    x: Array,
    train: bool,
    *,
    key: PRNGKey | None = None,
    first: Array | None = None,
    **options: Any,
) -> tuple[Array, State, Array]:
    """``layer.apply`` plus a non-finiteness sentinel: ``(y, new_batch_stats, sentinel)``.

    ``sentinel = sum(z * 0)`` over the outputs ``z`` of a composition's layers that have parameters and are
    followed by a parameter-free layer (an activation, dropout, pooling) or end the model -- for an MLP, the
    pre-activations and the logits; for any other model, its output: exactly 0 when all of them are finite,
    NaN otherwise. A non-finite parameter makes its layer's output non-finite, and a layer with parameters
    (affine or normalizing) passes a non-finite input on, so the first parameter-free layer after it sees
    it -- where a ReLU, a saturating activation or a dropout mask could hide it from the loss. A training
    step thus learns from this scalar that a parameter went non-finite, without a pass over the parameters.

    ``first``, if given, is the first layer's ``x @ weight.T`` computed by the caller (``x`` is then not
    read; the layer must be :func:`bnjax.Dense`): an ensemble whose members share ``x`` computes it for all
    members as one matmul. Options are routed as by :func:`bnjax.serial`.
    """
    parts = []
    names = [name for name, _ in layer.layers]
    watched = {name for name, after in zip(names, [*names[1:], None]) if name in params and after not in params}

    def tap(name: str, sub: Layer, y: Array) -> None:
        del sub
        if name in watched:
            parts.append(_zero_sum(y))

    if layer.layers:
        start = 0
        if first is not None:
            name = layer.layers[0][0]
            bias = params[name].get("bias")
            x = first if bias is None else first + bias
            tap(name, layer.layers[0][1], x)
            start = 1
        y, new_stats = apply_layers(layer.layers, params, batch_stats, x, train, key=key, start=start, tap=tap,
                                    **options)
    else:
        if first is not None:
            raise ValueError("forward: first= needs a composition whose first layer is bnjax.Dense.")
        y, new_stats = layer.apply(params, batch_stats, x, train, key=key,
                                   **select_options(layer, "apply", options))
        parts.append(_zero_sum(y))
    sentinel = sum(parts[1:], parts[0]) if parts else jnp.zeros((), jnp.float32)
    return y, new_stats, sentinel


def first_dense(layer: Layer) -> tuple[str, Any] | None:
    """``(pytree name, precision)`` of ``layer``'s first layer when it is a :func:`bnjax.Dense` (the
    shared-batch fast path applies), else None."""
    if not layer.layers:
        return None
    apply = layer.layers[0][1].apply
    if apply is dense:
        return layer.layers[0][0], None
    if isinstance(apply, functools.partial) and apply.func is dense and set(apply.keywords) <= {"precision"}:
        return layer.layers[0][0], apply.keywords.get("precision")
    return None


def stats_layout(batch_stats: Mapping[str, Any]) -> bool:
    """Whether ``batch_stats`` holds any running statistics (a dict with ``"mean"`` and ``"var"``)."""
    if "mean" in batch_stats and "var" in batch_stats:
        return True
    return any(isinstance(v, Mapping) and stats_layout(v) for v in batch_stats.values())
