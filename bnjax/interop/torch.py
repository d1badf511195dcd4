"""Converters between PyTorch ``BatchNorm*d``/``LayerNorm`` state dicts and bnjax pytrees (no torch import).

PyTorch conventions that differ from bnjax's:

* momentum: torch updates ``running = (1 - m) * running + m * batch`` (``m = 0.1`` default), bnjax
  ``new = momentum * old + (1 - momentum) * batch``, so ``momentum_bnjax = 1 - m_torch`` (0.1 -> 0.9);
  torch ``momentum=None`` is the cumulative average, bnjax ``average="cumulative"``.
* running variance: torch stores the **unbiased** batch variance ``n/(n-1) * var`` (but normalises the batch
  with the biased one), bnjax's ``unbiased_var=True``.
* names: ``weight``/``bias``/``running_mean``/``running_var``/``num_batches_tracked`` vs
  ``params{scale, bias}``/``batch_stats{mean, var[, count]}``.

State-dict values may be NumPy arrays or CPU torch tensors (anything ``np.asarray`` takes).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from bnjax._typing import Params, State


def torch_momentum_to_bnjax(momentum: float | None) -> float | None:
    """bnjax ``momentum`` for torch's ``momentum`` ``m``: ``1 - m`` (``None``, the cumulative average, stays ``None``)."""
    if momentum is None:
        return None
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"torch_momentum_to_bnjax: momentum={momentum!r} must be in [0, 1] (torch's default is 0.1).")
    return 1.0 - momentum


def bnjax_momentum_to_torch(momentum: float | None) -> float | None:
    """torch ``momentum`` for bnjax's ``momentum``: ``1 - momentum`` (``None`` stays ``None``)."""
    if momentum is None:
        return None
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"bnjax_momentum_to_torch: momentum={momentum!r} must be in [0, 1] (bnjax's default is 0.9).")
    return 1.0 - momentum


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: leave autograd and the device without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _get(fn: str, state_dict: Mapping[str, Any], prefix: str, name: str, hint: str) -> np.ndarray:
    key = prefix + name
    if key not in state_dict:
        raise ValueError(f"{fn}: state_dict has no {key!r} (keys: {sorted(state_dict)[:8]}...). {hint}")
    return _numpy(state_dict[key])


def from_torch_batch_norm(
    state_dict: Mapping[str, Any], *, momentum: float | None = 0.1, eps: float = 1e-5, prefix: str = ""
) -> tuple[Params, State, dict[str, Any]]:
    """bnjax ``(params, batch_stats, options)`` from a torch ``BatchNorm1d/2d/3d`` state dict.

    ``options`` holds the keyword arguments that make :func:`bnjax.batch_norm` continue training exactly as
    the torch module would: ``{"momentum": 1 - m, "eps": eps, "unbiased_var": True}`` for torch momentum
    ``m``, or ``{"average": "cumulative", "eps": eps, "unbiased_var": True}`` for ``momentum=None``
    (then ``batch_stats["count"] = num_batches_tracked``). Pass ``axis=1`` to ``batch_norm`` for torch's
    channels-first ``(N, C, ...)`` inputs. ``affine=False`` modules (no ``weight``/``bias``) get scale 1 and
    bias 0.

    Args:
      state_dict: ``module.state_dict()`` (NumPy arrays or CPU tensors); with ``prefix``, a whole model's.
      momentum: the torch module's ``momentum`` (not stored in the state dict; default 0.1).
      eps: the torch module's ``eps`` (default 1e-5).
      prefix: key prefix of the layer in a model's state dict, e.g. ``"features.1."``.
    """
    fn = "from_torch_batch_norm"
    hint = "Pass the BatchNorm module's state_dict() or a model's with prefix='name.'."
    if prefix + "running_mean" not in state_dict:
        raise ValueError(
            f"{fn}: state_dict has no {prefix + 'running_mean'!r}; a module built with "
            f"track_running_stats=False has no running statistics (bnjax always keeps them: create them with "
            f"bnjax.batch_norm_init and use train=True). {hint}"
        )
    mean = _get(fn, state_dict, prefix, "running_mean", hint)
    var = _get(fn, state_dict, prefix, "running_var", hint)
    c = mean.shape[0]
    weight = _numpy(state_dict[prefix + "weight"]) if prefix + "weight" in state_dict else np.ones(c, mean.dtype)
    bias = _numpy(state_dict[prefix + "bias"]) if prefix + "bias" in state_dict else np.zeros(c, mean.dtype)
    params = {"scale": jnp.asarray(weight), "bias": jnp.asarray(bias)}
    stats = {"mean": jnp.asarray(mean), "var": jnp.asarray(var)}
    options: dict[str, Any] = {"eps": eps, "unbiased_var": True}
    if momentum is None:
        tracked = state_dict.get(prefix + "num_batches_tracked", 0)
        stats["count"] = jnp.asarray(int(_numpy(tracked)), jnp.int32)
        options["average"] = "cumulative"
    else:
        options["momentum"] = torch_momentum_to_bnjax(momentum)
    return params, stats, options


