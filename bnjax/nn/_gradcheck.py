"""Gradient-check utilities (CS231n ``gradient_check.py`` semantics) and the per-layer three-way check."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def rel_error(a: Any, b: Any) -> float:
    """CS231n relative error: ``max(|a - b| / max(1e-8, |a| + |b|))`` over all elements."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, a{a.shape} vs b{b.shape}.")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def _central_difference(f, x, h, combine):
    # C order: reshape(-1) of a transposed (Fortran-ordered) copy would be another copy, and the nudges below
    # would never reach x.
    x = np.array(x, dtype=np.float64, order="C")
    grad = np.zeros_like(x)
    flat_x, flat_g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + h
        pos = np.asarray(f(x), np.float64)
        flat_x[i] = old - h
        neg = np.asarray(f(x), np.float64)
        flat_x[i] = old
        flat_g[i] = combine(pos, neg) / (2.0 * h)
    return grad


def numeric_grad(f: Callable[[np.ndarray], Any], x: Any, h: float = 1e-5) -> np.ndarray:
    """Central-difference gradient of a scalar function: ``(f(x + h e_i) - f(x - h e_i)) / 2h`` per element.

    ``x`` is copied to float64 and not modified; ``f`` receives float64 NumPy arrays.
    """
    return _central_difference(f, x, h, lambda pos, neg: float(pos - neg))


def numeric_vjp(f: Callable[[np.ndarray], Any], x: Any, dy: Any, h: float = 1e-5) -> np.ndarray:
    """Central-difference vector-Jacobian product ``d sum(f(x) * dy) / dx`` for an array-valued ``f``
    (CS231n's ``eval_numerical_gradient_array``): ``sum((f(x + h e_i) - f(x - h e_i)) * dy) / 2h``.

    The outputs are subtracted elementwise before the weighted sum, which avoids the cancellation of
    differencing two large sums.
    """
    dy = np.asarray(dy, np.float64)
    return _central_difference(f, x, h, lambda pos, neg: float(np.sum((pos - neg) * dy)))


class GradCheckRow(NamedTuple):
    """One line of :func:`gradcheck_layers`: relative errors between the three gradients of one input."""

    layer: str
    input: str
    analytic_vs_autodiff: float
    analytic_vs_numeric: float
    autodiff_vs_numeric: float

    @property
    def worst(self) -> float:
        return max(self.analytic_vs_autodiff, self.analytic_vs_numeric, self.autodiff_vs_numeric)


def _three_way(name, apply, inputs, dy, key_names, h):
    """Compares analytic (``apply(..., "analytic")``), autodiff and numeric VJPs for each input."""
    rows = []
    _, vjp_an = jax.vjp(lambda *a: apply(*a, grad="analytic"), *inputs)
    _, vjp_ad = jax.vjp(lambda *a: apply(*a, grad="autodiff"), *inputs)
    g_an, g_ad = vjp_an(dy), vjp_ad(dy)
    for i, k in enumerate(key_names):
        def f(z, i=i):
            args = list(inputs)
            args[i] = jnp.asarray(z)
            return np.asarray(apply(*args, grad="autodiff"))

        g_num = numeric_vjp(f, np.asarray(inputs[i]), np.asarray(dy), h)
        rows.append(
            GradCheckRow(
                name, k, rel_error(g_an[i], g_ad[i]), rel_error(g_an[i], g_num), rel_error(g_ad[i], g_num)
            )
        )
    return rows


def gradcheck_layers(seed: int = 231, h: float = 1e-5) -> list[GradCheckRow]:
    """Three-way gradient check of every layer in float64 (CS231n setup: ``x = 5 * randn + 12``).

    For batch norm (train mode, ``(4, 5)`` and ``(2, 3, 3, 4)`` inputs), layer norm (``(4, 5)``) and
    dropout (``(10, 10)``, rate 0.2) and each input (``x``, ``scale`` = gamma, ``bias`` = beta), returns the
    relative errors analytic-vs-autodiff, analytic-vs-numeric and autodiff-vs-numeric. For dropout the
    "analytic" gradient is the closed form ``dy * mask / (1 - rate)``.
    """
    from bnjax.nn._batch_norm import batch_norm
    from bnjax.nn._dropout import dropout
    from bnjax.nn._layer_norm import layer_norm

    rows: list[GradCheckRow] = []
    rng = np.random.RandomState(seed)
    with jax.enable_x64(True):
        for name, shape in (("batch_norm (N,D)", (4, 5)), ("batch_norm (N,H,W,C)", (2, 3, 3, 4))):
            c = shape[-1]
            x = jnp.asarray(5 * rng.randn(*shape) + 12)
            scale, bias = jnp.asarray(rng.randn(c)), jnp.asarray(rng.randn(c))
            dy = jnp.asarray(rng.randn(*shape))
            stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}

            def bn(x, s, b, grad):
                return batch_norm({"scale": s, "bias": b}, stats, x, True, grad=grad)[0]

            rows += _three_way(name, bn, (x, scale, bias), dy, ("x", "scale", "bias"), h)

        x = jnp.asarray(5 * rng.randn(4, 5) + 12)
        scale, bias, dy = jnp.asarray(rng.randn(5)), jnp.asarray(rng.randn(5)), jnp.asarray(rng.randn(4, 5))

        def ln(x, s, b, grad):
            return layer_norm({"scale": s, "bias": b}, {}, x, True, grad=grad)[0]

        rows += _three_way("layer_norm", ln, (x, scale, bias), dy, ("x", "scale", "bias"), h)

        x = jnp.asarray(rng.randn(10, 10) + 10)
        dy = jnp.asarray(rng.randn(10, 10))
        key, rate = jax.random.key(seed), 0.2

        def drop(x):
            return dropout({}, {}, x, True, rate=rate, key=key)[0]

        mask = np.asarray(drop(jnp.ones_like(x))) != 0
        g_an = np.asarray(dy) * mask / (1.0 - rate)
        g_ad = jax.vjp(drop, x)[1](dy)[0]
        g_num = numeric_vjp(lambda z: np.asarray(drop(jnp.asarray(z))), np.asarray(x), np.asarray(dy), h)
        rows.append(
            GradCheckRow("dropout", "x", rel_error(g_an, g_ad), rel_error(g_an, g_num), rel_error(g_ad, g_num))
        )
    return rows


def format_gradcheck(rows: list[GradCheckRow], tol: float | None = None) -> str:
    """A fixed-width table of :func:`gradcheck_layers` rows (and a PASS/FAIL column against ``tol``)."""
    head = f"{'layer':<22} {'input':<6} {'analytic~autodiff':>18} {'analytic~numeric':>17} {'autodiff~numeric':>17}"
    if tol is not None:
        head += "  verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r.layer:<22} {r.input:<6} {r.analytic_vs_autodiff:>18.2e} {r.analytic_vs_numeric:>17.2e} "
            f"{r.autodiff_vs_numeric:>17.2e}"
        )
        if tol is not None:
            line += "  " + ("PASS" if r.worst <= tol else "FAIL")
        lines.append(line)
    return "\n".join(lines)
