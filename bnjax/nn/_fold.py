"""Folding an eval-mode batch norm into the linear layer before it (inference-time fusion).

In eval mode batch norm is a per-feature affine map of its input ``z``::

    y = scale * (z - mean) / sqrt(var + eps) + bias = a * z + b,
    a = scale / sqrt(var + eps),   b = bias - a * mean

so a linear layer ``z = x @ W.T + c`` followed by it is the single linear layer ``W' = a[:, None] * W``,
``c' = a * c + b`` (``c = 0`` when the layer has no bias). The same holds for a convolution whose weight
has the output channels first (``(out, in, kh, kw)``, torch's OIHW layout): every output channel is scaled.
This is what ``torch.nn.utils.fusion.fuse_linear_bn_eval`` does; no JAX library ships it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._typing import Params, State
from bnjax.nn import _checks
from bnjax.nn._mlp import MLPSpec
from bnjax.nn._stats import compute_dtype


def _is_concrete(tree: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def fold_batch_norm(
    dense_params: Params, bn_params: Params, batch_stats: State, *, eps: float = 1e-5
) -> Params:
    """Folds an eval-mode batch norm into the preceding linear layer's weight and bias.

    With ``a = scale / sqrt(var + eps)`` and ``b = bias_bn - a * mean`` (per output feature)::

        weight' = a[:, None, ...] * weight        (weight is (out, in) or (out, in, *kernel))
        bias'   = a * bias_dense + b              (bias_dense = 0 if the layer has none)

    so ``dense(folded, x) == batch_norm(bn_params, batch_stats, dense(dense_params, x), False, eps=eps)``
    up to rounding. With concrete arrays the arithmetic is done in float64 NumPy and rounded once to the
    weight dtype (float32 eval outputs then agree to about 1e-6 relative); under ``jit``/``vmap`` (traced
    inputs, e.g. folding every member of an ensemble) it runs in ``jnp`` in at least float32.

    Args:
      dense_params: ``{"weight": (out, ...)[, "bias": (out,)]}`` -- bnjax's ``(out, in)`` dense layout.
      bn_params: ``{"scale", "bias"}`` of shape ``(out,)``.
      batch_stats: ``{"mean", "var"[, "count"]}`` of shape ``(out,)`` (running statistics as stored,
        i.e. exactly what eval-mode :func:`bnjax.batch_norm` uses).
      eps: the batch norm's ``eps`` (default ``1e-5``, :func:`bnjax.batch_norm`'s default).

    Returns:
      ``{"weight", "bias"}`` with the dtype of ``weight`` (a bias is always present).
    """
    fn = "fold_batch_norm"
    if not isinstance(dense_params, dict) or "weight" not in dense_params:
        raise ValueError(
            f"{fn}: dense_params must be a dict with a 'weight' of shape (out, in), got "
            f"{sorted(dense_params) if isinstance(dense_params, dict) else type(dense_params).__name__}."
        )
    extra = sorted(set(dense_params) - {"weight", "bias"})
    if extra:
        raise ValueError(f"{fn}: dense_params has unexpected keys {extra}; pass only 'weight' and 'bias'.")
    w = dense_params["weight"]
    if jnp.ndim(w) < 2:
        raise ValueError(f"{fn}: dense_params['weight'] has shape {jnp.shape(w)}; expected (out, in, ...).")
    out = jnp.shape(w)[0]
    fix = f"The batch norm must follow a layer with {out} outputs (weight shape {jnp.shape(w)})."
    _checks.check_tree(fn, "bn_params", bn_params, {"scale": (out,), "bias": (out,)}, fix)
    expected = {"mean": (out,), "var": (out,)}
    if "count" in batch_stats:
        expected["count"] = jnp.shape(batch_stats["count"])
    _checks.check_tree(fn, "batch_stats", batch_stats, expected, fix)
    if "bias" in dense_params and jnp.shape(dense_params["bias"]) != (out,):
        raise ValueError(f"{fn}: dense_params['bias'] has shape {jnp.shape(dense_params['bias'])}, expected ({out},).")

    leaves = (w, dense_params.get("bias"), bn_params, batch_stats["mean"], batch_stats["var"])
    if _is_concrete(leaves):
        xp, dt = np, np.float64
    else:
        xp, dt = jnp, compute_dtype(jnp.result_type(w))

    def arr(v: Any) -> Any:
        return xp.asarray(v).astype(dt)

    a = arr(bn_params["scale"]) / xp.sqrt(arr(batch_stats["var"]) + eps)
    b = arr(bn_params["bias"]) - a * arr(batch_stats["mean"])
    c = arr(dense_params["bias"]) if "bias" in dense_params else xp.zeros((out,), dt)
    w_dtype = jnp.result_type(w)
    new_w = a.reshape((out,) + (1,) * (jnp.ndim(w) - 1)) * arr(w)
    new_b = a * c + b
    return {"weight": jnp.asarray(new_w).astype(w_dtype), "bias": jnp.asarray(new_b).astype(w_dtype)}


def fold_mlp(
    spec: MLPSpec, params: Params, batch_stats: State, *, eps: float | None = None
) -> tuple[Params, MLPSpec]:
    """Folds every batch norm of a :func:`bnjax.mlp` MLP into the dense layer before it.

    Each hidden ``dense_i -> bn_i`` pair becomes one ``dense_i`` with a bias (:func:`fold_batch_norm`);
    the output layer is copied. The result is an MLP without normalization layers::

        folded, folded_spec = fold_mlp(spec, params, batch_stats)
        mlp(folded_spec).apply(folded, {}, x, False)  ==  mlp(spec).apply(params, batch_stats, x, False)

    up to float rounding, with ``folded_spec = spec.replace(norm="none")`` (dense layers with biases, the
    same activations and dropout, which is the identity in eval mode). Only eval-mode outputs are preserved:
    training the folded model is training a different (unnormalised) network.

    Args:
      spec: the MLP's :class:`bnjax.MLPSpec`; ``spec.norm`` must be ``"batch"`` or ``"none"`` (layer norm
        uses per-sample statistics and cannot be folded).
      params, batch_stats: the MLP's parameters and running statistics.
      eps: batch-norm epsilon; default ``spec.bn_eps``.

    Returns:
      ``(folded_params, folded_spec)``; ``folded_params`` has only ``"dense_i": {"weight", "bias"}`` entries.
    """
    fn = "fold_mlp"
    if not isinstance(spec, MLPSpec):
        raise TypeError(f"{fn}: spec must be an MLPSpec, got {type(spec).__name__}.")
    if spec.norm == "layer":
        raise ValueError(
            f"{fn}: spec.norm='layer' cannot be folded: layer norm normalises each sample with its own "
            f"statistics, so it is not a fixed affine map at inference. Only norm='batch' folds."
        )
    eps = spec.bn_eps if eps is None else eps
    folded: Params = {}
    for i in range(spec.num_layers):
        name = f"dense_{i}"
        if name not in params:
            raise ValueError(f"{fn}: params has no {name!r} for spec with {spec.num_layers} dense layers.")
        if spec.norm == "batch" and i < len(spec.hidden):
            bn = f"bn_{i}"
            if bn not in params or bn not in batch_stats:
                raise ValueError(f"{fn}: params or batch_stats has no {bn!r}; pass the MLP's own pytrees.")
            folded[name] = fold_batch_norm(params[name], params[bn], batch_stats[bn], eps=eps)
        else:
            folded[name] = dict(params[name])
    return folded, spec.replace(norm="none")
