"""Member chunks: a sweep that does not fit in one call of the compiled programs runs as several calls of the
same programs, each on a chunk of the members (``TrainConfig.member_chunk``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

from bnjax._typing import FieldError

MARGIN = 0.6
"""The share of the free memory a chunk's programs may plan to use (the rest: fragmentation, the host's own
copies, other processes)."""


def free_memory(device: Any) -> tuple[int | None, str]:
    """``(bytes free, where the figure comes from)`` for ``device``: its allocator's limit minus what is in use
    (``memory_stats()``, accelerators), else the host's available memory (``MemAvailable``, CPUs)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics raise or return None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.platform} memory_stats()"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "the host's MemAvailable"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the host's available pages"
    except (ValueError, OSError, AttributeError):
        return None, "no memory figure"


@dataclass(frozen=True)
class ChunkPlan:
    """How ``num_members`` members run: ``size`` per call, ``calls`` member ranges ``(start, stop)``, ``width``
    members per call after padding (a multiple of the layout's member devices), and why (one line)."""

    size: int
    width: int
    calls: tuple[tuple[int, int], ...]
    reason: str

    @property
    def num_chunks(self) -> int:
        return len(self.calls)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def make_plan(num_members: int, size: int, multiple: int, reason: str) -> ChunkPlan:
    """A plan of chunks of ``size`` members (the last one shorter), each padded to a multiple of ``multiple``."""
    calls = tuple((s, min(s + size, num_members)) for s in range(0, num_members, size))
    return ChunkPlan(size, _round_up(size, multiple), calls, reason)


def check_member_chunk(member_chunk: int | str, num_members: int) -> None:
    """Raises FieldError (``TrainConfig.member_chunk``) for a chunk larger than the member count."""
    if member_chunk != "auto" and member_chunk > num_members:
        raise FieldError("TrainConfig", "member_chunk", member_chunk,
                         f"is larger than the {num_members} members of this ensemble; use at most {num_members} "
                         f"(or 'auto').")


def plan_chunks(num_members: int, member_chunk: int | str, multiple: int,
                needed_bytes: Callable[[int], int], state_bytes: int = 0) -> ChunkPlan:
    """The chunk plan for ``member_chunk`` (an int, or ``"auto"``).

    ``"auto"``: all members in one call when the programs' need for that width (``needed_bytes(width)``, from
    XLA's memory analysis of the compiled programs) fits in :data:`MARGIN` of the device's free memory, else
    the largest chunk that does beside the other chunks' states, which stay on the device between calls
    (``state_bytes`` per member), assuming the program's need grows in proportion to the members per call.

    Raises:
      FieldError (``member_chunk``): with ``"auto"``, the members' states alone exceed that memory.
    """
    check_member_chunk(member_chunk, num_members)
    if member_chunk != "auto":
        return make_plan(num_members, int(member_chunk), multiple,
                         f"train.member_chunk = {member_chunk}: {num_members} members in "
                         f"{-(-num_members // int(member_chunk))} chunk(s) of at most {member_chunk}")
    width = _round_up(num_members, multiple)
    need = needed_bytes(width)
    free, where = free_memory(jax.devices()[0])
    budget = None if free is None else int(MARGIN * free)
    if not need or budget is None or need <= budget:
        return make_plan(num_members, num_members, multiple, "all members in one call")
    gib = 2.0**30
    resident = num_members * state_bytes  # every chunk's state, held on the device between calls
    per_member = max(need / width - state_bytes, 1.0)  # what one more member adds to a call's working memory
    if resident >= budget:
        raise FieldError("TrainConfig", "member_chunk", member_chunk,
                         f"cannot help: the {num_members} members' states alone take {resident / gib:.2f} GiB, "
                         f"more than {MARGIN:.0%} of the {free / gib:.2f} GiB free ({where}); train fewer members "
                         f"per run (fewer seeds or sweep values).")
    size = int((budget - resident) // per_member) // multiple * multiple
    size = min(max(size, multiple), num_members)
    return make_plan(num_members, size, multiple,
                     f"train.member_chunk = 'auto': {num_members} members need {need / gib:.2f} GiB per call, "
                     f"{MARGIN:.0%} of the {free / gib:.2f} GiB free ({where}) is {budget / gib:.2f} GiB: "
                     f"{-(-num_members // size)} chunk(s) of at most {size}")
