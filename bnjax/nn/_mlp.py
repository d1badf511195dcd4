"""A fully connected network (the CS231n ``FullyConnectedNet``) built from the pure layers.

Block ``i`` of ``len(spec.hidden)`` hidden blocks is::

    dense_i (no bias before batch norm) -> bn_i | ln_i | nothing -> activation -> dropout (see dropout_layers)

followed by ``dense_L`` (with bias) to ``num_classes`` logits. Every numeric hyperparameter that an ensemble
may sweep (``weight_scale``, ``dropout``, ``bn_momentum``) can be overridden per call by a traced array, so
``jax.vmap`` trains many variants in one program.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn._batch_norm import AVERAGES, batch_norm, batch_norm_init
from bnjax.nn._checks import is_int as _is_int, is_number as _is_number
from bnjax.nn._dense import INITS, dense, dense_init
from bnjax.nn._dropout import dropout as dropout_layer
from bnjax.nn._layer_norm import layer_norm, layer_norm_init

NORMS = ("none", "batch", "layer")
DROPOUT_LAYERS = ("all", "last")
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    # The exact erf form, as torch.nn.GELU's default (jax.nn.gelu defaults to the tanh approximation).
    "gelu": partial(jax.nn.gelu, approximate=False),
}


@dataclass(frozen=True)
class MLPSpec:
    """Architecture and numeric defaults of a multilayer perceptron.

    Attributes:
      in_features: input size ``D`` (inputs are ``(N, D)``; flatten images first).
      hidden: sizes of the hidden layers (``()`` gives softmax regression). A list is stored as a tuple.
      num_classes: number of output logits.
      norm: ``"none"``, ``"batch"`` (batch norm after each hidden dense layer, whose bias is then dropped) or
        ``"layer"``.
      dropout: drop probability in [0, 1) (default for every member of an ensemble; overridable per call).
      dropout_layers: ``"all"`` -- after every hidden activation; ``"last"`` -- only after the last one.
      activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"gelu"`` (exact erf form).
      init: weight init of the dense layers: ``"normal"`` (``weight_scale * N(0, 1)``, CS231n), ``"he"``
        or ``"glorot"`` (``weight_scale`` is then unused). Biases start at 0, BN/LN scale 1 and shift 0.
      weight_scale: std of the ``"normal"`` init.
      bn_momentum: running-average coefficient, ``new = momentum * old + (1 - momentum) * batch``.
      bn_eps: batch-norm epsilon (inside the square root).
      bn_average: ``"ema"``, ``"cumulative"`` (simple average of every batch's statistics) or
        ``"debiased"`` (zero-debiased EMA); see :func:`bnjax.batch_norm`.
      bn_unbiased: store the unbiased ``n / (n - 1)`` batch variance in the running variance.
      ln_eps: layer-norm epsilon.
    """

    in_features: int
    hidden: tuple[int, ...] = (100, 100, 100, 100, 100)
    num_classes: int = 10
    norm: str = "none"
    dropout: float = 0.0
    dropout_layers: str = "all"
    activation: str = "relu"
    init: str = "normal"
    weight_scale: float = 2e-2
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_average: str = "ema"
    bn_unbiased: bool = False
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if isinstance(self.hidden, list):
            object.__setattr__(self, "hidden", tuple(self.hidden))
        bad = _validate(self)
        if bad:
            raise ValueError(f"MLPSpec: {bad}")

    @property
    def num_layers(self) -> int:
        """Number of dense layers, ``len(hidden) + 1``."""
        return len(self.hidden) + 1

    def replace(self, **changes: Any) -> MLPSpec:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _validate(s: MLPSpec) -> str | None:
    """The first problem with ``s`` as ``"field=value ... fix"``, or None."""
    choices = {
        "norm": NORMS,
        "dropout_layers": DROPOUT_LAYERS,
        "activation": tuple(ACTIVATIONS),
        "init": INITS,
        "bn_average": AVERAGES,
    }
    for name, valid in choices.items():
        v = getattr(s, name)
        if v not in valid:
            return f"{name}={v!r} is not a valid option; use one of {valid}."
    for name in ("in_features", "num_classes"):
        v = getattr(s, name)
        if not _is_int(v) or v < 1:
            return f"{name}={v!r} must be a positive int."
    if not isinstance(s.hidden, tuple) or not all(_is_int(h) and h >= 1 for h in s.hidden):
        return f"hidden={s.hidden!r} must be a tuple of positive ints, e.g. (100, 100)."
    if not _is_number(s.dropout) or not 0.0 <= s.dropout < 1.0:
        return f"dropout={s.dropout!r} is the drop probability and must be in [0, 1)."
    if not _is_number(s.bn_momentum) or not 0.0 <= s.bn_momentum <= 1.0:
        return f"bn_momentum={s.bn_momentum!r} must be in [0, 1] (new = momentum * old + (1 - momentum) * batch)."
    for name in ("weight_scale", "bn_eps", "ln_eps"):
        v = getattr(s, name)
        if not _is_number(v) or not v > 0:
            return f"{name}={v!r} must be a positive number."
    if not isinstance(s.bn_unbiased, bool):
        return f"bn_unbiased={s.bn_unbiased!r} must be True or False."
    return None


def _dropout_after(spec: MLPSpec, i: int) -> bool:
    return spec.dropout_layers == "all" or i == len(spec.hidden) - 1


def mlp_init(key: PRNGKey, spec: MLPSpec, *, weight_scale: Any = None) -> tuple[Params, State]:
    """Parameters and batch statistics of the MLP described by ``spec``.

    Dense layer ``i`` is initialised from ``jax.random.fold_in(key, i)``, so a layer's weights do not change
    when other layers are added or resized.

    Args:
      key: PRNG key.
      spec: the architecture.
      weight_scale: overrides ``spec.weight_scale`` (``init="normal"`` only); may be a traced scalar, e.g. a
        value swept by ``jax.vmap``.

    Returns:
      ``(params, batch_stats)``: ``params = {"dense_0": {"weight": (h0, D)}, "bn_0": {"scale", "bias"}, ...,
      "dense_L": {"weight": (C, h_last), "bias": (C,)}}`` (a dense layer has a ``"bias"`` unless batch norm
      follows it; ``"ln_i"`` for layer norm) and ``batch_stats = {"bn_i": {"mean", "var"[, "count"]}}``
      (empty without batch norm).
    """
    ws = spec.weight_scale if weight_scale is None else weight_scale
    sizes = (spec.in_features, *spec.hidden, spec.num_classes)
    params: Params = {}
    stats: State = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        hidden = i < len(spec.hidden)
        params[f"dense_{i}"], _ = dense_init(
            jax.random.fold_in(key, i), fan_in, fan_out,
            init=spec.init, weight_scale=ws, use_bias=not (hidden and spec.norm == "batch"),
        )
        if hidden and spec.norm == "batch":
            params[f"bn_{i}"], stats[f"bn_{i}"] = batch_norm_init(fan_out, average=spec.bn_average)
        elif hidden and spec.norm == "layer":
            params[f"ln_{i}"], _ = layer_norm_init(fan_out)
    return params, stats


def mlp_apply(
    params: Params,
    batch_stats: State,
    x: Array,
    train: bool,
    *,
    spec: MLPSpec,
    key: PRNGKey | None = None,
    dropout: Any = None,
    bn_momentum: Any = None,
    axis_name: Any = None,
) -> tuple[Array, State]:
    """Logits of the MLP, and the updated batch statistics.

    Args:
      params, batch_stats: from :func:`mlp_init`.
      x: ``(N, spec.in_features)`` floating input.
      train: Python bool; train mode uses batch statistics (and updates the running ones) and dropout.
      spec: the architecture (static).
      key: PRNG key for dropout (layer ``i`` uses ``jax.random.fold_in(key, i)``); required in train mode
        when the drop rate may be non-zero.
      dropout: drop probability overriding ``spec.dropout``; may be a traced scalar.
      bn_momentum: overrides ``spec.bn_momentum``; may be a traced scalar.
      axis_name: optional named axis (``shard_map``/``vmap``) over which batch norm computes its batch
        statistics (synchronized BN, :func:`bnjax.batch_norm`); None (default) uses the local batch only.

    Returns:
      ``(logits (N, num_classes), new_batch_stats)``; in eval mode ``new_batch_stats`` is ``batch_stats``.
    """
    logits, new_stats, _ = mlp_forward(
        params, batch_stats, x, train, spec=spec, key=key, dropout=dropout, bn_momentum=bn_momentum,
        axis_name=axis_name,
    )
    return logits, new_stats


def mlp_forward(
    params: Params,
    batch_stats: State,
    x: Array,
    train: bool,
    *,
    spec: MLPSpec,
    key: PRNGKey | None = None,
    dropout: Any = None,
    bn_momentum: Any = None,
    first_matmul: Array | None = None,
    axis_name: Any = None,
) -> tuple[Array, State, Array]:
    """:func:`mlp_apply` plus a non-finiteness sentinel: ``(logits, new_batch_stats, sentinel)``.

    ``sentinel = sum(z * 0)`` over every pre-activation ``z`` (the normalised dense outputs) and the logits:
    exactly 0 when all of them are finite, NaN otherwise. With a finite input, any non-finite parameter makes
    some pre-activation non-finite (even where a later ReLU or tanh would hide it), so a training step can
    detect non-finite parameters from this scalar without a pass over the parameters. Unused, it is
    removed by ``jit``.

    ``first_matmul``, if given, is ``x @ params["dense_0"]["weight"].T`` computed by the caller (``x`` is
    then not read): an ensemble whose members share ``x`` computes it for all members as one matmul.
    ``axis_name`` is passed to every batch norm (see :func:`mlp_apply`); the sentinel stays local.
    """
    if first_matmul is None:
        if x.ndim != 2 or x.shape[1] != spec.in_features:
            raise ValueError(
                f"mlp_apply: x has shape {tuple(x.shape)}, expected (N, {spec.in_features}); flatten the input "
                f"first, e.g. x.reshape(len(x), -1)."
            )
        h, _ = dense(params["dense_0"], {}, x, train)
    else:
        h = first_matmul + params["dense_0"]["bias"] if "bias" in params["dense_0"] else first_matmul
    rate = spec.dropout if dropout is None else dropout
    momentum = spec.bn_momentum if bn_momentum is None else bn_momentum
    act = ACTIVATIONS[spec.activation]
    new_stats: State = {}
    sentinel = jnp.zeros((), jnp.float32)
    for i in range(len(spec.hidden)):  # h is the output of dense_i
        if spec.norm == "batch":
            h, new_stats[f"bn_{i}"] = batch_norm(
                params[f"bn_{i}"], batch_stats[f"bn_{i}"], h, train,
                momentum=momentum, eps=spec.bn_eps, average=spec.bn_average, unbiased_var=spec.bn_unbiased,
                axis_name=axis_name,
            )
        elif spec.norm == "layer":
            h, _ = layer_norm(params[f"ln_{i}"], {}, h, train, eps=spec.ln_eps)
        sentinel = sentinel + jnp.sum(h * jnp.zeros((), h.dtype), dtype=jnp.float32)
        h = act(h)
        if _dropout_after(spec, i):
            h, _ = dropout_layer(
                {}, {}, h, train, key=None if key is None else jax.random.fold_in(key, i), rate=rate
            )
        h, _ = dense(params[f"dense_{i + 1}"], {}, h, train)
    sentinel = sentinel + jnp.sum(h * jnp.zeros((), h.dtype), dtype=jnp.float32)
    return h, (new_stats if train else batch_stats), sentinel


def mlp(spec: MLPSpec) -> Layer:
    """The MLP as a :class:`bnjax.Layer`: ``init(key)`` and ``apply(params, batch_stats, x, train, *, key=None)``."""
    if not isinstance(spec, MLPSpec):
        raise TypeError(f"mlp: spec must be an MLPSpec, got {type(spec).__name__}; e.g. mlp(MLPSpec(in_features=784)).")

    def init(key: PRNGKey) -> tuple[Params, State]:
        return mlp_init(key, spec)

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None):
        return mlp_apply(params, batch_stats, x, train, spec=spec, key=key)

    return Layer(init, apply, "mlp")
