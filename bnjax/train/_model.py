"""What the engine asks of a :class:`bnjax.Layer` beyond ``init``/``apply``: which options it takes, and whether
its state holds running statistics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bnjax._typing import Layer
from bnjax.nn._combinators import layer_options


def takes(layer: Layer, option: str, which: str = "apply") -> bool:
    """Whether ``layer``'s ``which`` (``"init"``/``"apply"``) may read ``option`` (a layer taking ``**options``
    may read anything)."""
    names = layer_options(layer, which)
    return names is None or option in names


def stats_layout(batch_stats: Mapping[str, Any]) -> bool:
    """Whether ``batch_stats`` holds any running statistics (a dict with ``"mean"`` and ``"var"``)."""
    if "mean" in batch_stats and "var" in batch_stats:
        return True
    return any(isinstance(v, Mapping) and stats_layout(v) for v in batch_stats.values())
