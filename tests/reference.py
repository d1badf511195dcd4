"""Independent NumPy references for the core layers, written from the formulas (CS231n assignment 2).

Nothing here imports bnjax. The backward passes are the *staged* computational-graph derivations
(one line per node of the forward graph), not the simplified closed form bnjax implements, so an
agreement between the two is a real check of the algebra. Every function works in float64.

Conventions: the feature axis is the last one (move it there with :func:`to_last` first); batch norm
reduces over every other axis (CS231n's spatial batch norm reshapes ``(N, H, W, C)`` to
``(N*H*W, C)``), layer norm reduces over the last axis per sample.
"""

from __future__ import annotations

import numpy as np


def to_last(x: np.ndarray, axis: int) -> np.ndarray:
    """Moves the feature ``axis`` of ``x`` to the end (e.g. NCHW -> NHWC for ``axis=1``)."""
    return np.moveaxis(np.asarray(x, np.float64), axis, -1)


def from_last(x: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`to_last`."""
    return np.moveaxis(x, -1, axis)


# ----------------------------------------------------------------------------------------------------
# Normalisation with a staged backward, shared by batch norm (reduce over rows) and layer norm
# (reduce over columns). ``x`` is 2-D; ``reduce_axis`` is 0 (batch norm) or 1 (layer norm); gamma and
# beta always act per column.
# ----------------------------------------------------------------------------------------------------


def _norm_forward(x, gamma, beta, eps, reduce_axis):
    x = np.asarray(x, np.float64)
    n = x.shape[reduce_axis]
    mu = np.sum(x, axis=reduce_axis, keepdims=True) / n
    xmu = x - mu
    sq = xmu**2
    var = np.sum(sq, axis=reduce_axis, keepdims=True) / n
    sqrtvar = np.sqrt(var + eps)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    out = gamma * xhat + beta
    cache = (xhat, gamma, xmu, ivar, sqrtvar, var, n, reduce_axis)
    return out, mu, var, cache


def _norm_backward(dout, cache, dmu_ext=None, dvar_ext=None):
    """Staged backward; ``dmu_ext``/``dvar_ext`` are cotangents of the returned batch mean/variance."""
    xhat, gamma, xmu, ivar, sqrtvar, var, n, ax = cache
    dout = np.asarray(dout, np.float64)
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * xhat, axis=0)
    dxhat = dout * gamma
    divar = np.sum(dxhat * xmu, axis=ax, keepdims=True)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / sqrtvar**2 * divar
    dvar = 0.5 * ivar * dsqrtvar
    if dvar_ext is not None:
        dvar = dvar + dvar_ext
    dsq = np.ones_like(xmu) * dvar / n
    dxmu2 = 2.0 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -np.sum(dx1, axis=ax, keepdims=True)
    if dmu_ext is not None:
        dmu = dmu + dmu_ext
    dx2 = np.ones_like(xmu) * dmu / n
    return dx1 + dx2, dgamma, dbeta


# ----------------------------------------------------------------------------------------------------
# Batch norm
# ----------------------------------------------------------------------------------------------------


def batchnorm_forward(x, gamma, beta, bn_param):
    """CS231n ``batchnorm_forward`` for ``x`` of shape ``(..., C)`` (feature axis last).

    ``bn_param``: ``mode`` ("train"/"test"), ``eps``, ``momentum`` (new = m * old + (1 - m) * batch),
    ``running_mean``, ``running_var``, optional ``unbiased`` (store ``n/(n-1) * var``).

    Returns ``(out, cache, running_mean, running_var)``; ``cache`` is ``None`` in test mode.
    """
    x = np.asarray(x, np.float64)
    shape = x.shape
    c = shape[-1]
    x2 = x.reshape(-1, c)
    eps, mom = bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)
    rm = np.asarray(bn_param["running_mean"], np.float64)
    rv = np.asarray(bn_param["running_var"], np.float64)
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    if bn_param["mode"] == "train":
        out, mu, var, cache = _norm_forward(x2, gamma, beta, eps, 0)
        n = x2.shape[0]
        stored_var = var[0] * n / (n - 1) if bn_param.get("unbiased", False) else var[0]
        rm = mom * rm + (1 - mom) * mu[0]
        rv = mom * rv + (1 - mom) * stored_var
    else:
        out = gamma * (x2 - rm) / np.sqrt(rv + eps) + beta
        cache = None
    return out.reshape(shape), cache, rm, rv


def batchnorm_backward(dout, cache, dmean=None, dvar=None):
    """CS231n ``batchnorm_backward`` (staged). ``dmean``/``dvar`` of shape ``(C,)`` are optional cotangents
    of the batch mean/variance. Returns ``(dx, dgamma, dbeta)``."""
    dout = np.asarray(dout, np.float64)
    shape = dout.shape
    c = shape[-1]
    dmu_ext = None if dmean is None else np.asarray(dmean, np.float64).reshape(1, c)
    dvar_ext = None if dvar is None else np.asarray(dvar, np.float64).reshape(1, c)
    dx, dgamma, dbeta = _norm_backward(dout.reshape(-1, c), cache, dmu_ext, dvar_ext)
    return dx.reshape(shape), dgamma, dbeta


def torch_running_stats(x, running_mean, running_var, momentum=0.1):
    """torch's ``F.batch_norm(training=True)`` running-stats rule (feature axis last):
    ``new = (1 - momentum) * old + momentum * batch``, with the *unbiased* batch variance."""
    x2 = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    mu, var_u = x2.mean(axis=0), x2.var(axis=0, ddof=1)
    return (1 - momentum) * running_mean + momentum * mu, (1 - momentum) * running_var + momentum * var_u


def ema_closed_form(init, batch_values, momentum):
    """``momentum**k * init + sum_i (1 - m) * m**(k-1-i) * batch_i`` after ``k`` batches."""
    k = len(batch_values)
    out = momentum**k * np.asarray(init, np.float64)
    for i, b in enumerate(batch_values):
        out = out + (1 - momentum) * momentum ** (k - 1 - i) * np.asarray(b, np.float64)
    return out


# ----------------------------------------------------------------------------------------------------
# Layer norm
# ----------------------------------------------------------------------------------------------------


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """CS231n ``layernorm_forward`` for ``x`` of shape ``(..., D)``: each row normalised over D."""
    x = np.asarray(x, np.float64)
    shape = x.shape
    d = shape[-1]
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    out, _, _, cache = _norm_forward(x.reshape(-1, d), gamma, beta, eps, 1)
    return out.reshape(shape), cache


def layernorm_backward(dout, cache):
    """CS231n ``layernorm_backward`` (staged). Returns ``(dx, dgamma, dbeta)``."""
    dout = np.asarray(dout, np.float64)
    shape = dout.shape
    dx, dgamma, dbeta = _norm_backward(dout.reshape(-1, shape[-1]), cache)
    return dx.reshape(shape), dgamma, dbeta


# ----------------------------------------------------------------------------------------------------
# Dropout (inverted; ``rate`` is the drop probability, CS231n's ``p`` = 1 - rate is the keep probability)
# ----------------------------------------------------------------------------------------------------


def dropout_forward(x, keep_mask, rate):
    """``out = x * mask / (1 - rate)``; ``keep_mask`` is the boolean keep mask."""
    return np.where(keep_mask, np.asarray(x, np.float64) / (1.0 - rate), 0.0)


def dropout_backward(dout, keep_mask, rate):
    """``dx = dout * mask / (1 - rate)``."""
    return np.where(keep_mask, np.asarray(dout, np.float64) / (1.0 - rate), 0.0)


# ----------------------------------------------------------------------------------------------------
# Small test helpers shared by the test modules (plain JAX / string checks; still no bnjax)
# ----------------------------------------------------------------------------------------------------


def jit_vjp(f, primals, cts):
    """``(f(*primals), vjp(cts))`` computed as one jitted program.

    Eager VJPs compile every small op separately, which costs seconds per test on a busy CPU.
    """
    import jax

    def run(p, c):
        out, vjp = jax.vjp(f, *p)
        return out, vjp(c)

    return jax.jit(run)(tuple(primals), cts)


def assert_reads_well(message: str) -> None:
    """An error message made of joined strings: no doubled or missing spaces between sentences."""
    import re

    assert "  " not in message, f"double space in {message!r}"
    assert not re.search(r"[.;:,)][A-Z]", message), f"missing space after punctuation in {message!r}"
    assert message.rstrip().endswith((".", ")")), f"message does not end a sentence: {message!r}"
