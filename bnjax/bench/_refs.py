"""Reference training steps the benchmark compares bnjax against: a hand-written pure-JAX step and
``flax.linen`` with ``nn.BatchNorm``. Both are what a user would write by default (weights ``(in, out)``,
no buffer donation), with the same model: dense -> BatchNorm -> ReLU per hidden layer, softmax
cross-entropy, Adam."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def purejax_step(key: jax.Array, sizes: tuple[int, ...], lr: float = 1e-3) -> tuple[Callable, Any]:
    """A hand-written pure-JAX BN-MLP step ``step(state, x, y) -> (state, loss)`` and its initial state."""
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for i, (k, din, dout) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        layer = {"w": jax.random.normal(k, (din, dout)) * jnp.sqrt(2.0 / din), "b": jnp.zeros(dout)}
        if i < len(sizes) - 2:
            layer |= {"gamma": jnp.ones(dout), "beta": jnp.zeros(dout)}
        params.append(layer)
    stats = [{"mean": jnp.zeros(d), "var": jnp.ones(d)} for d in sizes[1:-1]]
    opt = optax.adam(lr)

    def loss_fn(params, stats, x, y):
        h, new_stats = x, []
        for layer, st in zip(params[:-1], stats):
            h = h @ layer["w"] + layer["b"]
            mean = h.mean(0)
            var = ((h - mean) ** 2).mean(0)
            h = (h - mean) / jnp.sqrt(var + 1e-5) * layer["gamma"] + layer["beta"]
            h = jax.nn.relu(h)
            new_stats.append({"mean": 0.9 * st["mean"] + 0.1 * mean, "var": 0.9 * st["var"] + 0.1 * var})
        logits = h @ params[-1]["w"] + params[-1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_stats

    @jax.jit
    def step(state, x, y):
        params, stats, opt_state = state
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
        updates, opt_state = opt.update(grads, opt_state)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    return step, (params, stats, opt.init(params))


def flax_linen_step(key: jax.Array, sizes: tuple[int, ...], lr: float = 1e-3) -> tuple[Callable, Any]:
    """The same model in ``flax.linen`` (``nn.Dense`` + ``nn.BatchNorm(momentum=0.9)``), jitted step."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            for d in sizes[1:-1]:
                x = nn.Dense(d)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
                x = nn.relu(x)
            return nn.Dense(sizes[-1])(x)

    model = MLP()
    variables = model.init(key, jnp.zeros((2, sizes[0])), False)
    opt = optax.adam(lr)
    params, stats = variables["params"], variables["batch_stats"]

    @jax.jit
    def step(state, x, y):
        params, stats, opt_state = state

        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    return step, (params, stats, opt.init(params))
