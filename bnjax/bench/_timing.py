"""Interleaved timing: every variant is measured in each round, so drift on a shared machine hits all alike."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def block(tree: Any) -> None:
    jax.block_until_ready(tree)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, rounds: int = 5, calls: int = 20, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Times each zero-argument ``fn`` (which must return what to block on) ``calls`` times per round.

    Returns, per name, ``{"median_s", "min_s", "max_s", "rounds_s"}``: the median, least and greatest per-call
    time over the rounds, and each round's (its total time divided by ``calls``, with one sync at the end of
    the round), in round order so that :func:`ratio` can pair them.
    """
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = None
            for _ in range(calls):
                out = fn()
            block(out)
            per_round[name].append((time.perf_counter() - t0) / calls)
    return {
        name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "rounds_s": v}
        for name, v in per_round.items()
    }


def ratio(times: dict[str, dict[str, Any]], a: str, b: str) -> dict[str, float]:
    """``a``'s time over ``b``'s from one :func:`time_interleaved` result: ``{"median", "min", "max"}`` of the
    ratio within each round (both measured moments apart, so drift on a shared machine cancels)."""
    r = [x / y for x, y in zip(times[a]["rounds_s"], times[b]["rounds_s"])]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}


def stateful(step: Callable, state: Any, *args: Any) -> Callable[[], Any]:
    """A zero-argument timing closure that advances ``state`` through ``step(state, *args) -> (state, out)`` and
    returns ``out`` (donation-safe: the donated state is replaced by the new one on every call)."""
    box = [state]

    def call():
        box[0], out = step(box[0], *args)
        return out

    return call
