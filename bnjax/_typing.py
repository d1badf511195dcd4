"""Types shared by every bnjax module (one place, as optax's ``base.py``): aliases, ``Layer``, ``FieldError``."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = dict[str, Any]
"""Trainable parameters of a layer or model: a (nested) dict of arrays."""
State = dict[str, Any]
"""Running statistics (``batch_stats``) of a layer or model: a (nested) dict of arrays."""
Shape = tuple[int, ...]


class InitFn(Protocol):
    def __call__(self, key: PRNGKey, **options: Any) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    def __call__(
        self, params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
        **options: Any,
    ) -> tuple[Array, State]: ...


class Layer(NamedTuple):
    """A layer (or a whole model) as a pair of pure functions.

    ``init(key, **init_options) -> (params, batch_stats)`` and
    ``apply(params, batch_stats, x, train, *, key=None, **options) -> (y, new_batch_stats)``.

    **Options** are keyword arguments that reach the layers of a model by name, so that one compiled program
    can sweep them per ensemble member (``jax.vmap`` over traced values). A layer declares the options it
    reads as keyword-only parameters; :func:`bnjax.serial` hands each layer only the options it declares
    (everything to a layer whose function takes ``**options``), so a plain ``apply(params, batch_stats, x,
    train, *, key=None)`` composes too; an option that no layer of the model reads (a misspelling such as
    ``bn_momentom``) is a ValueError naming it and the options the model reads. ``None`` means "the value the
    layer was built with". ``precision`` is not an option: it is fixed when a layer is built
    (``Dense(..., precision="highest")``). The bnjax layers read:

    ==================  =======  =======================================================================
    option              where    read by
    ==================  =======  =======================================================================
    ``weight_scale``    init     :func:`bnjax.Dense` (std of the ``"normal"`` init)
    ``dropout``         apply    :func:`bnjax.Dropout` (drop probability)
    ``bn_momentum``     apply    :func:`bnjax.BatchNorm`, :func:`bnjax.GhostBatchNorm`,
                                 :func:`bnjax.BatchRenorm` (running-average momentum)
    ``bn_average``      apply    the same three (``"cumulative"`` is how precise BN re-estimates statistics)
    ``bn_unbiased``     apply    the same three (store the ``n / (n - 1)`` variance)
    ``axis_name``       apply    :func:`bnjax.BatchNorm`, :func:`bnjax.BatchRenorm` (synchronized statistics)
    ``step``            apply    :func:`bnjax.BatchRenorm` (global step, for its ``rmax``/``dmax`` warm-up)
    ``row_index``       apply    :func:`bnjax.Dropout` (each row's position in the global batch: per-row masks)
    ==================  =======  =======================================================================

    The training engine (:mod:`bnjax.train`) passes a member's swept ``dropout``/``bn_momentum`` to
    ``apply``, its ``weight_scale`` to ``init``, and ``step``/``row_index``/``axis_name`` where the model takes
    them.

    Attributes:
      init: ``init(key, **init_options) -> (params, batch_stats)``.
      apply: ``apply(params, batch_stats, x, train, *, key=None, **options) -> (y, new_batch_stats)``.
      name: prefix used by :func:`bnjax.serial` to build readable pytree keys
        (``"dense"`` gives ``"dense_0"``, ``"dense_1"``, ...).
      layers: for a composition (:func:`bnjax.serial`), its ``(name, layer)`` pairs in order; ``()`` for a
        single layer. The training engine reads it for its fast paths (a shared first dense layer) and its
        divergence check; ``apply`` alone defines what the layer computes.
      defaults: ``(option, value)`` pairs: the values of per-call options the layer was built with (``mlp(spec)``
        records the spec's ``weight_scale``, ``dropout`` and ``bn_momentum``). The training engine makes them
        each member's traced settings, so members that sweep them share one compiled program; ``()``: none.
      spec: the hashable description the layer was built from (``mlp(spec)`` records its
        :class:`bnjax.MLPSpec`), kept with results and checkpoint fingerprints; None for a plain layer.
    """

    init: Callable[..., tuple[Params, State]]
    apply: Callable[..., tuple[Array, State]]
    name: str = "layer"
    layers: tuple[tuple[str, Layer], ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()
    spec: Any = None


class FieldError(ValueError):
    """A settings dataclass (``MLPSpec``, ``TrainConfig``, a member) got an invalid value for one field.

    The message is ``"<owner>: <field>=<value> <expected>"``; the parts are kept as attributes so that a
    config reader can restate the error against its own key (``model.norm = 'bn' is not a valid option...``)
    without parsing the text.

    Attributes:
      owner: the class or function that rejected the value, e.g. ``"MLPSpec"``.
      field: the field's name.
      value: the rejected value.
      expected: what would be accepted, a sentence starting after the value ("must be in [0, 1).").
    """

    def __init__(self, owner: str, field: str, value: Any, expected: str) -> None:
        self.owner, self.field, self.value, self.expected = owner, field, value, expected
        super().__init__(f"{owner}: {field}={value!r} {expected}")
