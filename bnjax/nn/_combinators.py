"""Layer factories (``Layer(init, apply)`` pairs), the ``serial`` combinator and option routing.

Every factory returns a :class:`bnjax.Layer` whose ``apply`` declares the per-call options it reads
(``dropout``, ``bn_momentum``, ...; the table is in :class:`bnjax.Layer`'s docstring), so a model built with
:func:`serial` can be swept per ensemble member by passing traced options to its ``apply``/``init``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn._batch_norm import batch_norm, batch_norm_init
from bnjax.nn._dense import dense, dense_init
from bnjax.nn._dropout import dropout as dropout_fn
from bnjax.nn._dropout import dropout_init
from bnjax.nn._ghost import ghost_batch_norm
from bnjax.nn._group_norm import _resolve_groups, group_norm, group_norm_init
from bnjax.nn._checks import check_precision, is_int
from bnjax.nn._layer_norm import layer_norm, layer_norm_init
from bnjax.nn._renorm import batch_renorm, renorm_schedule
from bnjax.nn._rms_norm import rms_norm, rms_norm_init

# Arguments of the contract itself, never routed as options; ``precision`` is fixed when a layer is built
# (``Dense(..., precision=...)``), never a per-call option.
_RESERVED = frozenset({"params", "batch_stats", "x", "train", "key", "precision"})


# ------------------------------------------------------------------------------------------ option routing

@functools.lru_cache(maxsize=1024)
def _declared(fn: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names ``fn`` accepts beyond the contract's, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature: pass no options
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params
                     if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _RESERVED)


def layer_options(layer: Layer, which: str = "apply") -> frozenset[str] | None:
    """The option names ``layer``'s ``which`` (``"init"`` or ``"apply"``) reads, or None for "any".

    A composition (``layer.layers``) reads the union of its parts' options; any other layer what its function
    declares as keyword parameters (None when it takes ``**options``).
    """
    if layer.layers:
        return _read_by(layer.layers, which)
    return _declared(layer.init if which == "init" else layer.apply)


def _read_by(layers: tuple[tuple[str, Layer], ...], which: str) -> frozenset[str] | None:
    out: set[str] = set()
    for _, sub in layers:
        names = layer_options(sub, which)
        if names is None:
            return None
        out |= names
    return frozenset(out)


def select_options(layer: Layer, which: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``layer`` reads (see :func:`layer_options`)."""
    names = layer_options(layer, which)
    return dict(options) if names is None else {k: v for k, v in options.items() if k in names}


def check_options(owner: str, layers: tuple[tuple[str, Layer], ...], which: str, options: Mapping[str, Any]) -> None:
    """Raises ValueError when no layer of ``layers`` reads one of ``options`` (a misspelt option would
    otherwise be dropped silently); a layer that takes ``**options`` reads every option."""
    names = _read_by(layers, which)
    unread = [k for k in options if names is not None and k not in names]
    if unread:
        what = f"the {which} option {unread[0]!r}" if len(unread) == 1 else f"the {which} options {unread}"
        reads = f"reads {sorted(names)}" if names else "reads no options"  # type: ignore[arg-type]
        raise ValueError(f"{owner}: no layer of the model reads {what}; its {which} {reads} (a layer reads the "
                         f"options it declares as keyword parameters).")


def init_layers(layers: tuple[tuple[str, Layer], ...], key: PRNGKey, **options: Any) -> tuple[Params, State]:
    """``init`` of a composition: layer ``i`` gets ``jax.random.fold_in(key, i)`` and the options it declares;
    empty trees are left out."""
    params, stats = {}, {}
    for i, (name, layer) in enumerate(layers):
        p, s = layer.init(jax.random.fold_in(key, i), **select_options(layer, "init", options))
        if p:
            params[name] = p
        if s:
            stats[name] = s
    return params, stats


