"""Ensembles on many devices: members sharded over one mesh axis, each member's batch over another.

A :class:`Parallel` layout puts ``members x data`` devices in one ``jax.sharding.Mesh`` with axes
``("members", "data")``. The stacked :class:`~bnjax.train.TrainState` of the ``K`` members is sharded on its
leading axis over ``"members"`` (``NamedSharding(mesh, P("members"))``) and replicated over ``"data"``; the
epoch and the evaluation run under ``jax.shard_map``, so every device trains its own ``K / members`` members
under ``vmap`` and, with ``data > 1``, only its ``batch / data`` rows of each member's batch (the step is
:func:`bnjax.train.make_train_step` with ``axis_name="data"``: the loss is ``pmean``'d over ``"data"``, batch
norm is synchronized over it with ``sync_bn=True``). The training set lives on every device; each device
draws the same permutation and takes its rows, so no data moves between devices. Member counts that do not
divide over ``"members"`` are padded with copies of the last member, whose results are dropped.

After ``jax.distributed.initialize()`` ``jax.devices()`` spans every process, so the same code trains over
many hosts: the mesh then holds all devices of all processes (process-major: the ``"data"`` axis stays within
a host where it fits), every process runs the same program on its own devices, and the metrics are gathered
to every process (a ``psum`` over ``"members"`` inside the program).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bnjax._typing import FieldError, Layer
from bnjax.nn._checks import is_int
from bnjax.train._config import TrainConfig
from bnjax.train._step import epoch_batches, make_shared_batch_ensemble_step, make_train_step

__all__ = ["Layout", "Parallel", "make_layout"]

MEMBERS, DATA = "members", "data"


@dataclass(frozen=True)
class Parallel:
    """How :func:`bnjax.train.train_ensemble` spreads an ensemble over devices (the ``[parallel]`` table).

    Attributes:
      members: devices the members are split over (their leading axis sharded), or ``"auto"`` (default): all
        devices left after ``data``, at most one per member in a single process (a member count that is not a
        multiple of it is padded with copies whose results are dropped).
      data: devices each member's batch is split over (data parallel; the batch size must divide by it).
      sync_bn: with ``data > 1``: True (default) -- batch norm uses the statistics of the whole global batch
        (count-weighted over the devices, equal to one device's); False -- each device normalises with its own
        rows' statistics ("ghost" BN over ``batch / data`` rows) and the running statistics take the mean of
        the devices' updates.
    """

    members: int | Literal["auto"] = "auto"
    data: int = 1
    sync_bn: bool = True

    def __post_init__(self) -> None:
        if self.members != "auto" and not (is_int(self.members) and self.members >= 1):
            raise FieldError("Parallel", "members", self.members,
                             "must be a positive int (devices the members are split over) or 'auto'.")
        if not (is_int(self.data) and self.data >= 1):
            raise FieldError("Parallel", "data", self.data,
                             "must be a positive int (devices each member's batch is split over).")
        if not isinstance(self.sync_bn, bool):
            raise FieldError("Parallel", "sync_bn", self.sync_bn, "must be true or false.")


@dataclass(frozen=True)
class Layout:
    """A resolved :class:`Parallel`: the mesh and how the ``num_members`` members fill it."""

    mesh: Mesh
    members: int
    data: int
    sync_bn: bool
    num_members: int
    padded_members: int

    @property
    def local_members(self) -> int:
        """Members per device of the ``"members"`` axis."""
        return self.padded_members // self.members

    @property
    def single_device(self) -> bool:
        return self.members * self.data == 1

    def sharding(self, spec: P = P()) -> NamedSharding:
        """``NamedSharding(mesh, spec)``; the default replicates."""
        return NamedSharding(self.mesh, spec)

    def member_sharding(self) -> NamedSharding:
        """The stacked members' sharding: leading axis over ``"members"``, replicated over ``"data"``."""
        return NamedSharding(self.mesh, P(MEMBERS))


def make_layout(parallel: Parallel, num_members: int, batch_size: int,
                devices: Sequence[jax.Device] | None = None) -> Layout:
    """The mesh of ``parallel`` over ``devices`` (default ``jax.devices()``, every process's).

    Raises:
      ValueError naming ``parallel.<key>``: ``members x data`` exceeds the devices (or, over several
      processes, differs from their number: every process must hold part of the mesh), or the batch size does
      not divide by ``data``.
    """
    if not isinstance(parallel, Parallel):
        raise TypeError(f"train_ensemble: parallel must be a bnjax.train.Parallel, got {type(parallel).__name__}.")
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    data = parallel.data
    if data > n:
        raise ValueError(f"parallel.data = {data} needs {data} devices, there are {n}; use at most {n} (on a CPU, "
                         f"`bnjax run ... --cpu-devices N` splits it into N devices).")
    if batch_size % data:
        fits = [d for d in range(1, n + 1) if batch_size % d == 0]
        raise ValueError(f"parallel.data = {data} does not divide train.batch_size = {batch_size} (every device "
                         f"takes an equal share of the batch); use one of {fits} or another batch size.")
    if parallel.members == "auto":  # several processes: every device must hold part of the mesh
        members = n // data if jax.process_count() > 1 else min(n // data, num_members)
    else:
        members = parallel.members
    if members * data > n:
        raise ValueError(f"parallel.members = {members} x parallel.data = {data} needs {members * data} devices, "
                         f"there are {n}; lower them so that members x data <= {n}.")
    if jax.process_count() > 1 and members * data != n:
        raise ValueError(f"parallel.members = {members} x parallel.data = {data} = {members * data} devices, but "
                         f"the {jax.process_count()} processes hold {n}; over several processes the mesh must use "
                         f"every device (members x data = {n}).")
    padded = -(-num_members // members) * members
    mesh = Mesh(np.asarray(devices[: members * data], dtype=object).reshape(members, data), (MEMBERS, DATA))
    return Layout(mesh, members, data, parallel.sync_bn, num_members, padded)


def pad_members(tree: Any, padded: int) -> Any:
    """Stacked member pytree (leading axis ``K``) padded to ``padded`` rows with copies of the last member."""
    def pad(a):
        a = np.asarray(a)
        extra = padded - a.shape[0]
        return a if extra == 0 else np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)


def to_devices(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays (every process holds the same values) as global arrays with ``sharding``.

    Each process places only the pieces its own devices hold (``jax.make_array_from_callback``), so this works
    the same on one process and on many.
    """
    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, tree)


def to_host(tree: Any, layout: Layout) -> Any:
    """Global arrays as NumPy on every process (gathered over the mesh first when a process lacks a piece).

    Every process must call it (the gather is a collective).
    """
    leaves = jax.tree.leaves(tree)
    if all(getattr(a, "is_fully_addressable", True) for a in leaves):
        return jax.device_get(tree)
    gathered = jax.jit(lambda t: t, out_shardings=layout.sharding(P()))(tree)
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), gathered)


def _gather_members(v: jax.Array, padded: int) -> jax.Array:
    """This device's members' values ``(K_local, ...)`` placed in ``(K_padded, ...)`` and summed over
    ``"members"``: every device then holds all members' values (exactly: the other slots add zeros), typed as
    replicated."""
    full = jnp.zeros((padded, *v.shape[1:]), v.dtype)
    full = jax.lax.dynamic_update_slice_in_dim(full, v, jax.lax.axis_index(MEMBERS) * v.shape[0], 0)
    return jax.lax.psum(full, MEMBERS)


def _slice_rows(idx: jax.Array, rows: int) -> jax.Array:
    """This device's ``rows`` columns of the batch indices ``(..., B)`` along the ``"data"`` axis."""
    start = jax.lax.axis_index(DATA) * rows
    return jax.lax.dynamic_slice_in_dim(idx, start, rows, axis=idx.ndim - 1)


def make_sharded_epoch_fn(layer: Layer, cfg: TrainConfig, layout: Layout, *, num_train: int, shared_batches: bool,
                          use_dropout: bool) -> Callable[..., Any]:
    """``epoch(states, x, y, shuffle_key) -> (states, losses)`` for ``layout`` (to ``jax.jit`` as is).

    ``states``: the padded stacked state, sharded ``P("members")``; ``x``, ``y``: the training set,
    replicated; ``losses``: ``(K_padded, steps)`` train-mode losses, replicated (gathered over ``"members"``, a ``psum``).
    """
    steps = num_train // cfg.batch_size
    bs = cfg.batch_size
    rows = bs // layout.data
    axis = DATA if layout.data > 1 else None
    if shared_batches:
        batched_step = make_shared_batch_ensemble_step(layer, cfg, steps, use_dropout=use_dropout, axis_name=axis,
                                                       sync_bn=layout.sync_bn)
    else:
        batched_step = jax.vmap(make_train_step(layer, cfg, steps, use_dropout=use_dropout, axis_name=axis,
                                                sync_bn=layout.sync_bn))

    def epoch(states, x, y, shuffle_key):
        e = states.step[0] // steps
        if shared_batches:
            idx = epoch_batches(shuffle_key, e, num_train, steps, bs)  # (steps, B)
        else:
            per_member = jax.vmap(lambda k: epoch_batches(k, e, num_train, steps, bs))(states.key)
            idx = jnp.swapaxes(per_member, 0, 1)  # (steps, K_local, B)
        if axis is not None:
            idx = _slice_rows(idx, rows)

        def body(carry, idx_t):
            carry, metrics = batched_step(carry, (x[idx_t], y[idx_t]))
            return carry, metrics["loss"]

        states, losses = jax.lax.scan(body, states, idx)
        return states, _gather_members(losses.T, layout.padded_members)

    return jax.shard_map(epoch, mesh=layout.mesh, in_specs=(P(MEMBERS), P(), P(), P()),
                         out_specs=(P(MEMBERS), P()))


def make_sharded_eval_fn(batched_eval: Callable[..., dict[str, jax.Array]], layout: Layout) -> Callable[..., Any]:
    """The vmapped evaluation ``(states, sets, precise_x) -> {metric: (K_local,)}`` run per device on its members,
    the metrics gathered to ``(K_padded,)`` and replicated."""
    def run(states, sets, precise_x):
        out = batched_eval(states, sets, precise_x)
        return {k: _gather_members(v, layout.padded_members) for k, v in out.items()}

    return jax.shard_map(run, mesh=layout.mesh, in_specs=(P(MEMBERS), P(), P()), out_specs=P())
