"""Data-parallel training: the batch sharded over the devices of a mesh axis, the state replicated.

The step is :func:`bnjax.train.make_train_step` with ``axis_name`` set, run under ``jax.shard_map``: every
device computes the loss of its shard, the loss is ``pmean``'d, and the gradient of the replicated parameters
is then the global-batch gradient (shard_map's replication typing inserts the ``psum``). Batch norm is
synchronized across the axis (``sync_bn=True``: the exact global batch statistics) or per device ("ghost"
BN, ``sync_bn=False``: each shard normalised with its own statistics; the replicated running statistics are
the mean over devices of the per-device updates). The same code runs on one host or, after
``jax.distributed.initialize()`` and with a global mesh, on many.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bnjax._typing import Array, Layer
from bnjax.nn._mlp import MLPSpec
from bnjax.train._config import TrainConfig
from bnjax.train._step import TrainState, make_train_step

Step = Callable[[TrainState, tuple[Array, Array]], tuple[TrainState, dict[str, Array]]]


def _check_axis(mesh: Mesh, axis: str) -> int:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"make_data_parallel_step: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}; e.g. "
            f"jax.make_mesh((jax.device_count(),), ('data',))."
        )
    if axis not in mesh.shape:
        raise ValueError(
            f"make_data_parallel_step: axis={axis!r} is not an axis of the mesh {dict(mesh.shape)}; pass one "
            f"of {tuple(mesh.shape)}."
        )
    return int(mesh.shape[axis])


def _checked(step: Step, mesh: Mesh, data_spec: P, batch_dim: int, axis: str) -> Step:
    devices = int(mesh.shape[axis])
    data_sharding, replicated = NamedSharding(mesh, data_spec), NamedSharding(mesh, P())

    def run(state: TrainState, batch: tuple[Array, Array]) -> tuple[TrainState, dict[str, Array]]:
        n = batch[0].shape[batch_dim]
        if n % devices:
            raise ValueError(
                f"data-parallel step: batch size {n} is not divisible by the {devices} devices of mesh axis "
                f"{axis!r}; use a batch size that is a multiple of {devices}."
            )
        # Placing the inputs first lets the caller pass host or single-device arrays, also on an Explicit
        # mesh (jax.make_mesh's default), which refuses to reshard implicitly; placed arrays are unchanged.
        return step(jax.device_put(state, replicated), jax.device_put(batch, data_sharding))

    return run


def make_data_parallel_step(model: Layer | MLPSpec, cfg: TrainConfig, steps_per_epoch: int, mesh: Mesh, *,
                            axis: str = "data", sync_bn: bool = True, use_dropout: bool | None = None) -> Step:
    """A jitted data-parallel training step ``step(state, (x, y)) -> (state, {"loss"})`` of one member.

    ``x (B, ...)`` and ``y (B,)`` are split into equal shards of ``B / n`` rows over the ``n`` devices of mesh
    axis ``axis`` (``PartitionSpec(axis)``); the :class:`TrainState` and the metrics are replicated
    (``PartitionSpec()``). With ``sync_bn=True`` and no dropout this equals :func:`make_train_step` on the
    whole batch up to float reassociation. The loss is the mean over all ``B`` examples; the dropout key of a
    device is the single-device key folded with the device's index on ``axis``; divergence is decided on the
    global loss and the ``psum`` of the per-device sentinels, so all devices freeze together.

    Args:
      model, cfg, steps_per_epoch: as for :func:`make_train_step`.
      mesh: a ``jax.sharding.Mesh`` holding ``axis`` (e.g. ``jax.make_mesh((jax.device_count(),), ("data",))``).
      axis: the mesh axis the batch is split over.
      sync_bn: True -- synchronized batch norm (global statistics); False -- per-device "ghost" batch norm,
        whose replicated running statistics are the mean over devices of the per-device updates.
      use_dropout: as for :func:`make_train_step`.

    Returns:
      The jitted step. ``B`` must be a multiple of ``n`` (ValueError otherwise).
    """
    _check_axis(mesh, axis)
    step = make_train_step(model, cfg, steps_per_epoch, use_dropout=use_dropout, axis_name=axis, sync_bn=sync_bn)
    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), (P(axis), P(axis))), out_specs=(P(), P()))
    return _checked(jax.jit(sharded), mesh, P(axis), 0, axis)


def make_data_parallel_ensemble_step(model: Layer | MLPSpec, cfg: TrainConfig, steps_per_epoch: int, mesh: Mesh, *,
                                     axis: str = "data", sync_bn: bool = True, use_dropout: bool | None = None,
                                     shared_batch: bool = False) -> Step:
    """The data-parallel step of ``K`` stacked members (ensemble x data parallel).

    Every device holds all ``K`` members (the stacked :class:`TrainState`, leading member axis, replicated)
    and runs them under ``jax.vmap`` on its shard of the batch; each member's collectives run over ``axis``
    on its own, so member ``k`` trains as :func:`make_data_parallel_step` would train it alone.

    Args:
      model, cfg, steps_per_epoch, mesh, axis, sync_bn, use_dropout: as for :func:`make_data_parallel_step`.
      shared_batch: False -- per-member batches ``x (K, B, D)``, ``y (K, B)``, split along ``B``
        (``PartitionSpec(None, axis)``); True -- one batch ``x (B, D)``, ``y (B,)`` for all members, split
        along ``B``.

    Returns:
      The jitted step ``(states, (x, y)) -> (states, {"loss": (K,)})``.
    """
    _check_axis(mesh, axis)
    step = make_train_step(model, cfg, steps_per_epoch, use_dropout=use_dropout, axis_name=axis, sync_bn=sync_bn)
    data_spec = P(axis) if shared_batch else P(None, axis)
    members = jax.vmap(step, in_axes=(0, None if shared_batch else 0))
    sharded = jax.shard_map(members, mesh=mesh, in_specs=(P(), (data_spec, data_spec)), out_specs=(P(), P()))
    return _checked(jax.jit(sharded), mesh, data_spec, 0 if shared_batch else 1, axis)
