"""Inverted dropout (Srivastava et al. 2014) as a pure function with an explicit key."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._typing import Array, Params, PRNGKey, State
from bnjax.nn import _checks


def dropout_init() -> tuple[Params, State]:
    """Dropout has neither parameters nor statistics: returns ``({}, {})``."""
    return {}, {}


def dropout(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None, rate: Any = 0.5,
            broadcast_dims: Sequence[int] = (), row_index: Any = None) -> tuple[Array, State]:
    """Inverted dropout; ``rate`` is the probability of **dropping** a unit.

    Train mode: ``y = x * mask / (1 - rate)`` with ``mask ~ Bernoulli(1 - rate)``, so ``E[y] = x``; eval
    mode: ``y = x``. (CS231n's ``p`` is the keep probability, ``p = 1 - rate``; the paper scales weights by
    ``p`` at test time instead, which is equivalent in expectation.) ``rate = 1`` gives zeros and zero
    (not NaN) gradients; ``rate = 0`` is the identity.

    The mask is ``jax.random.bernoulli(key, 1 - rate, shape)`` with ``1 - rate`` formed as Flax forms it (in
    Python for a Python ``rate``, so in float64 under ``jax_enable_x64``), so for the same key the masks are
    ``flax.linen.Dropout``'s, whatever ``x.dtype``.

    Args:
      params, batch_stats: returned/ignored for the shared signature (normally ``{}``).
      x: floating input of any shape.
      train: Python bool.
      key: PRNG key, required in train mode when ``rate`` may be non-zero.
      rate: drop probability in [0, 1]; may be a traced array (e.g. swept by ``jax.vmap``).
      broadcast_dims: axes (negative allowed) along which one mask value is shared (e.g. ``(1, 2)`` drops
        whole channels of an ``(N, H, W, C)`` input).
      row_index: optional ``(N,)`` integers, the position of each row of ``x`` (axis 0) in a larger batch. Given,
        row ``i``'s mask is ``bernoulli(fold_in(key, row_index[i]), 1 - rate, x.shape[1:])``: a function of the
        key and the row's position only, so a batch split over devices (each passing its rows' global
        positions) draws the masks of the whole batch on one device. The training engine passes it.

    Returns:
      ``(y, batch_stats)``; ``y`` has the shape and dtype of ``x``.
    """
    del params
    fn = "dropout"
    _checks.check_train(fn, train)
    x = _checks.check_float_input(fn, x)
    _checks.check_in_range(fn, "rate", rate, 0.0, 1.0)
    bdims = set(_checks.normalize_axes(fn, "broadcast_dims", broadcast_dims, x.ndim))
    rate_c = _checks.concrete_float(rate)
    if not train or rate_c == 0.0:
        return x, batch_stats
    if rate_c == 1.0:
        return jnp.zeros_like(x), batch_stats  # as Flax: no key drawn, zero (not NaN) gradients
    if key is None:
        raise ValueError(
            f"{fn}: train mode with rate={rate if rate_c is None else rate_c} needs a PRNG key, e.g. "
            f"dropout({{}}, {{}}, x, True, rate=0.5, key=jax.random.key(0)); pass train=False to disable dropout."
        )
    # Flax's mask exactly: keep = 1 - rate formed in the rate's own arithmetic (a Python float stays one, so
    # bernoulli draws in the default float dtype -- float64 under jax_enable_x64), then x / keep.
    keep = 1.0 - rate if isinstance(rate, (int, float, np.generic)) else 1.0 - jnp.asarray(rate)
    mask_shape = tuple(1 if i in bdims else s for i, s in enumerate(x.shape))
    if row_index is None:
        mask = jax.random.bernoulli(key, keep, mask_shape)
    else:
        row_index = jnp.asarray(row_index)
        if row_index.shape != x.shape[:1] or not jnp.issubdtype(row_index.dtype, jnp.integer) or 0 in bdims:
            raise ValueError(f"{fn}: row_index must be {x.shape[:1]} integers (one per row of x, whose axis 0 "
                             f"is not in broadcast_dims), got shape {row_index.shape} dtype {row_index.dtype}.")
        mask = jax.vmap(lambda r: jax.random.bernoulli(jax.random.fold_in(key, r), keep, mask_shape[1:]))(row_index)
    if rate_c is None:
        # A traced rate may be 1: divide only where keep > 0 (the mask is all False there), so the
        # gradient is 0, not NaN.
        keep = jnp.where(keep > 0.0, keep, 1.0)
    y = (x / keep).astype(x.dtype)
    return jnp.where(mask, y, jnp.zeros((), x.dtype)), batch_stats
