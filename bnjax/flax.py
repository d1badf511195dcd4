"""``import bnjax.flax as bnn``: flax.linen ``BatchNorm``/``LayerNorm``/``Dropout`` backed by bnjax.

The modules live in :mod:`bnjax.interop.flax` (see its docstring for what differs from Flax).
"""

from bnjax.interop.flax import BatchNorm as BatchNorm
from bnjax.interop.flax import Dropout as Dropout
from bnjax.interop.flax import LayerNorm as LayerNorm

__all__ = ["BatchNorm", "Dropout", "LayerNorm"]
