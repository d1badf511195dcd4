"""How the processes of a multi-process ``bnjax run`` agree before and while process 0 writes the results.

Every process runs the same study on its own devices (``jax.distributed``); only process 0 touches the results
directory. Each check that can refuse the run runs on every process and the processes then exchange one flag
each (:func:`agree`), so a refusal anywhere stops every process with a one-line error instead of leaving the
others waiting in a collective. What only process 0 can decide (which variants an earlier run finished) is
broadcast from it (:func:`from_writer`). With one process both are plain calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np

from bnjax.run._errors import RunError
from bnjax.run._schema import ConfigError
from bnjax.train._checkpoint import CheckpointError

__all__ = ["agree", "from_writer", "is_writer"]

T = TypeVar("T")
_USER_ERRORS = (ConfigError, RunError, CheckpointError, OSError)


def is_writer() -> bool:
    """Whether this process writes the results (process 0; the only process of a single-process run)."""
    return jax.process_index() == 0


def agree(what: str, fn: Callable[[], T]) -> T:
    """``fn()`` on every process; if it raises a user error on any of them, every process stops.

    The process whose check failed raises its own error; the others raise a RunError naming it and ``what``.
    """
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    error: BaseException | None = None
    result = None
    try:
        result = fn()
    except _USER_ERRORS as e:
        error = e
    flags = np.asarray(multihost_utils.process_allgather(np.int32(error is not None))).reshape(-1)
    if error is not None:
        raise error
    failed = [int(i) for i in np.flatnonzero(flags)]
    if failed:
        raise RunError(f"process {failed[0]} refused the run while {what} (its own message says why); this "
                       f"process wrote nothing.")
    return result  # type: ignore[return-value]


def from_writer(values: np.ndarray) -> np.ndarray:
    """Process 0's ``values`` on every process (``values`` must have the same shape and dtype everywhere)."""
    if jax.process_count() == 1:
        return np.asarray(values)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(values)))
