"""Training hyperparameters, ensemble members, the optimizer (optax) and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from bnjax._typing import FieldError
from bnjax.nn import _checks

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "epoch_decay", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")


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
      weight_decay: decoupled weight decay of ``"adamw"`` (applied to the ``"weight"`` leaves only -- dense and
        convolution kernels --, scaled by the learning rate as in ``optax.adamw``).
      l2: L2 penalty ``0.5 * l2 * sum(W**2)`` over the ``"weight"`` leaves, added to the loss (CS231n ``reg``).
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
      compute_dtype: ``"float32"`` (default) or ``"bfloat16"``: mixed precision. Parameters, optimizer state
        and running statistics stay float32; each step casts the floating parameters and the input to bfloat16,
        so matmuls and activations run in bfloat16, while every normalization computes its statistics and
        updates its running averages in float32 and the loss is reduced in float32 (see :func:`cast_compute`).
      member_chunk: how many members one call of the compiled programs trains: ``"auto"`` (default) -- all of
        them when they fit in the device's free memory (``memory_stats()`` on an accelerator, the host's
        available memory on a CPU; with a safety margin), else the largest count that does; an int -- at most
        that many (the last chunk is padded with copies whose results are dropped). Chunks run the same
        compiled program one after another, so results equal one call up to float reassociation; it is a
        placement, not a result: a checkpoint resumes under another value.
      matmul_precision: the default precision of the matmuls and convolutions of training and evaluation
        (``jax.default_matmul_precision``): None (default) -- JAX's own default, under which NVIDIA GPUs run
        float32 matmuls as TF32 (about 1e-3 relative error; CPUs compute in float32 whatever the setting);
        ``"default"``, ``"high"``, or ``"highest"`` (true float32 on every device). A layer built with its own
        ``precision`` keeps it.
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
    compute_dtype: str = "float32"
    matmul_precision: str | None = None
    member_chunk: int | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        bad = _validate(self)
        if bad is not None:
            raise FieldError("TrainConfig", *bad)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _validate(c: TrainConfig) -> tuple[str, Any, str] | None:
    """The first problem with ``c`` as ``(field, value, what would be accepted)``, or None."""
    if c.optimizer not in OPTIMIZERS:
        return "optimizer", c.optimizer, f"is not a valid option; use one of {OPTIMIZERS}."
    if c.compute_dtype not in COMPUTE_DTYPES:
        return "compute_dtype", c.compute_dtype, f"is not a valid option; use one of {COMPUTE_DTYPES}."
    if c.matmul_precision is not None and c.matmul_precision not in _checks.PRECISIONS:
        return "matmul_precision", c.matmul_precision, _checks.PRECISION_EXPECTED
    if c.schedule not in SCHEDULES:
        return "schedule", c.schedule, f"is not a valid option; use one of {SCHEDULES}."
    for name in ("learning_rate", "lr_decay"):
        v = getattr(c, name)
        if not _checks.is_finite(v) or not v > 0:
            return name, v, "must be a positive finite number."
    if c.lr_decay != 1.0 and c.schedule != "epoch_decay":
        return "lr_decay", c.lr_decay, (f"only acts with schedule='epoch_decay' (got schedule={c.schedule!r}); "
                                        f"set both.")
    if not _checks.is_number(c.momentum) or not 0.0 <= c.momentum < 1.0:
        return "momentum", c.momentum, "must be in [0, 1)."
    for name in ("weight_decay", "l2"):
        v = getattr(c, name)
        if not _checks.is_finite(v) or v < 0:
            return name, v, "must be a finite number >= 0."
    if c.weight_decay and c.optimizer != "adamw":
        return "weight_decay", c.weight_decay, (f"is the decoupled decay of optimizer='adamw' (got "
                                                f"optimizer={c.optimizer!r}); use l2 for a penalty in the loss, or "
                                                f"optimizer='adamw'.")
    for name in ("batch_size", "epochs", "eval_train_samples", "eval_batch_size"):
        v = getattr(c, name)
        if not _checks.is_int(v) or v < 1:
            return name, v, "must be a positive int."
    if not _checks.is_int(c.precise_bn_batches) or c.precise_bn_batches < 0:
        return "precise_bn_batches", c.precise_bn_batches, "must be an int >= 0 (0 turns it off)."
    if not _checks.is_int(c.seed) or c.seed < 0:
        return "seed", c.seed, "must be an int >= 0."
    if c.member_chunk != "auto" and (not _checks.is_int(c.member_chunk) or c.member_chunk < 1):
        return "member_chunk", c.member_chunk, ("must be 'auto' or a positive int (members trained per call of the "
                                                "compiled program).")
    return None


PLACEMENT_FIELDS = ("member_chunk",)
"""TrainConfig fields that place the computation without changing its results (a checkpoint resumes under other
values; compiled programs do not depend on them)."""


def is_weight(path: tuple[Any, ...]) -> bool:
    """Whether a parameter's pytree path ends in ``"weight"`` (dense and convolution kernels; biases and the
    norms' ``scale``/``bias`` are not weights): the leaves that ``l2`` and ``weight_decay`` act on."""
    return bool(path) and getattr(path[-1], "key", None) == "weight"


def _weight_mask(params: Any) -> Any:
    """True on every ``"weight"`` leaf, False elsewhere (norm parameters, biases)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_weight(path), params)


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
    return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(cfg.weight_decay, mask=_weight_mask))


def lr_factor(cfg: TrainConfig, step: Any, steps_per_epoch: int) -> jax.Array:
    """Schedule multiplier of the base learning rate at (0-based) global ``step``, as float32."""
    if cfg.schedule == "constant":
        return jnp.ones((), jnp.float32)
    if cfg.schedule == "epoch_decay":
        fn = optax.exponential_decay(1.0, transition_steps=steps_per_epoch, decay_rate=cfg.lr_decay, staircase=True)
    else:
        fn = optax.cosine_decay_schedule(1.0, decay_steps=cfg.epochs * steps_per_epoch)
    return jnp.asarray(fn(step), jnp.float32)


def cast_compute(compute_dtype: str, params: Any, x: Any) -> tuple[Any, Any]:
    """``(params, x)`` in ``compute_dtype`` (:attr:`TrainConfig.compute_dtype`): every floating leaf and a
    floating ``x`` cast (a no-op for ``"float32"``; ``x=None`` stays None). Running statistics are not passed through here: they stay float32, and the normalization layers
    compute batch statistics in float32 for low-precision inputs. The cast is differentiable, so gradients reach
    the float32 parameters in float32."""
    if compute_dtype == "float32":
        return params, x
    dt = jnp.dtype(compute_dtype)
    cast = lambda a: a.astype(dt) if a is not None and jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
    return jax.tree.map(cast, params), cast(x)