def apply_layers(layers: tuple[tuple[str, Layer], ...], params: Params, batch_stats: State, x: Array, train: bool, *,
                 key: PRNGKey | None = None, start: int = 0, tap: Callable[[str, Layer, Array], None] | None = None,
                 **options: Any) -> tuple[Array, State]:
    """``apply`` of a composition, the one place that derives the per-layer keys and routes options.

    Layer ``i`` gets ``jax.random.fold_in(key, i)`` and the options it declares (options no layer reads are
    dropped: the public ``apply`` of :func:`serial` and :func:`bnjax.mlp` refuses them first, see
    :func:`check_options`). ``start`` skips the first
    layers (``x`` is then the output of layer ``start - 1``; keys keep their positions) and ``tap(name,
    layer, y)`` sees every output: the training engine uses both (a first layer computed for a whole ensemble
    at once, a divergence check), the layers' results do not depend on them.
    """
    new_stats = {}
    for i in range(start, len(layers)):
        name, layer = layers[i]
        k = None if key is None else jax.random.fold_in(key, i)
        x, s = layer.apply(params.get(name, {}), batch_stats.get(name, {}), x, train, key=k,
                           **select_options(layer, "apply", options))
        if s:
            new_stats[name] = s
        if tap is not None:
            tap(name, layer, x)
    return x, new_stats


def serial(*layers: Layer, names: tuple[str, ...] | None = None) -> Layer:
    """Composes layers left to right into one :class:`Layer`.

    ``params`` and ``batch_stats`` are dicts keyed by layer name (``"dense_0"``, ``"bn_0"``, ``"dense_1"``,
    ... unless ``names`` is given: each layer's ``name`` numbered in order of appearance); layers with empty
    params/stats are left out of the dicts. Layer ``i`` gets ``jax.random.fold_in(key, i)`` as its key (in
    ``init`` and ``apply``), so keys are distinct per layer and a layer's draws do not change when another
    layer is replaced. Options (``init(key, **options)``, ``apply(..., **options)``) reach each layer that
    declares them (see :class:`bnjax.Layer`); an option that no layer reads (a misspelling such as
    ``bn_momentom``) raises ValueError naming it and the options the model reads.
    """
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is a {type(layer).__name__}, not a bnjax.Layer; build layers with "
                            f"the factories (bnjax.Dense, bnjax.BatchNorm, ...) or Layer(init, apply, name).")
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
    named = tuple(zip(names, layers))

    def init(key: PRNGKey, **options: Any) -> tuple[Params, State]:
        check_options("serial", named, "init", options)
        return init_layers(named, key, **options)

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
              **options: Any) -> tuple[Array, State]:
        check_options("serial", named, "apply", options)
        return apply_layers(named, params, batch_stats, x, train, key=key, **options)

    return Layer(init, apply, "serial", named)


# -------------------------------------------------------------------------------------------------- layers

def _bn_kwargs(base: Mapping[str, Any], momentum: Any, average: Any, unbiased: Any, axis_name: Any = None
               ) -> dict[str, Any]:
    """The batch-norm keyword arguments ``base`` with the given (not None) apply options in place."""
    given = {"momentum": momentum, "average": average, "unbiased_var": unbiased, "axis_name": axis_name}
    return {**base, **{k: v for k, v in given.items() if v is not None}}


def _no_key_init(init: Callable[[], tuple[Params, State]]) -> Callable[..., tuple[Params, State]]:
    def layer_init(key: PRNGKey) -> tuple[Params, State]:
        del key
        return init()

    return layer_init


def Dense(
    in_features: int, out_features: int, *, precision: str | jax.lax.Precision | None = None, **init_options: Any
) -> Layer:
    """:func:`bnjax.dense` as a :class:`Layer`; ``init_options`` go to :func:`bnjax.dense_init`.

    ``precision``: the matmul's precision (default None: JAX's default, TF32 for float32 on NVIDIA GPUs;
    ``"highest"`` for true float32; see :func:`bnjax.dense`), checked here. Init option ``weight_scale``
    overrides the constructor's (``init="normal"`` only; may be traced).
    """
    precision = check_precision("Dense", "precision", precision)

    def init(key: PRNGKey, *, weight_scale: Any = None) -> tuple[Params, State]:
        extra = {} if weight_scale is None else {"weight_scale": weight_scale}
        return dense_init(key, in_features, out_features, **(init_options | extra))

    # The function itself (or a partial of it), so the training engine recognises a dense first layer.
    apply = dense if precision is None else functools.partial(dense, precision=precision)
    return Layer(init, apply, "dense")


