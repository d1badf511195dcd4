"""The pure training step, the epoch's batch order and evaluation -- for any :class:`bnjax.Layer`.

A member's traced settings reach the model as options: ``init(key, weight_scale=...)`` and ``apply(...,
dropout=..., bn_momentum=...)`` (those the member sets), plus, where the model takes them, ``step`` (the
global step count, for warm-up schedules such as batch renorm's), ``row_index`` (each row's position in the
global batch: dropout masks are drawn per row from it) and, data parallel, ``axis_name``.

Randomness is counter based: a member's dropout key at global step ``t`` is
``fold_in(fold_in(member_key, DROPOUT), t)``, the mask of the example in row ``r`` of the global batch is
drawn from ``fold_in(that key's layer key, r)`` (:func:`bnjax.dropout` with ``row_index``), and the shuffle key
in epoch ``e`` is ``fold_in(fold_in(shuffle_key, SHUFFLE), e)``. So a run resumed from a checkpoint (which
stores ``t``) draws exactly the numbers an uninterrupted run draws, and no device layout or member chunking
changes a mask.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bnjax._typing import Array, Layer, Params, PRNGKey, State
from bnjax.nn._combinators import apply_layers, select_options
from bnjax.nn._dense import dense
from bnjax.nn._mlp import MLPSpec, as_layer
from bnjax.train._config import TrainConfig, cast_compute, is_weight, lr_factor, make_optimizer
from bnjax.train._members import _DROPOUT, _SHUFFLE, TrainState, member_defaults
from bnjax.train._model import takes

Step = Callable[[TrainState, tuple[Array, Array]], tuple[TrainState, dict[str, Array]]]


def matmul_precision_context(precision: str | None) -> contextlib.AbstractContextManager[Any]:
    """The context in which a step or an evaluation is traced: ``jax.default_matmul_precision(precision)``, or
    nothing for None (JAX's default)."""
    return contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision)


