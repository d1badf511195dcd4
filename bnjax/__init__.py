"""bnjax: normalization and dropout you can see through.

Every layer is a pair of pure functions, ``init`` and
``apply(params, batch_stats, x, train, *, key=None, **options) -> (y, new_batch_stats)``; running statistics
are threaded by the caller. The names below are the public surface (layers, their :class:`Layer` factories,
composition, folding, gradient checks); modules starting with ``_`` are private. Subpackages:
:mod:`bnjax.nn` (all layers and the shared statistics), :mod:`bnjax.train` (training engine),
:mod:`bnjax.data` (loaders, NumPy only), :mod:`bnjax.run` (configs, runner, CLI), :mod:`bnjax.flax` (Flax
modules) and :mod:`bnjax.interop` (PyTorch state dicts).

The names are imported on first use (PEP 562), so ``import bnjax.data`` does not import JAX.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    "bnjax._typing": ("Layer", "Params", "PRNGKey", "State"),
    "bnjax.nn": (
        # layers as functions
        "batch_norm", "batch_norm_init", "ghost_batch_norm", "batch_renorm", "renorm_schedule",
        "layer_norm", "layer_norm_init", "group_norm", "group_norm_init", "rms_norm", "rms_norm_init",
        "dropout", "dropout_init", "dense", "dense_init", "conv", "conv_init",
        "max_pool", "avg_pool", "global_avg_pool", "flatten",
        # layers as Layer pairs, and composition
        "Activation", "BatchNorm", "BatchRenorm", "Dense", "Dropout", "GhostBatchNorm", "GroupNorm",
        "LayerNorm", "RMSNorm", "Conv", "MaxPool", "AvgPool", "GlobalAvgPool", "Flatten", "serial", "MLPSpec", "mlp", "norm_layer",
        # inference-time folding
        "fold_batch_norm", "fold_mlp",
        # gradient checks
        "gradcheck_layers", "numeric_grad", "numeric_vjp", "rel_error",
    ),
}
_SUBMODULES = ("nn", "train", "data", "run")
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_SUBMODULES, *_WHERE]


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f"bnjax.{name}")
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'bnjax' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
