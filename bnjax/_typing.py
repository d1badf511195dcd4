"""Type aliases shared by every bnjax module (one place, as optax's ``base.py``)."""

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
    def __call__(self, key: PRNGKey) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    def __call__(
        self, params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None
    ) -> tuple[Array, State]: ...


class Layer(NamedTuple):
    """A layer (or a model) as a pair of pure functions.

    Attributes:
      init: ``init(key) -> (params, batch_stats)``.
      apply: ``apply(params, batch_stats, x, train, *, key=None) -> (y, new_batch_stats)``.
      name: prefix used by :func:`bnjax.serial` to build readable pytree keys
        (``"dense"`` gives ``"dense_0"``, ``"dense_1"``, ...).
    """

    init: Callable[[PRNGKey], tuple[Params, State]]
    apply: Callable[..., tuple[Array, State]]
    name: str = "layer"