def l2_penalty(params: Params) -> Array:
    """``0.5 * sum(W**2)`` over every ``"weight"`` leaf (dense and convolution kernels; CS231n regularisation)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return 0.5 * sum(jnp.sum(jnp.square(w)) for path, w in leaves if is_weight(path))


def make_train_step(model: Layer | MLPSpec, cfg: TrainConfig, steps_per_epoch: int, *,
                    use_dropout: bool | None = None, axis_name: Any = None, sync_bn: bool = True) -> Step:
    """The pure training step ``step(state, (x, y)) -> (state, {"loss"})`` of one member.

    One step on the mini-batch ``x (B, ...)``, ``y (B,)`` int labels: train-mode forward (batch statistics,
    dropout with the member's key and options), loss ``mean softmax-CE + 0.5 * l2 * sum(W**2)``, gradient,
    ``params -= lr * schedule(step) * direction`` (:func:`make_optimizer`), running statistics updated; traced
    under ``cfg.matmul_precision``. Divergence: if the loss is non-finite, or any parameter is (detected
    through the sentinel of the layers' outputs, at no extra pass over the parameters; see
    :func:`forward`), the member is marked diverged at this step, and its parameters and
    batch statistics keep their values from before the step, in this and every later step (``jnp.where`` per
    member). Its reported loss is NaN from the next step on. An update that overflows a parameter while the
    loss is still finite is caught by the next step, whose frozen state then holds that non-finite value. The
    optimizer state of a diverged member is not frozen: it is never used again, and selecting the Adam moments
    costs XLA:CPU two extra copies of them per step. ``step`` always advances.

    Args:
      model: a :class:`bnjax.Layer` or an :class:`bnjax.MLPSpec` (static).
      cfg: training configuration (static).
      steps_per_epoch: steps per epoch (for ``"epoch_decay"``/``"cosine"`` schedules).
      use_dropout: False passes ``dropout=0.0`` instead of the member's traced rate, so dropout is compiled
        out (no effect when the member sets no rate); default: True unless the model's default rate
        (``Layer.defaults``, an MLP's ``spec.dropout``) is 0. An ensemble whose members sweep the rate passes
        True.
      axis_name: data-parallel axis (for use inside ``jax.shard_map``, see
        :func:`bnjax.train.make_data_parallel_step`): ``(x, y)`` is this device's equal-sized shard of the
        global batch and the state is replicated. The loss is then ``pmean`` of the local mean losses (the
        mean over all examples), so the gradient of the replicated parameters is that of the global batch;
        the divergence test uses the ``psum`` of the sentinels, so it agrees on every device. The rows'
        ``row_index`` are their positions in the global batch, so dropout draws one device's masks; a model
        that takes no ``row_index`` gets its key folded with ``lax.axis_index(axis_name)`` instead. None
        (default): a single-device step.
      sync_bn: with ``axis_name``: True -- the model gets the option ``axis_name``, so batch norm uses the
        global batch statistics (synchronized BN); False (or a model that takes no ``axis_name``) -- each
        device normalises with its own shard's statistics ("ghost" BN) and the replicated running statistics
        become the mean over devices of the per-device updates (for ``"ema"``: ``momentum * old + (1 -
        momentum) * mean_d(batch_d)``).

    Returns:
      The step function; wrap it in ``jax.jit`` (and ``jax.vmap`` for ensembles).
    """
    layer = as_layer(model, "make_train_step")
    loss_fn, update = _step_parts(layer, cfg, steps_per_epoch, use_dropout, axis_name=axis_name, sync_bn=sync_bn)

    def step(state: TrainState, batch: tuple[Array, Array]) -> tuple[TrainState, dict[str, Array]]:
        x, y = batch
        (loss, (new_stats, sentinel)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, y, _dropout_key(state), state.hyper, state.step
        )
        return update(state, loss, sentinel, new_stats, grads)

    return step


def make_shared_batch_ensemble_step(model: Layer | MLPSpec, cfg: TrainConfig, steps_per_epoch: int, *,
                                    use_dropout: bool | None = None, axis_name: Any = None, sync_bn: bool = True) -> Step:
    """The step of ``K`` stacked members that all train on the same mini-batch ``(x, y)``.

    Equal (up to float reassociation) to ``jax.vmap(make_train_step(...), in_axes=(0, None))``. When the
    model is a composition whose first layer is :func:`bnjax.Dense` (an MLP, or ``serial(Dense(...), ...)``)
    and ``x`` is ``(B, D)``, the first layer of all members is one matmul, ``W_all (K*h, D) @ x.T (D, B)``,
    and so is its weight gradient, ``dZ_all (K*h, B) @ x (B, D)``; vmap would compute ``x @ W_k.T`` for every
    member with the stacked weights transposed on every step. The gradient is that of the sum of the members'
    losses, which is each member's own gradient since no member's loss depends on another's parameters.
    Other models run the vmapped step. ``axis_name``/``sync_bn``: data parallel, as for :func:`make_train_step`
    (``(x, y)`` is this device's shard of the shared batch).
    """
    layer = as_layer(model, "make_shared_batch_ensemble_step")
    single = make_train_step(layer, cfg, steps_per_epoch, use_dropout=use_dropout, axis_name=axis_name,
                             sync_bn=sync_bn)
    vmapped = jax.vmap(single, in_axes=(0, None))
    found = first_dense(layer)
    if found is None:
        return vmapped
    name, precision = found
    loss_fn, update = _step_parts(layer, cfg, steps_per_epoch, use_dropout, axis_name=axis_name, sync_bn=sync_bn)

    def joint_loss(params, batch_stats, x, y, keys, hyper, steps):
        w = params[name]["weight"]  # (K, h, D)
        k, h, d = w.shape
        with matmul_precision_context(cfg.matmul_precision):
            first = jnp.matmul(w.reshape(k * h, d), x.T, precision=precision)
        first = jnp.swapaxes(first.reshape(k, h, -1), 1, 2)  # (K, B, h)

        def member(p, s, f, key, hp, t):
            return loss_fn(p, s, None, y, key, hp, t, first=f)

        losses, aux = jax.vmap(member)(params, batch_stats, first, keys, hyper, steps)
        return jnp.sum(losses), (losses, aux)

    def step(states: TrainState, batch: tuple[Array, Array]) -> tuple[TrainState, dict[str, Array]]:
        x, y = batch
        if x.ndim != 2:
            return vmapped(states, batch)
        keys = jax.vmap(_dropout_key)(states)
        (_, (losses, (new_stats, sentinels))), grads = jax.value_and_grad(joint_loss, has_aux=True)(
            states.params, states.batch_stats, x, y, keys, states.hyper, states.step
        )
        return jax.vmap(update)(states, losses, sentinels, new_stats, grads)

    return step


def _dropout_key(state: TrainState) -> Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.key), _DROPOUT), state.step)


def _step_parts(
    layer: Layer,
    cfg: TrainConfig,
    steps_per_epoch: int,
    use_dropout: bool | None,
    *,
    axis_name: Any = None,
    sync_bn: bool = True,
):
    """``(loss_fn, update)``: a member's loss and the optimizer/divergence update, shared by the steps.

    With ``axis_name`` (data parallel, see :func:`make_train_step`) the returned loss, sentinel and batch
    statistics are invariant across the axis, so ``update`` keeps a replicated state replicated.
    """
    opt = make_optimizer(cfg)
    if use_dropout is None:
        use_dropout = member_defaults(layer).get("dropout", 1.0) > 0
    bn_axis = axis_name if sync_bn and takes(layer, "axis_name") else None
    pass_step, pass_rows = takes(layer, "step"), takes(layer, "row_index")

    def loss_fn(params, batch_stats, x, y, key, hyper, step, first=None):
        options = {k: v for k, v in hyper.items() if k != "learning_rate" and takes(layer, k)}
        if not use_dropout and "dropout" in options:
            options["dropout"] = 0.0
        if bn_axis is not None:
            options["axis_name"] = bn_axis
        if pass_step:
            options["step"] = step
        rows = y.shape[0]
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * rows
        if pass_rows:
            options["row_index"] = offset + jnp.arange(rows, dtype=jnp.int32)
        elif axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        cparams, x = cast_compute(cfg.compute_dtype, params, x)
        if first is not None:  # the shared first-layer matmul of an ensemble, computed by the caller
            _, first = cast_compute(cfg.compute_dtype, None, first)
        with matmul_precision_context(cfg.matmul_precision):
            logits, new_stats, sentinel = forward(layer, cparams, batch_stats, x, True, key=key, first=first,
                                                  **options)
        # The loss in float32 whatever the compute dtype (mixed precision, TrainConfig.compute_dtype).
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y))
        if axis_name is not None:
            # Equal shards: the mean of the local means is the mean over all examples. Differentiating this
            # device-invariant loss w.r.t. the replicated parameters yields the psum'd global gradient.
            loss = jax.lax.pmean(loss, axis_name)
            sentinel = jax.lax.psum(sentinel, axis_name)
            if bn_axis is None:
                # Per-device statistics (sync_bn=False, or layers that take no axis_name such as ghost BN): the
                # running statistics are linear in the batch statistics, so this is the update with the
                # per-device batch statistics averaged, the same on every device.
                new_stats = jax.lax.pmean(new_stats, axis_name)
        if cfg.l2:
            loss = loss + cfg.l2 * l2_penalty(params)
        return loss, (new_stats, sentinel)

    def update(state, loss, sentinel, new_stats, grads):
        t = state.step
        direction, new_opt = opt.update(grads, state.opt_state, state.params)
        lr = -state.hyper["learning_rate"] * lr_factor(cfg, t, steps_per_epoch)
        new_params = jax.tree.map(lambda p, u: p + (lr * u).astype(p.dtype), state.params, direction)
        # Divergence test without a pass over the parameters: the loss, plus the sentinel that is NaN when any
        # layer output is non-finite, i.e. when an earlier update left a non-finite parameter.
        was_ok = state.diverged_step < 0
        ok = was_ok & jnp.isfinite(loss + sentinel)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = TrainState(
            params=keep(new_params, state.params),
            batch_stats=keep(new_stats, state.batch_stats),
            opt_state=new_opt,
            key=state.key,
            hyper=state.hyper,
            step=t + 1,
            diverged_step=jnp.where(was_ok & ~ok, t, state.diverged_step),
        )
        return new_state, {"loss": jnp.where(was_ok & jnp.isfinite(sentinel), loss, jnp.nan)}

    return loss_fn, update


def _zero_sum(y: Array) -> Array:
    # sum(y * 0): exactly 0 when every entry is finite, NaN otherwise; jit removes it when unused.
    return jnp.sum(y * jnp.zeros((), y.dtype), dtype=jnp.float32)


def forward(
    layer: Layer,
    params: Params,
    batch_stats: State,
    x: Array,
    train: bool,
    *,
    key: PRNGKey | None = None,
    first: Array | None = None,
    **options: Any,
) -> tuple[Array, State, Array]:
    """``layer.apply`` plus a non-finiteness sentinel: ``(y, new_batch_stats, sentinel)``.

    ``sentinel = sum(concat(z) * 0)`` over the outputs ``z`` of a composition's layers that have parameters and are
    followed by a parameter-free layer (an activation, dropout, pooling) or end the model -- for an MLP, the
    pre-activations and the logits; for any other model, its output: exactly 0 when all of them are finite,
    NaN otherwise. A non-finite parameter makes its layer's output non-finite, and a layer with parameters
    (affine or normalizing) passes a non-finite input on, so the first parameter-free layer after it sees
    it -- where a ReLU, a saturating activation or a dropout mask could hide it from the loss. A training
    step thus learns from this scalar that a parameter went non-finite, without a pass over the parameters, in
    one reduction (one kernel on a GPU, not one per output).

    ``first``, if given, is the first layer's ``x @ weight.T`` computed by the caller (``x`` is then not
    read; the layer must be :func:`bnjax.Dense`): an ensemble whose members share ``x`` computes it for all
    members as one matmul. Options are routed as by :func:`bnjax.serial`.
    """
    parts = []
    names = [name for name, _ in layer.layers]
    watched = {name for name, after in zip(names, [*names[1:], None]) if name in params and after not in params}

    def tap(name: str, sub: Layer, y: Array) -> None:
        del sub
        if name in watched:
            parts.append(jnp.ravel(y).astype(jnp.float32))

    if layer.layers:
        start = 0
        if first is not None:
            name = layer.layers[0][0]
            bias = params[name].get("bias")
            x = first if bias is None else first + bias
            tap(name, layer.layers[0][1], x)
            start = 1
        y, new_stats = apply_layers(layer.layers, params, batch_stats, x, train, key=key, start=start, tap=tap,
                                    **options)
    else:
        if first is not None:
            raise ValueError("forward: first= needs a composition whose first layer is bnjax.Dense.")
        y, new_stats = layer.apply(params, batch_stats, x, train, key=key,
                                   **select_options(layer, "apply", options))
        parts.append(jnp.ravel(y).astype(jnp.float32))
    sentinel = _zero_sum(jnp.concatenate(parts)) if parts else jnp.zeros((), jnp.float32)
    return y, new_stats, sentinel


def first_dense(layer: Layer) -> tuple[str, Any] | None:
    """``(pytree name, precision)`` of ``layer``'s first layer when it is a :func:`bnjax.Dense` (the
    shared-batch fast path applies), else None."""
    if not layer.layers:
        return None
    apply = layer.layers[0][1].apply
    if apply is dense:
        return layer.layers[0][0], None
    if isinstance(apply, functools.partial) and apply.func is dense and set(apply.keywords) <= {"precision"}:
        return layer.layers[0][0], apply.keywords.get("precision")
    return None


EPOCH_UNROLL = 2
"""Steps per iteration of a single model's epoch ``lax.scan``: two halve the loop's per-iteration overhead (a
small model's epoch about 15% shorter on the CPU, measured with ``bnjax bench``'s reference epoch; compilation
about 20% longer); four gain no more. A vmapped ensemble keeps one step per iteration: unrolled, its epoch was
about 6% longer with a shared batch order on the CPU, the loop overhead being shared by its members anyway."""


def epoch_batches(shuffle_key: Array, epoch: Array, num_examples: int, steps: int, batch_size: int) -> Array:
    """Example indices ``(steps, batch_size)`` of one epoch: a fresh permutation, the remainder skipped."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(shuffle_key), _SHUFFLE), epoch)
    return jax.random.permutation(key, num_examples)[: steps * batch_size].reshape(steps, batch_size)


def evaluate(
    model: Layer | MLPSpec,
    params: Params,
    batch_stats: State,
    x: Array,
    y: Array,
    *,
    batch_size: int = 1000,
    compute_dtype: str = "float32",
    matmul_precision: str | None = None,
) -> dict[str, Array]:
    """Eval-mode accuracy and mean softmax cross-entropy of one model on ``x (N, ...)``, ``y (N,)``.

    ``compute_dtype="bfloat16"`` runs the model as mixed-precision training does (parameters and input cast,
    running statistics and the loss in float32; :class:`TrainConfig`); ``matmul_precision`` as
    :attr:`TrainConfig.matmul_precision`.

    Runs in chunks of ``batch_size`` (the last chunk padded and masked), so memory stays bounded; jit- and
    vmap-compatible (vmap over ``params``/``batch_stats`` for an ensemble). Returns ``{"acc", "loss"}`` (NaN
    for ``N == 0``).
    """
    layer = as_layer(model, "evaluate")
    n = x.shape[0]
    if n == 0:
        return {"acc": jnp.full((), jnp.nan), "loss": jnp.full((), jnp.nan)}
    bs = min(batch_size, n)
    chunks = -(-n // bs)
    pad = chunks * bs - n
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(chunks, bs, *x.shape[1:])
    ys = jnp.pad(y, (0, pad)).reshape(chunks, bs)
    mask = (jnp.arange(chunks * bs) < n).reshape(chunks, bs)
    cparams, xs = cast_compute(compute_dtype, params, xs)

    def chunk(args):
        xc, yc, mc = args
        with matmul_precision_context(matmul_precision):
            logits, _ = layer.apply(cparams, batch_stats, xc, False)
        logits = logits.astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yc)
        correct = jnp.argmax(logits, axis=-1) == yc
        return jnp.sum(jnp.where(mc, correct, False)), jnp.sum(jnp.where(mc, ce, 0.0))

    correct, ce = jax.lax.map(chunk, (xs, ys, mask))
    return {"acc": jnp.sum(correct) / n, "loss": jnp.sum(ce) / n}
