"""An independent NumPy (float64) forward pass of the bnjax MLP, written from the formulas.

Nothing here imports bnjax. ``mlp_forward`` returns the logits, the new running statistics and, for
every batch-norm layer, the biased batch mean and variance of its input (what precise-BN averages).
"""

from __future__ import annotations

import math

import numpy as np

ACTIVATIONS = {
    "relu": lambda h: np.maximum(h, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda h: 1.0 / (1.0 + np.exp(-h)),
    "gelu": lambda h: 0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0))),
}


def mlp_forward(
    params,
    stats,
    x,
    train,
    *,
    hidden,
    norm="none",
    activation="relu",
    momentum=0.9,
    bn_eps=1e-5,
    ln_eps=1e-5,
    masks=None,
    keep=1.0,
):
    """Logits of the MLP in float64.

    ``masks`` maps a hidden-layer index to a 0/1 keep mask of that layer's activations (inverted dropout:
    kept units are divided by ``keep``). Returns ``(logits, new_stats, batch_moments)`` where
    ``batch_moments[i] = (mean, var)`` of BN layer ``i``'s input in train mode.
    """
    f = lambda a: np.asarray(a, np.float64)
    h = f(x)
    new_stats, moments = {}, {}
    for i in range(len(hidden)):
        d = params[f"dense_{i}"]
        h = h @ f(d["weight"]).T + (f(d["bias"]) if "bias" in d else 0.0)
        if norm == "batch":
            bn, st = params[f"bn_{i}"], stats[f"bn_{i}"]
            if train:
                mu = h.mean(axis=0)
                var = ((h - mu) ** 2).mean(axis=0)
                moments[i] = (mu, var)
                new_stats[f"bn_{i}"] = {
                    "mean": momentum * f(st["mean"]) + (1 - momentum) * mu,
                    "var": momentum * f(st["var"]) + (1 - momentum) * var,
                }
            else:
                mu, var = f(st["mean"]), f(st["var"])
            h = f(bn["scale"]) * (h - mu) / np.sqrt(var + bn_eps) + f(bn["bias"])
        elif norm == "layer":
            ln = params[f"ln_{i}"]
            mu = h.mean(axis=1, keepdims=True)
            var = ((h - mu) ** 2).mean(axis=1, keepdims=True)
            h = f(ln["scale"]) * (h - mu) / np.sqrt(var + ln_eps) + f(ln["bias"])
        h = ACTIVATIONS[activation](h)
        if masks is not None and i in masks:
            h = h * f(masks[i]) / keep
    d = params[f"dense_{len(hidden)}"]
    logits = h @ f(d["weight"]).T + f(d["bias"])
    return logits, new_stats, moments


def softmax_cross_entropy(logits, y):
    """Mean softmax cross-entropy of integer labels ``y`` (float64)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())
