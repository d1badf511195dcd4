"""Pure layers: batch norm, layer norm, dropout, dense, ``serial``, the shared statistics and gradient checks."""

from bnjax.nn._batch_norm import batch_norm as batch_norm
from bnjax.nn._batch_norm import batch_norm_init as batch_norm_init
from bnjax.nn._combinators import Activation as Activation
from bnjax.nn._combinators import BatchNorm as BatchNorm
from bnjax.nn._combinators import Dense as Dense
from bnjax.nn._combinators import Dropout as Dropout
from bnjax.nn._combinators import LayerNorm as LayerNorm
from bnjax.nn._combinators import serial as serial
from bnjax.nn._dense import dense as dense
from bnjax.nn._dense import dense_init as dense_init
from bnjax.nn._dropout import dropout as dropout
from bnjax.nn._dropout import dropout_init as dropout_init
from bnjax.nn._fold import fold_batch_norm as fold_batch_norm
from bnjax.nn._fold import fold_mlp as fold_mlp
from bnjax.nn._ghost import ghost_batch_norm as ghost_batch_norm
from bnjax.nn._gradcheck import GradCheckRow as GradCheckRow
from bnjax.nn._gradcheck import format_gradcheck as format_gradcheck
from bnjax.nn._gradcheck import gradcheck_layers as gradcheck_layers
from bnjax.nn._gradcheck import numeric_grad as numeric_grad
from bnjax.nn._gradcheck import numeric_vjp as numeric_vjp
from bnjax.nn._gradcheck import rel_error as rel_error
from bnjax.nn._group_norm import group_norm as group_norm
from bnjax.nn._group_norm import group_norm_init as group_norm_init
from bnjax.nn._layer_norm import layer_norm as layer_norm
from bnjax.nn._layer_norm import layer_norm_init as layer_norm_init
from bnjax.nn._mlp import MLPSpec as MLPSpec
from bnjax.nn._mlp import mlp as mlp
from bnjax.nn._mlp import mlp_apply as mlp_apply
from bnjax.nn._mlp import mlp_init as mlp_init
from bnjax.nn._renorm import batch_renorm as batch_renorm
from bnjax.nn._renorm import renorm_schedule as renorm_schedule
from bnjax.nn._rms_norm import normalize_rms as normalize_rms
from bnjax.nn._rms_norm import normalize_rms_autodiff as normalize_rms_autodiff
from bnjax.nn._rms_norm import rms_norm as rms_norm
from bnjax.nn._rms_norm import rms_norm_init as rms_norm_init
from bnjax.nn._stats import compute_stats as compute_stats
from bnjax.nn._stats import normalize_affine as normalize_affine
from bnjax.nn._stats import normalize_affine_autodiff as normalize_affine_autodiff
from bnjax.nn._stats import update_running_stats as update_running_stats
from bnjax.nn._conv import Conv as Conv
from bnjax.nn._conv import conv as conv
from bnjax.nn._conv import conv_init as conv_init
from bnjax.nn._norm_layers import GroupNorm as GroupNorm
from bnjax.nn._pool import AvgPool as AvgPool
from bnjax.nn._pool import Flatten as Flatten
from bnjax.nn._pool import GlobalAvgPool as GlobalAvgPool
from bnjax.nn._pool import MaxPool as MaxPool
from bnjax.nn._pool import avg_pool as avg_pool
from bnjax.nn._pool import flatten as flatten
from bnjax.nn._pool import global_avg_pool as global_avg_pool
from bnjax.nn._pool import max_pool as max_pool

__all__ = [
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
