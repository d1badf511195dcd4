"""bnjax: normalization and dropout you can see through.

Every layer is a pair of pure functions, ``init`` and
``apply(params, batch_stats, x, train, *, key=None, **options) -> (y, new_batch_stats)``; running statistics
are threaded by the caller. Public names are re-exported here; modules starting with ``_`` are private.
Subpackages: :mod:`bnjax.train` (training engine), :mod:`bnjax.data` (loaders), :mod:`bnjax.run` (configs,
runner, CLI), :mod:`bnjax.flax` and :mod:`bnjax.interop` (Flax and PyTorch interop).
"""

from bnjax import train as train  # the training engine (imports bnjax.nn only, so no cycle)
from bnjax._typing import Layer as Layer
from bnjax._typing import Params as Params
from bnjax._typing import PRNGKey as PRNGKey
from bnjax._typing import State as State
from bnjax.nn import batch_norm as batch_norm
from bnjax.nn import batch_norm_init as batch_norm_init
from bnjax.nn import Activation as Activation
from bnjax.nn import BatchNorm as BatchNorm
from bnjax.nn import Dense as Dense
from bnjax.nn import Dropout as Dropout
from bnjax.nn import LayerNorm as LayerNorm
from bnjax.nn import serial as serial
from bnjax.nn import dense as dense
from bnjax.nn import dense_init as dense_init
from bnjax.nn import dropout as dropout
from bnjax.nn import dropout_init as dropout_init
from bnjax.nn import GradCheckRow as GradCheckRow
from bnjax.nn import format_gradcheck as format_gradcheck
from bnjax.nn import gradcheck_layers as gradcheck_layers
from bnjax.nn import numeric_grad as numeric_grad
from bnjax.nn import numeric_vjp as numeric_vjp
from bnjax.nn import rel_error as rel_error
from bnjax.nn import layer_norm as layer_norm
from bnjax.nn import layer_norm_init as layer_norm_init
from bnjax.nn import MLPSpec as MLPSpec
from bnjax.nn import mlp as mlp
from bnjax.nn import mlp_apply as mlp_apply
from bnjax.nn import mlp_init as mlp_init
from bnjax.nn import compute_stats as compute_stats
from bnjax.nn import normalize_affine as normalize_affine
from bnjax.nn import normalize_affine_autodiff as normalize_affine_autodiff
from bnjax.nn import update_running_stats as update_running_stats
from bnjax.nn import fold_batch_norm as fold_batch_norm
from bnjax.nn import fold_mlp as fold_mlp
from bnjax.nn import ghost_batch_norm as ghost_batch_norm
from bnjax.nn import group_norm as group_norm
from bnjax.nn import group_norm_init as group_norm_init
from bnjax.nn import batch_renorm as batch_renorm
from bnjax.nn import renorm_schedule as renorm_schedule
from bnjax.nn import normalize_rms as normalize_rms
from bnjax.nn import normalize_rms_autodiff as normalize_rms_autodiff
from bnjax.nn import rms_norm as rms_norm
from bnjax.nn import rms_norm_init as rms_norm_init
from bnjax.nn import Conv as Conv
from bnjax.nn import conv as conv
from bnjax.nn import conv_init as conv_init
from bnjax.nn import GroupNorm as GroupNorm
from bnjax.nn import AvgPool as AvgPool
from bnjax.nn import Flatten as Flatten
from bnjax.nn import GlobalAvgPool as GlobalAvgPool
from bnjax.nn import MaxPool as MaxPool
from bnjax.nn import avg_pool as avg_pool
from bnjax.nn import flatten as flatten
from bnjax.nn import global_avg_pool as global_avg_pool
from bnjax.nn import max_pool as max_pool

__version__ = "0.1.0"
__all__ = [
    "Layer",
    "Params",
    "PRNGKey",
    "State",
    "__version__",
    "train",
    "batch_norm",
    "batch_norm_init",
    "Activation",
    "BatchNorm",
    "Dense",
    "Dropout",
    "LayerNorm",
    "serial",
    "dense",
    "dense_init",
    "dropout",
    "dropout_init",
    "GradCheckRow",
    "format_gradcheck",
    "gradcheck_layers",
    "numeric_grad",
    "numeric_vjp",
    "rel_error",
    "layer_norm",
    "layer_norm_init",
    "MLPSpec",
    "mlp",
    "mlp_apply",
    "mlp_init",
    "compute_stats",
    "normalize_affine",
    "normalize_affine_autodiff",
    "update_running_stats",
    "fold_batch_norm",
    "fold_mlp",
    "ghost_batch_norm",
    "group_norm",
    "group_norm_init",
    "batch_renorm",
    "renorm_schedule",
    "normalize_rms",
    "normalize_rms_autodiff",
    "rms_norm",
    "rms_norm_init",
    "Conv",
    "conv",
    "conv_init",
    "GroupNorm",
    "AvgPool",
    "Flatten",
    "GlobalAvgPool",
    "MaxPool",
    "avg_pool",
    "flatten",
    "global_avg_pool",
    "max_pool",
]
