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
NAMES = {"batch": "bn", "ghost": "bn", "renorm": "bn", "layer": "ln", "group": "gn", "rms": "rms"}


def _f(a):
    return np.asarray(a, np.float64)


def _normalize(h, i, params, stats, train, new_stats, moments, *, norm, momentum, bn_eps, ln_eps, groups,
               virtual_batch_size, rmax, dmax):
    p = params[f"{NAMES[norm]}_{i}"]
    scale, shift = _f(p["scale"]), _f(p["bias"]) if "bias" in p else 0.0
    if norm in ("batch", "ghost", "renorm"):
        st = stats[f"bn_{i}"]
        run_mu, run_var = _f(st["mean"]), _f(st["var"])
        if not train:
            return scale * (h - run_mu) / np.sqrt(run_var + bn_eps) + shift
        if norm == "ghost":  # consecutive chunks of v rows, each normalised on its own
            chunks = h.reshape(-1, virtual_batch_size, h.shape[1])
            mus, vars_ = chunks.mean(axis=1, keepdims=True), chunks.var(axis=1, keepdims=True)
            out = ((chunks - mus) / np.sqrt(vars_ + bn_eps)).reshape(h.shape)
            mu, var = mus.mean(axis=0)[0], vars_.mean(axis=0)[0]
        else:
            mu = h.mean(axis=0)
            var = ((h - mu) ** 2).mean(axis=0)
            out = (h - mu) / np.sqrt(var + bn_eps)
            if norm == "renorm":  # Ioffe (2017): r, d from the running statistics, clipped
                sigma = np.sqrt(run_var + bn_eps)
                r = np.clip(np.sqrt(var + bn_eps) / sigma, 1.0 / rmax, rmax)
                d = np.clip((mu - run_mu) / sigma, -dmax, dmax)
                out = out * r + d
        moments[i] = (mu, var)
        new_stats[f"bn_{i}"] = {"mean": momentum * run_mu + (1 - momentum) * mu,
                                "var": momentum * run_var + (1 - momentum) * var}
        return scale * out + shift
    if norm == "layer":
        mu = h.mean(axis=1, keepdims=True)
        var = ((h - mu) ** 2).mean(axis=1, keepdims=True)
        return scale * (h - mu) / np.sqrt(var + ln_eps) + shift
    if norm == "group":  # contiguous groups of features, per example
        g = h.reshape(h.shape[0], groups, -1)
        mu, var = g.mean(axis=2, keepdims=True), g.var(axis=2, keepdims=True)
        return scale * ((g - mu) / np.sqrt(var + ln_eps)).reshape(h.shape) + shift
    if norm == "rms":
        return scale * h / np.sqrt((h ** 2).mean(axis=1, keepdims=True) + ln_eps)
    raise ValueError(norm)


def mlp_forward(
    params,
    stats,
    x,
    train,
    *,
    hidden,
    norm="none",
    position="before",
    activation="relu",
    momentum=0.9,
    bn_eps=1e-5,
    ln_eps=1e-5,
    groups=None,
    virtual_batch_size=None,
    rmax=3.0,
    dmax=5.0,
    masks=None,
    keep=1.0,
):
    """Logits of the MLP in float64.

    Block ``i``: dense, then norm and activation in the order ``position`` says, then the dropout mask
    ``masks[i]`` if given (inverted dropout: kept units are divided by ``keep``). Returns ``(logits,
    new_stats, batch_moments)`` where ``batch_moments[i] = (mean, var)`` of batch-norm layer ``i``'s batch
    statistics in train mode (the average of the ghost batches' for ghost BN).
    """
    h = _f(x)
    new_stats, moments = {}, {}
    kw = dict(norm=norm, momentum=momentum, bn_eps=bn_eps, ln_eps=ln_eps, groups=groups,
              virtual_batch_size=virtual_batch_size, rmax=rmax, dmax=dmax)
    act = ACTIVATIONS[activation]
    for i in range(len(hidden)):
        d = params[f"dense_{i}"]
        h = h @ _f(d["weight"]).T + (_f(d["bias"]) if "bias" in d else 0.0)
        if norm == "none":
            h = act(h)
        elif position == "before":
            h = act(_normalize(h, i, params, stats, train, new_stats, moments, **kw))
        else:
            h = _normalize(act(h), i, params, stats, train, new_stats, moments, **kw)
        if masks is not None and i in masks:
            h = h * _f(masks[i]) / keep
    d = params[f"dense_{len(hidden)}"]
    logits = h @ _f(d["weight"]).T + _f(d["bias"])
    return logits, new_stats, moments


def softmax_cross_entropy(logits, y):
    """Mean softmax cross-entropy of integer labels ``y`` (float64)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())