def BatchNorm(num_features: int, *, average: str = "ema", dtype: Any = None, **options: Any) -> Layer:
    """:func:`bnjax.batch_norm` as a :class:`Layer`; ``options`` are its keyword options (momentum, eps...).

    Apply options ``bn_momentum``, ``bn_average``, ``bn_unbiased`` and ``axis_name`` override ``momentum``,
    ``average``, ``unbiased_var`` and ``axis_name``.
    """
    init_kw = {"average": average} | ({} if dtype is None else {"dtype": dtype})

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
              bn_momentum: Any = None, bn_average: str | None = None, bn_unbiased: bool | None = None,
              axis_name: Any = None) -> tuple[Array, State]:
        kw = _bn_kwargs({"average": average, **options}, bn_momentum, bn_average, bn_unbiased, axis_name)
        return batch_norm(params, batch_stats, x, train, key=key, **kw)

    return Layer(_no_key_init(lambda: batch_norm_init(num_features, **init_kw)), apply, "bn")


def GhostBatchNorm(
    num_features: int, *, virtual_batch_size: int, average: str = "ema", dtype: Any = None, **options: Any
) -> Layer:
    """:func:`bnjax.ghost_batch_norm` over ghost batches of ``virtual_batch_size`` rows as a :class:`Layer`.

    Same parameters and statistics as :func:`BatchNorm` (pytree name ``"bn"``); apply options ``bn_momentum``,
    ``bn_average``, ``bn_unbiased``. Statistics stay per device under data parallelism (no ``axis_name``).
    """
    init_kw = {"average": average} | ({} if dtype is None else {"dtype": dtype})

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
              bn_momentum: Any = None, bn_average: str | None = None,
              bn_unbiased: bool | None = None) -> tuple[Array, State]:
        kw = _bn_kwargs({"average": average, **options}, bn_momentum, bn_average, bn_unbiased)
        return ghost_batch_norm(params, batch_stats, x, train, key=key, virtual_batch_size=virtual_batch_size, **kw)

    return Layer(_no_key_init(lambda: batch_norm_init(num_features, **init_kw)), apply, "bn")


def BatchRenorm(
    num_features: int,
    *,
    rmax: float = 3.0,
    dmax: float = 5.0,
    warmup_steps: int = 0,
    hold_steps: int = 0,
    average: str = "ema",
    dtype: Any = None,
    **options: Any,
) -> Layer:
    """:func:`bnjax.batch_renorm` as a :class:`Layer`, with the clipping bounds' warm-up built in.

    With ``warmup_steps = hold_steps = 0`` the bounds are ``rmax``/``dmax`` from the first step. Otherwise
    the apply option ``step`` (the global step; the training engine passes it) sets them by
    :func:`bnjax.renorm_schedule`: plain batch norm (``rmax = 1``, ``dmax = 0``) for ``hold_steps`` steps,
    then linear ramps to ``rmax``/``dmax`` over ``warmup_steps`` steps (a jump when ``warmup_steps = 0``).
    Without ``step`` the final bounds apply. Apply options ``bn_momentum``, ``bn_average``, ``bn_unbiased``
    and ``axis_name`` as :func:`BatchNorm`. Same parameters and statistics as :func:`BatchNorm` (``"bn"``).
    """
    fn = "BatchRenorm"
    for name, v in (("warmup_steps", warmup_steps), ("hold_steps", hold_steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{fn}: {name}={v!r} must be an int >= 0.")
    if not rmax >= 1.0 or not dmax >= 0.0:
        raise ValueError(f"{fn}: rmax={rmax!r} must be >= 1 and dmax={dmax!r} >= 0 (rmax=1, dmax=0 is batch norm).")
    init_kw = {"average": average} | ({} if dtype is None else {"dtype": dtype})

    def bounds(step: Any) -> tuple[Any, Any]:
        if step is None or (warmup_steps == 0 and hold_steps == 0):
            return rmax, dmax
        if warmup_steps == 0:
            on = jnp.asarray(step) >= hold_steps
            return jnp.where(on, rmax, 1.0), jnp.where(on, dmax, 0.0)
        return renorm_schedule(step, warmup_steps=warmup_steps, rmax_final=rmax, dmax_final=dmax,
                               hold_steps=hold_steps)

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
              bn_momentum: Any = None, bn_average: str | None = None, bn_unbiased: bool | None = None,
              axis_name: Any = None, step: Any = None) -> tuple[Array, State]:
        kw = _bn_kwargs({"average": average, **options}, bn_momentum, bn_average, bn_unbiased, axis_name)
        r, d = bounds(step)
        return batch_renorm(params, batch_stats, x, train, key=key, rmax=r, dmax=d, **kw)

    return Layer(_no_key_init(lambda: batch_norm_init(num_features, **init_kw)), apply, "bn")


def LayerNorm(shape: int | tuple[int, ...], *, dtype: Any = None, **options: Any) -> Layer:
    """:func:`bnjax.layer_norm` as a :class:`Layer` (pytree name ``"ln"``)."""
    init_kw = {} if dtype is None else {"dtype": dtype}

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *,
              key: PRNGKey | None = None) -> tuple[Array, State]:
        return layer_norm(params, batch_stats, x, train, key=key, **options)

    return Layer(_no_key_init(lambda: layer_norm_init(shape, **init_kw)), apply, "ln")


