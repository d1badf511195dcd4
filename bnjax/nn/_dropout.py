"""Inverted dropout (Srivastava et al. 2014) as a pure function with an explicit key."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from bnjax._typing import Array, Params, PRNGKey, State
from bnjax.nn import _checks


def dropout_init() -> tuple[Params, State]:
    """Dropout has neither parameters nor statistics: returns ``({}, {})``."""
    return {}, {}


def dropout(
    params: Params,
    batch_stats: State,
    x: Array,
    train: bool,
    *,
    key: PRNGKey | None = None,
    rate: Any = 0.5,
    broadcast_dims: Sequence[int] = (),
) -> tuple[Array, State]:
    """Inverted dropout; ``rate`` is the probability of **dropping** a unit.

    Train mode: ``y = x * mask / (1 - rate)`` with ``mask ~ Bernoulli(1 - rate)``, so ``E[y] = x``; eval
    mode: ``y = x``. (CS231n's ``p`` is the keep probability, ``p = 1 - rate``; the paper scales weights by
    ``p`` at test time instead, which is equivalent in expectation.) ``rate = 1`` gives zeros and zero
    (not NaN) gradients; ``rate = 0`` is the identity.

    Args:
      params, batch_stats: returned/ignored for the shared signature (normally ``{}``).
      x: floating input of any shape.
      train: Python bool.
      key: PRNG key, required in train mode when ``rate`` may be non-zero.
      rate: drop probability in [0, 1]; may be a traced array (e.g. swept by ``jax.vmap``).
      broadcast_dims: axes along which one mask value is shared (e.g. ``(1, 2)`` drops whole channels of
        an ``(N, H, W, C)`` input).

    Returns:
      ``(y, batch_stats)``; ``y`` has the shape and dtype of ``x``.
    """
    del params
    fn = "dropout"
    x = _checks.check_float_input(fn, x)
    _checks.check_in_range(fn, "rate", rate, 0.0, 1.0)
    rate_c = _checks.concrete_float(rate)
    if not train or rate_c == 0.0:
        return x, batch_stats
    if key is None:
        raise ValueError(
            f"{fn}: train mode with rate={rate if rate_c is None else rate_c} needs a PRNG key, e.g. "
            f"dropout({{}}, {{}}, x, True, rate=0.5, key=jax.random.key(0)); pass train=False to disable dropout."
        )
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask_shape = tuple(1 if i in {d % x.ndim for d in broadcast_dims} else s for i, s in enumerate(x.shape))
    mask = jax.random.bernoulli(key, keep, mask_shape)
    # The mask is drawn in float32 (one mask per key whatever x.dtype); the scale is formed in the wider of
    # float32 and x.dtype, so float64 inputs get an exact 1 / (1 - rate), not a float32-rounded one.
    keep = 1.0 - jnp.asarray(rate, jnp.promote_types(x.dtype, jnp.float32))
    # 1/keep is only formed where keep > 0, so rate == 1 gives zeros and finite (zero) gradients.
    safe_keep = jnp.where(keep > 0.0, keep, 1.0)
    scale = jnp.where(keep > 0.0, 1.0 / safe_keep, 0.0).astype(x.dtype)
    return jnp.where(mask, x * scale, jnp.zeros((), x.dtype)), batch_stats
