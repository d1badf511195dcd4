"""Interoperability: PyTorch state-dict converters (:mod:`bnjax.interop.torch`, no torch import needed). The
flax.linen drop-in modules are :mod:`bnjax.flax`."""

from bnjax.interop.torch import bnjax_momentum_to_torch as bnjax_momentum_to_torch
from bnjax.interop.torch import from_torch_batch_norm as from_torch_batch_norm
from bnjax.interop.torch import from_torch_layer_norm as from_torch_layer_norm
from bnjax.interop.torch import to_torch_batch_norm as to_torch_batch_norm
from bnjax.interop.torch import torch_momentum_to_bnjax as torch_momentum_to_bnjax

__all__ = [
    "bnjax_momentum_to_torch",
    "from_torch_batch_norm",
    "from_torch_layer_norm",
    "to_torch_batch_norm",
    "torch_momentum_to_bnjax",
]