def GroupNorm(
    num_channels: int, *, num_groups: int | None = None, group_size: int | None = None, dtype: Any = None,
    **options: Any,
) -> Layer:
    """:func:`bnjax.group_norm` over channels-last inputs as a :class:`Layer` (pytree name ``"gn"``).

    Give ``num_groups`` or ``group_size``; both are checked against ``num_channels`` here, when the model is built.
    """
    if not is_int(num_channels) or num_channels < 1:
        raise ValueError(f"GroupNorm: num_channels={num_channels!r} must be a positive int.")
    _resolve_groups("GroupNorm", num_channels, num_groups, group_size)
    init_kw = {} if dtype is None else {"dtype": dtype}

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *,
              key: PRNGKey | None = None) -> tuple[Array, State]:
        return group_norm(params, batch_stats, x, train, key=key, num_groups=num_groups, group_size=group_size,
                          **options)

    return Layer(_no_key_init(lambda: group_norm_init(num_channels, **init_kw)), apply, "gn")


def RMSNorm(shape: int | tuple[int, ...], *, dtype: Any = None, **options: Any) -> Layer:
    """:func:`bnjax.rms_norm` as a :class:`Layer` (pytree name ``"rms"``)."""
    init_kw = {} if dtype is None else {"dtype": dtype}

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *,
              key: PRNGKey | None = None) -> tuple[Array, State]:
        return rms_norm(params, batch_stats, x, train, key=key, **options)

    return Layer(_no_key_init(lambda: rms_norm_init(shape, **init_kw)), apply, "rms")


def Dropout(rate: Any) -> Layer:
    """:func:`bnjax.dropout` with drop probability ``rate`` as a :class:`Layer`; apply option ``dropout``
    overrides ``rate`` (e.g. a traced rate swept by ``jax.vmap``), apply option ``row_index`` draws the mask
    row by row from each row's position in the global batch (see :func:`bnjax.dropout`)."""

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
              dropout: Any = None, row_index: Any = None) -> tuple[Array, State]:
        return dropout_fn(params, batch_stats, x, train, key=key, rate=rate if dropout is None else dropout,
                          row_index=row_index)

    return Layer(_no_key_init(dropout_init), apply, "dropout")


def Activation(fn: Callable[[Array], Array], name: str | None = None) -> Layer:
    """A parameter-free elementwise layer, e.g. ``Activation(jax.nn.relu)``."""

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *,
              key: PRNGKey | None = None) -> tuple[Array, State]:
        del params, train, key
        return fn(x), batch_stats

    return Layer(lambda key: ({}, {}), apply, name or getattr(fn, "__name__", "activation"))
