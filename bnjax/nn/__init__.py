"""Pure layers: batch/ghost/renorm/layer/group/RMS norm, dropout, dense, the layer factories and ``serial``,
the MLP, folding, the shared statistics the normalizers are built from, and gradient checks.

The ``*_autodiff`` reference twins of the hand-written backward passes stay in their modules (tests import
them from there).
"""

from bnjax.nn._batch_norm import batch_norm as batch_norm
from bnjax.nn._batch_norm import batch_norm_init as batch_norm_init
from bnjax.nn._combinators import Activation as Activation
from bnjax.nn._combinators import BatchNorm as BatchNorm
from bnjax.nn._combinators import BatchRenorm as BatchRenorm
from bnjax.nn._combinators import Dense as Dense
from bnjax.nn._combinators import Dropout as Dropout
from bnjax.nn._combinators import GhostBatchNorm as GhostBatchNorm
from bnjax.nn._combinators import GroupNorm as GroupNorm
from bnjax.nn._combinators import LayerNorm as LayerNorm
from bnjax.nn._combinators import RMSNorm as RMSNorm
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
from bnjax.nn._mlp import norm_layer as norm_layer
from bnjax.nn._renorm import batch_renorm as batch_renorm
from bnjax.nn._renorm import renorm_schedule as renorm_schedule
from bnjax.nn._rms_norm import normalize_rms as normalize_rms
from bnjax.nn._rms_norm import rms_norm as rms_norm
from bnjax.nn._rms_norm import rms_norm_init as rms_norm_init
from bnjax.nn._stats import compute_stats as compute_stats
from bnjax.nn._stats import normalize_affine as normalize_affine
from bnjax.nn._batch_norm import update_running_stats as update_running_stats
from bnjax.nn._conv import Conv as Conv
from bnjax.nn._conv import conv as conv
from bnjax.nn._conv import conv_init as conv_init
from bnjax.nn._pool import AvgPool as AvgPool
from bnjax.nn._pool import Flatten as Flatten
from bnjax.nn._pool import GlobalAvgPool as GlobalAvgPool
from bnjax.nn._pool import MaxPool as MaxPool
from bnjax.nn._pool import avg_pool as avg_pool
from bnjax.nn._pool import flatten as flatten
from bnjax.nn._pool import global_avg_pool as global_avg_pool
from bnjax.nn._pool import max_pool as max_pool

__all__ = [
    "AvgPool",
    "Conv",
    "Flatten",
    "GlobalAvgPool",
    "MaxPool",
    "avg_pool",
    "conv",
    "conv_init",
    "flatten",
    "global_avg_pool",
    "max_pool",
    "Activation",
    "BatchNorm",
    "BatchRenorm",
    "Dense",
    "Dropout",
    "GhostBatchNorm",
    "GradCheckRow",
    "GroupNorm",
    "LayerNorm",
    "MLPSpec",
    "RMSNorm",
    "batch_norm",
    "batch_norm_init",
    "batch_renorm",
    "compute_stats",
    "dense",
    "dense_init",
    "dropout",
    "dropout_init",
    "fold_batch_norm",
    "fold_mlp",
    "format_gradcheck",
    "ghost_batch_norm",
    "gradcheck_layers",
    "group_norm",
    "group_norm_init",
    "layer_norm",
    "layer_norm_init",
    "mlp",
    "norm_layer",
    "normalize_affine",
    "normalize_rms",
    "numeric_grad",
    "numeric_vjp",
    "rel_error",
    "renorm_schedule",
    "rms_norm",
    "rms_norm_init",
    "serial",
    "update_running_stats",
]
