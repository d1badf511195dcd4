"""Layer factories for the normalizers that have none in ``_combinators`` yet: :func:`GroupNorm`."""

from __future__ import annotations

from typing import Any

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn import _checks
from bnjax.nn._group_norm import _resolve_groups, group_norm, group_norm_init


def GroupNorm(
    num_channels: int,
    *,
    num_groups: int | None = None,
    group_size: int | None = None,
    eps: float = 1e-5,
    grad: str = "analytic",
    dtype: Any = None,
) -> Layer:
    """:func:`bnjax.group_norm` over the last axis of ``(N, ..., C)`` inputs as a :class:`Layer` (name ``"gn"``).

    Give ``num_groups`` (default 32, which must divide ``num_channels``) or ``group_size``; both are checked
    here, when the model is built. No running statistics: ``init`` returns ``({"scale", "bias"}, {})`` and
    ``apply`` is the same in train and eval mode. ``apply`` accepts and ignores extra keyword options.
    """
    if not _checks.is_int(num_channels) or num_channels < 1:
        raise ValueError(f"GroupNorm: num_channels={num_channels!r} must be a positive int.")
    _resolve_groups("GroupNorm", num_channels, num_groups, group_size)
    init_kw = {} if dtype is None else {"dtype": dtype}

    def init(key: PRNGKey) -> tuple[Params, State]:
        return group_norm_init(num_channels, **init_kw)

    def apply(params: Params, batch_stats: State, x: Array, train: bool, *, key: PRNGKey | None = None,
              **options: Any) -> tuple[Array, State]:
        del options
        return group_norm(
            params, batch_stats, x, train, key=key, num_groups=num_groups, group_size=group_size, eps=eps, grad=grad
        )

    return Layer(init, apply, "gn")
