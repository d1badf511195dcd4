"""Training K models ("members") at once: the outline of a run -- set up, restore, loop, result.

Each member has its own seed (init, dropout and -- unless batches are shared -- shuffling), weight scale,
drop rate, learning rate and BN momentum. A member whose loss or parameters become non-finite is frozen and
reported; the others continue undisturbed. The members train in one compiled program per epoch (``vmap``;
``K = 1`` without it), in chunks of ``cfg.member_chunk`` when they do not fit in memory at once, sharded over
a device mesh with ``parallel``. Resume has one rule: an epoch exists iff a checkpoint holds it, and the
checkpoint carries that epoch's metrics, which a resumed run hands to ``callback`` again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bnjax._typing import Layer
from bnjax.nn._mlp import MLPSpec
from bnjax.train._calls import Placed, gather_states, place, run_epoch, run_evaluation
from bnjax.train._config import TrainConfig
from bnjax.train._members import Members
from bnjax.train._progress import Checkpointer, Progress, fingerprint, restore
from bnjax.train._result import EnsembleResult
from bnjax.train._setup import DatasetLike, Run, check_inputs, setup
from bnjax.train._sharded import Parallel

__all__ = ["DatasetLike", "check_inputs", "train_ensemble"]

Callback = Callable[[int, dict[str, np.ndarray]], None]


def _train(run: Run, placed: Placed, progress: Progress, callback: Callback | None,
           checkpoint: Checkpointer) -> None:
    """Epoch 0's evaluation (a fresh run) and the remaining epochs; the restored epochs are replayed to
    ``callback`` first, so it sees every epoch of the run exactly once after a resume too."""
    epochs, steps = run.cfg.epochs, run.steps
    if not progress.history:  # a fresh run: evaluate before training
        progress.record(0, run_evaluation(run, placed, progress.states), epochs)
    for e in range(progress.epoch + 1):
        if callback is not None:
            callback(e, progress.values(e, steps))
    for e in range(progress.epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        progress.states, losses = run_epoch(run, placed, progress.states)
        progress.epoch_times.append(time.perf_counter() - t0)
        progress.loss_history = np.concatenate([progress.loss_history, losses], axis=1)
        progress.record(e, run_evaluation(run, placed, progress.states), epochs)
        progress.epoch = e
        checkpoint(progress, placed)  # before the callback: an interrupt there keeps this epoch's checkpoint
        if callback is not None:
            callback(e, progress.values(e, steps))


def train_ensemble(
    model: Layer | MLPSpec,
    cfg: TrainConfig,
    data: DatasetLike,
    members: Members = None,
    *,
    shared_batches: bool = False,
    callback: Callback | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    parallel: Parallel | None = None,
    checkpoint_every: float | str = "auto",
    log: Callable[[str], None] | None = None,
) -> EnsembleResult:
    """Trains ``K`` models at once and evaluates them before training and after every epoch.

    Every epoch is one jitted call per chunk of members (state buffers donated): a ``lax.scan`` over
    ``N_train // batch_size`` mini-batches drawn by a permutation computed on device; then one jitted
    evaluation in eval mode on a fixed training subset, the validation and the test set, whose metrics reach
    the host as whole arrays (one transfer per chunk).

    Args:
      model: a :class:`bnjax.Layer` (any ``init``/``apply`` pair mapping ``(B, *example_shape)`` inputs to
        ``(B, num_classes)`` logits, e.g. ``bnjax.serial(...)`` or what a config's ``model.factory`` returns)
        or an :class:`bnjax.MLPSpec` (built by :func:`bnjax.mlp` here, once; its ``in_features``/
        ``num_classes`` may be None, then they come from the data).
      cfg: the training configuration (``cfg.member_chunk`` sets how many members one call trains).
      data: an object with ``x_train, y_train, x_val, y_val, x_test, y_test`` (NumPy; x as float32 with the
        example shape the model takes -- an MLP flattens each example --, y integer labels) and
        ``num_classes`` (``bnjax.data.Dataset``); ``name`` is used in the checkpoint fingerprint when present.
      members: a dict of equal-length lists over ``"seed"``, ``"learning_rate"``, ``"weight_scale"``,
        ``"dropout"``, ``"bn_momentum"``, or a list of :class:`Member` (see :func:`resolve_members` for the
        defaults). ``None``: one member with ``cfg.seed``. Member ``k``'s init and randomness depend only on
        its own values, so it trains exactly as it would alone (up to float reassociation under vmap).
      shared_batches: every member sees the same mini-batch order (drawn from ``cfg.seed``) instead of its
        own (drawn from its seed); dropout masks stay per member. Faster when the model starts with a dense
        layer: the first layer of all members is then one matmul. Natural for hyperparameter sweeps (paired
        comparisons); keep the default when members are replicates whose data order should vary too.
      callback: ``callback(epoch, metrics)`` after the evaluation before training (epoch 0) and after each
        epoch; ``metrics`` maps every history metric to a ``(K,)`` NumPy array, plus ``"loss"`` (mean
        train-mode loss of the epoch) from epoch 1. A resumed run first calls it again for every epoch its
        checkpoint holds (0 to the checkpoint's epoch, with the saved values), then for the epochs it trains.
      checkpoint_dir: if set, the full state and the metrics so far are saved there (atomically) at epoch
        boundaries, before the callback sees the epoch.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (its fingerprint must match
        this call, otherwise ValueError). With ``resume=False`` an existing checkpoint is overwritten.
      parallel: a :class:`Parallel` layout: the members sharded over ``parallel.members`` devices, each
        member's batch over ``parallel.data`` (see :mod:`bnjax.train._sharded`). None (default) or a layout of
        one device: the single-device program. The results do not depend on it beyond float summation order
        (dropout masks are drawn per row of the global batch); a checkpoint written with one layout resumes
        with another. Over several processes (after ``jax.distributed.initialize()``) every process calls
        this with the same arguments and data, ``callback`` runs on every process, only process 0 writes the
        checkpoint and every process reads process 0's (broadcast).
      checkpoint_every: when a checkpoint is due: ``"auto"`` (default) -- every epoch while the members' state
        is under 64 MiB, and for a larger one at the first epoch boundary after nine times what the last save
        took (saving costs at most a tenth of the run); a number -- at the first epoch boundary after that many
        seconds (0: every epoch); and always at the last epoch. A resumed run trains the epochs after the last
        checkpoint again.
      log: where the run says how many chunks of members it uses and why (when more than one, or when
        ``cfg.member_chunk`` is set); None: silent.

    Returns:
      An :class:`EnsembleResult`.
    """
    if resume and checkpoint_dir is None:
        raise ValueError("train_ensemble: resume=True needs checkpoint_dir, the directory holding the checkpoint.")
    run = setup(model, cfg, data, members, parallel, shared_batches)
    checkpoint = Checkpointer(checkpoint_dir, None, checkpoint_every, cfg.epochs)
    placed = place(run, log)
    checkpoint.fingerprint = fingerprint(run, data) if checkpoint_dir is not None else None
    progress = restore(run, placed, checkpoint_dir, checkpoint.fingerprint, resume)
    _train(run, placed, progress, callback, checkpoint)
    final = gather_states(progress.states, placed)
    return EnsembleResult(
        members=[m.to_dict() for m in run.members],
        history=progress.history,
        loss_history=progress.loss_history,
        diverged_step=np.asarray(final.diverged_step, np.int64),
        params=final.params,
        batch_stats=final.batch_stats,
        epoch_times=progress.epoch_times,
        steps_per_epoch=run.steps,
        compile_seconds=placed.compile_seconds,
        spec=run.layer.spec,
        cfg=cfg,
        model=run.layer,
    )