def to_torch_batch_norm(
    params: Params, batch_stats: State, *, prefix: str = "", num_batches_tracked: int | None = None
) -> dict[str, np.ndarray]:
    """A torch ``BatchNorm*d`` state dict (NumPy arrays) from bnjax ``params``/``batch_stats``.

    Load it with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``. torch keeps the
    *unbiased* running variance: stats trained with ``unbiased_var=False`` load, but hold the biased
    estimate. ``num_batches_tracked`` defaults to ``batch_stats["count"]`` (cumulative average) or 0.
    """
    if num_batches_tracked is None:
        num_batches_tracked = int(batch_stats["count"]) if "count" in batch_stats else 0
    return {
        prefix + "weight": np.asarray(params["scale"]),
        prefix + "bias": np.asarray(params["bias"]),
        prefix + "running_mean": np.asarray(batch_stats["mean"]),
        prefix + "running_var": np.asarray(batch_stats["var"]),
        prefix + "num_batches_tracked": np.asarray(num_batches_tracked, np.int64),
    }


def from_torch_layer_norm(
    state_dict: Mapping[str, Any],
    *,
    eps: float = 1e-5,
    prefix: str = "",
    normalized_shape: int | Sequence[int] | None = None,
) -> tuple[Params, State, dict[str, Any]]:
    """bnjax ``(params, batch_stats, options)`` from a torch ``LayerNorm`` state dict.

    torch normalises over the last ``k = len(normalized_shape)`` axes with an elementwise ``weight``/``bias``;
    ``options = {"eps": eps, "axis": (-k, ..., -1)}`` are the matching :func:`bnjax.layer_norm` arguments
    (both use ``eps=1e-5`` by default). ``bias=False`` gives a zero bias; ``elementwise_affine=False`` (empty
    state dict) needs ``normalized_shape`` and gives scale 1, bias 0.
    """
    fn = "from_torch_layer_norm"
    if prefix + "weight" in state_dict:
        weight = _numpy(state_dict[prefix + "weight"])
    elif normalized_shape is not None:
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        weight = np.ones(shape, np.float32)
    else:
        raise ValueError(
            f"{fn}: state_dict has no {prefix + 'weight'!r}; for a LayerNorm with elementwise_affine=False "
            f"pass normalized_shape=, else pass the module's state_dict() or a model's with prefix='name.'."
        )
    bias = _numpy(state_dict[prefix + "bias"]) if prefix + "bias" in state_dict else np.zeros_like(weight)
    axis = tuple(range(-weight.ndim, 0))
    return {"scale": jnp.asarray(weight), "bias": jnp.asarray(bias)}, {}, {"eps": eps, "axis": axis}
