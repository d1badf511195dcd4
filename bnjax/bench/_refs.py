"""What the benchmark compares bnjax against, written as a user would by default (weights ``(in, out)``), with
the same model: dense -> BatchNorm -> ReLU per hidden layer, softmax cross-entropy, Adam. A hand-written
pure-JAX step and a ``flax.linen`` step (``nn.BatchNorm``), each one jitted call per step, and the flax.linen
epoch as one jitted ``lax.scan`` (:func:`flax_scan_epoch`), the reference for bnjax's compiled epoch."""

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


def _flax_mlp(sizes: tuple[int, ...]) -> Any:
    """The model in ``flax.linen``: ``nn.Dense`` -> ``nn.BatchNorm(momentum=0.9)`` -> ReLU per hidden layer."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            for d in sizes[1:-1]:
                x = nn.Dense(d)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
                x = nn.relu(x)
            return nn.Dense(sizes[-1])(x)

    return MLP()


def _flax_train(key: jax.Array, sizes: tuple[int, ...], lr: float) -> tuple[Callable, Any]:
    """The un-jitted flax.linen step ``step(state, x, y) -> (state, loss)`` and its initial state."""
    model = _flax_mlp(sizes)
    variables = model.init(key, jnp.zeros((2, sizes[0])), False)
    opt = optax.adam(lr)
    params, stats = variables["params"], variables["batch_stats"]

    def step(state, x, y):
        params, stats, opt_state = state

        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    return step, (params, stats, opt.init(params))


def flax_linen_step(key: jax.Array, sizes: tuple[int, ...], lr: float = 1e-3) -> tuple[Callable, Any]:
    """The same model in ``flax.linen`` (``nn.Dense`` + ``nn.BatchNorm(momentum=0.9)``), jitted step
    ``step(state, x, y) -> (state, loss)``, and its initial state."""
    step, state = _flax_train(key, sizes, lr)
    return jax.jit(step), state


def flax_scan_epoch(key: jax.Array, sizes: tuple[int, ...], batch_size: int, lr: float = 1e-3
                    ) -> tuple[Callable, Any]:
    """One epoch of the flax.linen model as one jitted ``lax.scan``, the best a user would write by hand:
    ``epoch(state, x, y, key) -> (state, losses)`` draws a permutation of the training set ``x (N, D)``,
    ``y (N,)`` on device from ``key`` (a ``jax.random.PRNGKey``), gathers each batch (``x[idx]``) as bnjax's
    epoch does, and takes ``N // batch_size`` steps (the remainder skipped). Jitted with the state donated."""
    step, state = _flax_train(key, sizes, lr)

    def epoch(state, x, y, key):
        steps = x.shape[0] // batch_size
        idx = jax.random.permutation(key, x.shape[0])[: steps * batch_size].reshape(steps, batch_size)
        return jax.lax.scan(lambda s, i: step(s, x[i], y[i]), state, idx)

    return jax.jit(epoch, donate_argnums=0), state
