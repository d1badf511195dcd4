"""Training hyperparameters, the optimizer (optax) and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bnjax.nn._checks import is_int as _is_int, is_number as _is_number

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "epoch_decay", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (CS231n ``Solver`` conventions where they exist).

    Attributes:
      optimizer: ``"sgd"``, ``"momentum"`` (heavy ball, ``optax.trace``), ``"adam"`` or ``"adamw"`` (optax
        defaults: b1 0.9, b2 0.999, eps 1e-8).
      learning_rate: base learning rate (per member overridable in an ensemble).
      lr_decay: with ``schedule="epoch_decay"``, the learning rate is multiplied by this after every epoch.
      schedule: ``"constant"``, ``"epoch_decay"`` or ``"cosine"`` (``lr * (1 + cos(pi * t / T)) / 2`` over the
        ``T`` steps of the run).
      momentum: momentum coefficient of ``"momentum"``.
      weight_decay: decoupled weight decay of ``"adamw"`` (applied to dense weights only, scaled by the
        learning rate as in ``optax.adamw``).
      l2: L2 penalty ``0.5 * l2 * sum(W**2)`` over the dense weights, added to the loss (CS231n ``reg``).
      batch_size: mini-batch size; an epoch is ``N_train // batch_size`` steps over a fresh permutation (the
        remainder of the permutation is skipped that epoch).
      epochs: number of epochs.
      eval_train_samples: size of the fixed training subset on which "train" accuracy and loss are measured
        in eval mode (CS231n's ``num_train_samples``); all of the training set if larger.
      eval_batch_size: chunk size of evaluation.
      precise_bn_batches: if > 0, also evaluate with batch statistics recomputed over this many training
        batches of ``batch_size`` (:func:`bnjax.train.recompute_batch_stats`); metrics get a ``"_precise"``
        suffix.
      seed: default member seed; it also fixes the evaluation subset and, with shared batches, the order.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_decay: float = 1.0
    schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.0
    l2: float = 0.0
    batch_size: int = 50
    epochs: int = 10
    eval_train_samples: int = 1000
    eval_batch_size: int = 1000
    precise_bn_batches: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        bad = _validate(self)
        if bad:
            raise ValueError(f"TrainConfig: {bad}")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _validate(c: TrainConfig) -> str | None:
    if c.optimizer not in OPTIMIZERS:
        return f"optimizer={c.optimizer!r} is not a valid option; use one of {OPTIMIZERS}."
    if c.schedule not in SCHEDULES:
        return f"schedule={c.schedule!r} is not a valid option; use one of {SCHEDULES}."
    for name in ("learning_rate", "lr_decay"):
        v = getattr(c, name)
        if not _is_number(v) or not v > 0:
            return f"{name}={v!r} must be a positive number."
    if c.lr_decay != 1.0 and c.schedule != "epoch_decay":
        return f"lr_decay={c.lr_decay!r} only acts with schedule='epoch_decay' (got schedule={c.schedule!r}); set both."
    if not _is_number(c.momentum) or not 0.0 <= c.momentum < 1.0:
        return f"momentum={c.momentum!r} must be in [0, 1)."
    for name in ("weight_decay", "l2"):
        v = getattr(c, name)
        if not _is_number(v) or v < 0:
            return f"{name}={v!r} must be a number >= 0."
    if c.weight_decay and c.optimizer != "adamw":
        return (f"weight_decay={c.weight_decay!r} is the decoupled decay of optimizer='adamw' (got "
                f"optimizer={c.optimizer!r}); use l2 for a penalty in the loss, or optimizer='adamw'.")
    for name in ("batch_size", "epochs", "eval_train_samples", "eval_batch_size"):
        v = getattr(c, name)
        if not _is_int(v) or v < 1:
            return f"{name}={v!r} must be a positive int."
    if not _is_int(c.precise_bn_batches) or c.precise_bn_batches < 0:
        return f"precise_bn_batches={c.precise_bn_batches!r} must be an int >= 0 (0 turns it off)."
    if not _is_int(c.seed) or c.seed < 0:
        return f"seed={c.seed!r} must be an int >= 0."
    return None


def _dense_weight_mask(params: Any) -> Any:
    """True on the ``"weight"`` leaf of every ``dense_*`` layer, False elsewhere (BN/LN parameters, biases)."""
    return {
        name: {leaf: name.startswith("dense_") and leaf == "weight" for leaf in layer}
        for name, layer in params.items()
    }


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optax transformation giving the update *direction* of ``cfg.optimizer`` (learning rate 1, sign +).

    The step applies ``params - lr_t * direction`` with each member's own (traced) learning rate times the
    schedule, which is exactly ``optax.<optimizer>(lr_t)``: optax scales the same direction by ``-lr``.
    """
    if cfg.optimizer == "sgd":
        return optax.identity()
    if cfg.optimizer == "momentum":
        return optax.trace(decay=cfg.momentum)
    if cfg.optimizer == "adam":
        return optax.scale_by_adam()
    return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(cfg.weight_decay, mask=_dense_weight_mask))


def lr_factor(cfg: TrainConfig, step: Any, steps_per_epoch: int) -> jax.Array:
    """Schedule multiplier of the base learning rate at (0-based) global ``step``, as float32."""
    if cfg.schedule == "constant":
        return jnp.ones((), jnp.float32)
    if cfg.schedule == "epoch_decay":
        fn = optax.exponential_decay(1.0, transition_steps=steps_per_epoch, decay_rate=cfg.lr_decay, staircase=True)
    else:
        fn = optax.cosine_decay_schedule(1.0, decay_steps=cfg.epochs * steps_per_epoch)
    return jnp.asarray(fn(step), jnp.float32)
