"""Three-way gradient check shared by the layer tests: analytic (custom VJP) vs autodiff vs finite differences."""

import jax
import jax.numpy as jnp
import numpy as np

import bnjax
from reference import jit_vjp


def three_way_errors(f, inputs, dy, names=("x", "scale", "bias")):
    """``{name: (analytic~autodiff, analytic~numeric)}`` relative errors, where ``f(grad)`` returns the layer as
    a function of ``inputs`` for ``grad="analytic"``/``"autodiff"``; the numeric VJP differentiates the
    autodiff forward by central differences (float64 inputs expected)."""
    _, g_an = jit_vjp(f("analytic"), inputs, jnp.asarray(dy))
    _, g_ad = jit_vjp(f("autodiff"), inputs, jnp.asarray(dy))
    fwd = jax.jit(f("autodiff"))
    errors = {}
    for i, name in enumerate(names):
        def fi(z, i=i):
            args = list(inputs)
            args[i] = jnp.asarray(z)
            return np.asarray(fwd(*args))

        g_num = bnjax.numeric_vjp(fi, np.asarray(inputs[i]), dy)
        errors[name] = (bnjax.rel_error(g_an[i], g_ad[i]), bnjax.rel_error(g_an[i], g_num))
    return errors
