"""A fully connected network (the CS231n ``FullyConnectedNet``) described by a small frozen dataclass and built
from the same layers :func:`bnjax.serial` composes.

Block ``i`` of ``len(spec.hidden)`` hidden blocks is::

    dense_i -> norm_i -> activation -> dropout        (norm_position="before", the default)
    dense_i -> activation -> norm_i -> dropout        (norm_position="after")

(no norm for ``norm="none"``; dropout after every block or only the last, see ``dropout_layers``), followed by
``dense_L`` (with bias) to ``num_classes`` logits. ``mlp(spec)`` *is* ``serial(...)`` of these layers, so it
has serial's key derivation (layer ``i`` of the list gets ``fold_in(key, i)``) and its options: ``init(key,
weight_scale=...)``, ``apply(..., dropout=..., bn_momentum=...)`` take traced per-member values.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from bnjax._typing import Array, FieldError, Layer, Params, PRNGKey, State
from bnjax.nn._batch_norm import AVERAGES
from bnjax.nn._checks import (
    DROP_RATE_RANGE,
    MOMENTUM_RANGE,
    PRECISION_EXPECTED,
    PRECISIONS,
    drop_rate_ok,
    is_finite as _is_finite,
    is_int as _is_int,
    is_number as _is_number,
    momentum_ok,
)
from bnjax.nn._combinators import (
    Activation,
    BatchNorm,
    BatchRenorm,
    Dense,
    Dropout,
    GhostBatchNorm,
    GroupNorm,
    LayerNorm,
    RMSNorm,
    apply_layers,
    check_options,
    init_layers,
    serial,
)
from bnjax.nn._dense import INITS

NORMS = ("none", "batch", "layer", "group", "rms", "ghost", "renorm")
BATCH_NORMS = ("batch", "ghost", "renorm")
"""The norms that normalise with batch statistics (running statistics, ``bn_*`` options, no dense bias before)."""
NORM_POSITIONS = ("before", "after")
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
      in_features: input size ``D`` (inputs are ``(N, D)``; flatten images first). None: taken from the data
        by :func:`bnjax.train.train_ensemble` (:func:`bnjax.mlp` needs it set).
      hidden: sizes of the hidden layers (``()`` gives softmax regression). A list is stored as a tuple.
      num_classes: number of output logits (None: from the data, as ``in_features``).
      norm: ``"none"``; ``"batch"`` (:func:`bnjax.batch_norm`), ``"ghost"`` (:func:`bnjax.ghost_batch_norm`
        over ``virtual_batch_size`` rows), ``"renorm"`` (:func:`bnjax.batch_renorm`) -- these three drop the
        bias of the dense layer before them when ``norm_position="before"``; ``"layer"``, ``"group"``
        (``groups`` or ``group_size``), ``"rms"`` (per-example norms).
      dropout: drop probability in [0, 1) (default for every member of an ensemble; overridable per call).
      dropout_layers: ``"all"`` -- after every hidden block; ``"last"`` -- only after the last one.
      activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"gelu"`` (exact erf form).
      init: weight init of the dense layers: ``"normal"`` (``weight_scale * N(0, 1)``, CS231n), ``"he"``
        or ``"glorot"`` (``weight_scale`` is then unused). Biases start at 0, norm scales 1 and shifts 0.
      weight_scale: std of the ``"normal"`` init.
      bn_momentum: running-average coefficient, ``new = momentum * old + (1 - momentum) * batch`` (batch,
        ghost, renorm).
      bn_eps: epsilon (inside the square root) of batch, ghost and renorm.
      bn_average: ``"ema"``, ``"cumulative"`` (simple average of every batch's statistics) or
        ``"debiased"`` (zero-debiased EMA); see :func:`bnjax.batch_norm`.
      bn_unbiased: store the unbiased ``n / (n - 1)`` batch variance in the running variance.
      ln_eps: epsilon of layer, group and RMS norm.
      norm_position: ``"before"`` the activation (Ioffe & Szegedy's placement, the default) or ``"after"``.
      groups: ``norm="group"``: number of groups, dividing every hidden width (give it or ``group_size``).
      group_size: ``norm="group"``: features per group instead of ``groups``.
      virtual_batch_size: ``norm="ghost"``: rows per ghost batch (>= 2; must divide the training batch size).
      renorm_rmax, renorm_dmax: ``norm="renorm"``: final clipping bounds of ``r`` (>= 1) and ``|d|`` (>= 0);
        Ioffe (2017) ends at 3 and 5; ``inf`` is no bound.
      renorm_warmup_steps: ``norm="renorm"``: steps of the linear ramp of the bounds from batch norm's
        (``rmax = 1``, ``dmax = 0``) to the final ones (:func:`bnjax.renorm_schedule`); 0: no ramp.
      renorm_hold_steps: ``norm="renorm"``: steps of plain batch norm before the ramp (the paper: 5000).
      precision: matmul precision of the dense layers (:func:`bnjax.dense`): None (default) -- JAX's default
        (on NVIDIA GPUs float32 matmuls run as TF32, about 1e-3 relative error); ``"default"``, ``"high"`` or
        ``"highest"`` (true float32); a ``jax.lax.Precision`` is stored by its name (``"highest"``).

    Keys that belong to another norm are ignored (so a config may set them in a table its variants share).
    """

    in_features: int | None = None
    hidden: tuple[int, ...] = (100, 100, 100, 100, 100)
    num_classes: int | None = 10
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
    norm_position: str = "before"
    groups: int | None = None
    group_size: int | None = None
    virtual_batch_size: int | None = None
    renorm_rmax: float = 3.0
    renorm_dmax: float = 5.0
    renorm_warmup_steps: int = 0
    renorm_hold_steps: int = 0
    precision: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.hidden, list):
            object.__setattr__(self, "hidden", tuple(self.hidden))
        if isinstance(self.precision, jax.lax.Precision):  # by name: hashable, JSON-able, equal either way
            object.__setattr__(self, "precision", self.precision.name.lower())
        bad = _validate(self)
        if bad is not None:
            raise FieldError("MLPSpec", *bad)

    @property
    def num_layers(self) -> int:
        """Number of dense layers, ``len(hidden) + 1``."""
        return len(self.hidden) + 1

    def replace(self, **changes: Any) -> MLPSpec:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def norm_settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`norm_layer` that this spec sets (``bn_*``, ``ln_eps``, ...)."""
        return {name: getattr(self, name) for name in _NORM_SETTINGS}


_NORM_SETTINGS = ("bn_momentum", "bn_eps", "bn_average", "bn_unbiased", "ln_eps", "groups", "group_size",
                  "virtual_batch_size", "renorm_rmax", "renorm_dmax", "renorm_warmup_steps", "renorm_hold_steps")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _validate(s: MLPSpec) -> tuple[str, Any, str] | None:
    """The first problem with ``s`` as ``(field, value, what would be accepted)``, or None."""
    choices = {
        "norm": NORMS,
        "norm_position": NORM_POSITIONS,
        "dropout_layers": DROPOUT_LAYERS,
        "activation": tuple(ACTIVATIONS),
        "init": INITS,
        "bn_average": AVERAGES,
    }
    for name, valid in choices.items():
        v = getattr(s, name)
        if v not in valid:
            return name, v, f"is not a valid option; use one of {valid}."
    for name in ("in_features", "num_classes"):
        v = getattr(s, name)
        if v is not None and (not _is_int(v) or v < 1):
            return name, v, "must be a positive int (or None: from the data)."
    if not isinstance(s.hidden, tuple) or not all(_is_int(h) and h >= 1 for h in s.hidden):
        return "hidden", s.hidden, "must be a tuple of positive ints, e.g. (100, 100)."
    if not _is_number(s.dropout) or not drop_rate_ok(s.dropout):
        return "dropout", s.dropout, DROP_RATE_RANGE
    if not _is_number(s.bn_momentum) or not momentum_ok(s.bn_momentum):
        return "bn_momentum", s.bn_momentum, MOMENTUM_RANGE
    for name in ("weight_scale", "bn_eps", "ln_eps"):
        v = getattr(s, name)
        if not _is_finite(v) or not v > 0:
            return name, v, "must be a positive finite number."
    if not isinstance(s.bn_unbiased, bool):
        return "bn_unbiased", s.bn_unbiased, "must be True or False."
    for name in ("groups", "group_size", "virtual_batch_size"):
        v = getattr(s, name)
        if v is not None and (not _is_int(v) or v < 1):
            return name, v, "must be a positive int (or unset)."
    for name in ("renorm_warmup_steps", "renorm_hold_steps"):
        v = getattr(s, name)
        if not _is_int(v) or v < 0:
            return name, v, "must be an int >= 0 (steps; 0 turns it off)."
    # inf is meaningful here: an unbounded clip (renorm_rmax = renorm_dmax = inf normalises with the running
    # statistics, as in eval mode); NaN fails both comparisons.
    if not _is_number(s.renorm_rmax) or not s.renorm_rmax >= 1:
        return "renorm_rmax", s.renorm_rmax, ("must be a number >= 1 (the bound of r = sigma_B / sigma; 1 is batch "
                                              "norm, inf no bound).")
    if not _is_number(s.renorm_dmax) or not s.renorm_dmax >= 0:
        return "renorm_dmax", s.renorm_dmax, "must be a number >= 0 (the bound of |d|; 0 is batch norm, inf no bound)."
    if s.precision is not None and s.precision not in PRECISIONS:
        return "precision", s.precision, PRECISION_EXPECTED
    if s.norm == "group":
        if s.groups is None and s.group_size is None:
            return "groups", None, ("is unset: norm='group' needs groups (the number of groups) or group_size "
                                    "(features per group), e.g. groups = 4.")
        if s.groups is not None and s.group_size is not None:
            return "group_size", s.group_size, f"is set together with groups={s.groups}; set only one of them."
        name = "groups" if s.groups is not None else "group_size"
        v = getattr(s, name)
        for width in s.hidden:
            if width % v:
                common = [d for d in _divisors(width) if all(h % d == 0 for h in s.hidden)]
                return name, v, (f"does not divide the hidden width {width} (hidden={s.hidden}); use a divisor of "
                                 f"every width, one of {common}.")
    if s.norm == "ghost":
        if s.virtual_batch_size is None:
            return "virtual_batch_size", None, ("is unset: norm='ghost' needs the rows per ghost batch, e.g. "
                                                "virtual_batch_size = 16.")
        if s.virtual_batch_size < 2:
            return "virtual_batch_size", s.virtual_batch_size, ("must be >= 2 (a ghost batch of 1 row has variance "
                                                                "0).")
    return None


def norm_layer(
    norm: str,
    num_features: int,
    *,
    bn_momentum: float = 0.9,
    bn_eps: float = 1e-5,
    bn_average: str = "ema",
    bn_unbiased: bool = False,
    ln_eps: float = 1e-5,
    groups: int | None = None,
    group_size: int | None = None,
    virtual_batch_size: int | None = None,
    renorm_rmax: float = 3.0,
    renorm_dmax: float = 5.0,
    renorm_warmup_steps: int = 0,
    renorm_hold_steps: int = 0,
) -> Layer | None:
    """The normalization layer named ``norm`` over ``num_features`` channels-last features, or None for "none".

    The keyword arguments are :class:`MLPSpec`'s (and a config's ``[model]`` keys), so a model factory can
    forward them: ``norm_layer(norm, 64, **options)``. ``"batch"`` -> :func:`BatchNorm`, ``"ghost"`` ->
    :func:`GhostBatchNorm`, ``"renorm"`` -> :func:`BatchRenorm` (all three with ``bn_*``; pytree name
    ``"bn"``), ``"layer"`` -> :func:`LayerNorm` (``"ln"``), ``"group"`` -> :func:`GroupNorm` (``"gn"``),
    ``"rms"`` -> :func:`RMSNorm` (``"rms"``), the last three with ``eps=ln_eps``.
    """
    bn = {"momentum": bn_momentum, "eps": bn_eps, "average": bn_average, "unbiased_var": bn_unbiased}
    if norm == "none":
        return None
    if norm == "batch":
        return BatchNorm(num_features, **bn)
    if norm == "ghost":
        if virtual_batch_size is None:
            raise ValueError("norm_layer: norm='ghost' needs virtual_batch_size, the rows per ghost batch.")
        return GhostBatchNorm(num_features, virtual_batch_size=virtual_batch_size, **bn)
    if norm == "renorm":
        return BatchRenorm(num_features, rmax=renorm_rmax, dmax=renorm_dmax, warmup_steps=renorm_warmup_steps,
                           hold_steps=renorm_hold_steps, **bn)
    if norm == "layer":
        return LayerNorm(num_features, eps=ln_eps)
    if norm == "group":
        return GroupNorm(num_features, num_groups=groups, group_size=group_size, eps=ln_eps)
    if norm == "rms":
        return RMSNorm(num_features, eps=ln_eps)
    raise ValueError(f"norm_layer: norm={norm!r} is not a valid option; use one of {NORMS}.")


def mlp(spec: MLPSpec) -> Layer:
    """The MLP described by ``spec`` as a :class:`bnjax.Layer`: ``serial`` of its dense, norm, activation and
    dropout layers.

    ``init(key, *, weight_scale=None) -> (params, batch_stats)``: ``params = {"dense_0": {"weight": (h0, D)},
    "bn_0": {"scale", "bias"}, ..., "dense_L": {"weight": (C, h_last), "bias": (C,)}}`` (a dense layer has a
    ``"bias"`` unless a batch norm follows it; ``"ln_i"``/``"gn_i"``/``"rms_i"`` for the per-example norms)
    and ``batch_stats = {"bn_i": {"mean", "var"[, "count"]}}`` (empty without a batch norm). Layer ``j`` of
    the list (dense_0, bn_0, relu_0, dropout_0, dense_1, ...) is initialised from ``fold_in(key, j)``, as by
    :func:`bnjax.serial`.

    ``apply(params, batch_stats, x, train, *, key=None, dropout=None, bn_momentum=None, ...)``: logits
    ``(N, num_classes)`` of ``x (N, in_features)`` and the new batch statistics (``batch_stats`` itself in
    eval mode). ``key`` is required in train mode when the drop rate may be non-zero. Options (traced values
    allowed) override the spec per call: ``weight_scale`` at init, ``dropout``, ``bn_momentum``,
    ``bn_average``, ``bn_unbiased``, ``axis_name`` (synchronized batch norm) and ``step`` (renorm warm-up)
    when applied (see :class:`bnjax.Layer`); any other option raises ValueError. The dense layers compute with
    ``spec.precision``.
    """
    if not isinstance(spec, MLPSpec):
        raise TypeError(f"mlp: spec must be an MLPSpec, got {type(spec).__name__}; e.g. mlp(MLPSpec(in_features=784)).")
    for name in ("in_features", "num_classes"):
        if getattr(spec, name) is None:
            raise ValueError(f"mlp: spec.{name} is None; set it, e.g. spec.replace({name}=...) "
                             f"(bnjax.train.train_ensemble fills it from the data).")
    return _build(spec)


@functools.lru_cache(maxsize=64)
def _build(spec: MLPSpec, flatten: bool = False) -> Layer:
    # Cached: equal specs give the same Layer object, so compiled programs keyed by it are reused. ``flatten``:
    # examples of any shape are flattened first (what as_layer builds for data that is not flat).
    layers: list[Layer] = []
    sizes = (spec.in_features, *spec.hidden, spec.num_classes)
    shift = spec.norm in BATCH_NORMS and spec.norm_position == "before"  # the norm's shift replaces the bias
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        hidden = i < len(spec.hidden)
        layers.append(Dense(fan_in, fan_out, init=spec.init, weight_scale=spec.weight_scale,
                            use_bias=not (hidden and shift), precision=spec.precision))
        if not hidden:
            break
        norm = norm_layer(spec.norm, fan_out, **spec.norm_settings())
        act = Activation(ACTIVATIONS[spec.activation], spec.activation)
        block = [norm, act] if spec.norm_position == "before" else [act, norm]
        layers.extend(layer for layer in block if layer is not None)
        if spec.dropout_layers == "all" or i == len(spec.hidden) - 1:
            layers.append(Dropout(spec.dropout))
    named = serial(*layers).layers
    in_features = spec.in_features

    def init(key: PRNGKey, **options: Any) -> tuple[Params, State]:
        check_options("mlp", named, "init", options)
        return init_layers(named, key, **options)

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
              **options: Any) -> tuple[Array, State]:
        if flatten and x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        if x.ndim != 2 or x.shape[1] != in_features:
            raise ValueError(
                f"mlp: x has shape {tuple(x.shape)}, expected (N, {in_features}); flatten the input first, e.g. "
                f"x.reshape(len(x), -1)."
            )
        check_options("mlp", named, "apply", options)
        return apply_layers(named, params, batch_stats, x, train, key=key, **options)

    defaults = tuple((k, getattr(spec, k)) for k in MEMBER_DEFAULTS)
    return Layer(init, apply, "mlp", named, defaults=defaults, spec=spec)


MEMBER_DEFAULTS = ("weight_scale", "dropout", "bn_momentum")
"""The spec's values that :func:`mlp` records as ``Layer.defaults``: an ensemble's members may sweep them."""


def as_layer(model: Layer | MLPSpec, fn: str, *, input_shape: tuple[int, ...] | None = None,
             num_classes: int | None = None) -> Layer:
    """``model`` as a :class:`bnjax.Layer`: a Layer as it is; an :class:`MLPSpec` built by :func:`mlp`, its
    unset ``in_features``/``num_classes`` taken from ``input_shape`` (one example's shape) and ``num_classes``;
    for examples of more than one axis the MLP's ``apply`` flattens them first.

    ``fn`` names the caller in errors. Raises ValueError when a spec's sizes are unset and not given, or set and
    different from the data's; TypeError for anything else.
    """
    if isinstance(model, Layer):
        return model
    if not isinstance(model, MLPSpec):
        raise TypeError(f"{fn}: the model must be a bnjax.Layer (an init/apply pair, e.g. bnjax.serial(...)) or an "
                        f"MLPSpec, got {type(model).__name__}.")
    given = {"in_features": None if input_shape is None else math.prod(input_shape), "num_classes": num_classes}
    fills = {}
    for name, value in given.items():
        mine = getattr(model, name)
        if mine is None and value is None:
            raise ValueError(f"{fn}: the MLPSpec has {name}=None; set it (train_ensemble fills it from the data).")
        if mine is not None and value is not None and mine != value:
            what = (f"{value} features per example (shape {tuple(input_shape)})" if name == "in_features"
                    else f"{value} classes")
            raise ValueError(f"{fn}: the data has {what} but spec.{name}={mine}; set MLPSpec({name}={value}) "
                             f"(or None: from the data).")
        if mine is None:
            fills[name] = value
    spec = model.replace(**fills) if fills else model
    mlp(spec)  # its checks
    return _build(spec, input_shape is not None and len(input_shape) > 1)


def mlp_init(key: PRNGKey, spec: MLPSpec, *, weight_scale: Any = None) -> tuple[Params, State]:
    """``mlp(spec).init(key, weight_scale=weight_scale)`` (kept for code written against the function pair)."""
    return mlp(spec).init(key, **({} if weight_scale is None else {"weight_scale": weight_scale}))


def mlp_apply(
    params: Params, batch_stats: State, x: Array, train: bool, *, spec: MLPSpec, key: PRNGKey | None = None,
    **options: Any,
) -> tuple[Array, State]:
    """``mlp(spec).apply(params, batch_stats, x, train, key=key, **options)`` (kept for code written against
    the function pair)."""
    return mlp(spec).apply(params, batch_stats, x, train, key=key, **options)
