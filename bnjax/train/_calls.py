"""The members on their devices: the chunk plan, the compiled programs and the inputs they read; one epoch and
one evaluation of every chunk, with the members' losses and metrics brought to the host as whole arrays (one
transfer per chunk)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from bnjax._typing import FieldError
from bnjax.train._chunks import ChunkPlan, plan_chunks
from bnjax.train._config import TrainConfig
from bnjax.train._members import Member, TrainState, init_members, member_arrays, shared_shuffle_key, state_shapes
from bnjax.train._programs import ProgramSpec, Programs, compile_programs
from bnjax.train._setup import Run
from bnjax.train._sharded import Layout, Parallel, make_layout, pad_members, to_devices, to_host


@dataclass
class Placed:
    """The run on its devices: the chunk plan, the compiled programs and the inputs they read."""

    plan: ChunkPlan
    layout: Layout | None
    programs: Programs
    args: tuple[Any, ...]  # x, y, shuffle key (the epoch's inputs after the state)
    eval_args: tuple[Any, ...]  # sets, precise_x
    compile_seconds: float


def _layout_for(run: Run, width: int) -> Layout | None:
    if run.layout is None:
        return None
    return make_layout(Parallel(run.layout.members, run.layout.data, run.layout.sync_bn), width,
                       run.cfg.batch_size)


def _program_spec(run: Run, width: int) -> ProgramSpec:
    aval = lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)  # noqa: E731
    sets = tuple(sorted((name, (aval(x), aval(y))) for name, (x, y) in run.inputs["sets"].items()))
    inputs = (aval(run.inputs["x"]), aval(run.inputs["y"]), sets, aval(run.inputs["precise_x"]))
    return ProgramSpec(run.layer, run.cfg, width, len(run.inputs["x"]), run.shared, run.use_dropout, run.options,
                       inputs, _layout_for(run, width), jax.config.jax_default_matmul_precision)


def _state_bytes(run: Run) -> int:
    """Bytes of one member's training state (parameters, statistics, optimizer state, keys)."""
    state = state_shapes(run.layer, run.cfg, run.members[:1])
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state))


def place(run: Run, log: Callable[[str], None] | None) -> Placed:
    """Plans the chunks, compiles their programs and puts the inputs on the devices."""
    t0 = time.perf_counter()
    multiple = 1 if run.layout is None else run.layout.members
    plan = plan_chunks(run.num_members, run.cfg.member_chunk, multiple,
                       lambda width: compile_programs(_program_spec(run, width)).bytes, _state_bytes(run))
    if log is not None and (plan.num_chunks > 1 or run.cfg.member_chunk != "auto"):
        log(plan.reason)  # names the setting, the member count and the chunks
    spec = _program_spec(run, plan.width)
    with _out_of_memory(run.cfg, plan.size):
        programs = compile_programs(spec)
    layout = spec.layout
    x, y, sets, precise = run.inputs["x"], run.inputs["y"], run.inputs["sets"], run.inputs["precise_x"]
    key = jax.device_get(shared_shuffle_key(run.cfg.seed))
    if layout is None:
        placed = jax.device_put((x, y, key, sets, precise))
    else:
        placed = to_devices((x, y, key, sets, precise), layout.sharding())
    return Placed(plan, layout, programs, placed[:3], placed[3:], time.perf_counter() - t0)


@contextlib.contextmanager
def _out_of_memory(cfg: TrainConfig, size: int) -> Iterator[None]:
    """Turns the device running out of memory into one error that names ``member_chunk`` and a smaller value."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - XLA reports OOM as a runtime error whose text says so
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text and "out of memory" not in text:
            raise
        first = next((line for line in text.splitlines() if line.strip()), type(e).__name__)[:200]
        raise FieldError("TrainConfig", "member_chunk", cfg.member_chunk,
                         f"ran out of memory with {size} members per call ({first}); set a smaller member_chunk, "
                         f"e.g. {max(1, size // 2)}.") from None


def _call_members(run: Run, plan: ChunkPlan, start: int, stop: int) -> list[Member]:
    """Members ``start:stop``, padded to the call's width with copies of the last (results dropped)."""
    chunk = run.members[start:stop]
    return chunk + [chunk[-1]] * (plan.width - len(chunk))


def _place_state(state: TrainState, placed: Placed) -> TrainState:
    if placed.layout is None:
        return jax.device_put(state)
    return to_devices(jax.device_get(state), placed.layout.member_sharding())


def init_states(run: Run, placed: Placed) -> list[TrainState]:
    """Each call's initial state (one vmapped init program per call)."""
    out = []
    for start, stop in placed.plan.calls:
        state = init_members(run.layer, run.cfg, *member_arrays(_call_members(run, placed.plan, start, stop)))
        out.append(state if placed.layout is None else _place_state(state, placed))
    return out


def split_states(host: TrainState, placed: Placed) -> list[TrainState]:
    """A host state of all members as each call's padded state on its devices."""
    out = []
    for start, stop in placed.plan.calls:
        part = jax.tree.map(lambda a: np.asarray(a)[start:stop], host)
        out.append(_place_state(pad_members(part, placed.plan.width), placed))
    return out


def gather_states(states: list[TrainState], placed: Placed) -> TrainState:
    """Every member's state as NumPy (unpadded; a collective over the processes: all must call it)."""
    parts = []
    for (start, stop), st in zip(placed.plan.calls, states):
        host = jax.device_get(st) if placed.layout is None else to_host(st, placed.layout)
        parts.append(jax.tree.map(lambda a: np.asarray(a)[: stop - start], host))
    return jax.tree.map(lambda *a: np.concatenate(a), *parts)


def run_epoch(run: Run, placed: Placed, states: list[TrainState]) -> tuple[list[TrainState], np.ndarray]:
    """One epoch of every call; the members' ``(K, steps)`` train losses on the host."""
    out, losses = [], []
    with _out_of_memory(run.cfg, placed.plan.size):
        for st in states:
            st, loss = placed.programs.epoch(st, *placed.args)
            out.append(st)
            losses.append(loss)
        host = jax.device_get(losses)  # one transfer per call; blocks until the epoch has run
    return out, np.concatenate([h[: stop - start] for h, (start, stop) in zip(host, placed.plan.calls)])


def run_evaluation(run: Run, placed: Placed, states: list[TrainState]) -> dict[str, np.ndarray]:
    """Every metric as a ``(K,)`` float64 array (one transfer per call)."""
    with _out_of_memory(run.cfg, placed.plan.size):
        parts = jax.device_get([placed.programs.evaluate(st, *placed.eval_args) for st in states])
    calls = placed.plan.calls
    return {k: np.concatenate([np.asarray(p[k], np.float64).reshape(-1)[: stop - start]
                               for p, (start, stop) in zip(parts, calls)]) for k in parts[0]}
