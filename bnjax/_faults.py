"""A test hook that kills the process between two writes, to prove that every interruption resumes.

Every place where a run has finished one write and not begun the next calls :func:`kill_point`. With the
environment variable ``BNJAX_KILL_AT=N`` the process sends itself SIGKILL at the ``N``-th such point it
reaches (1-based; no cleanup runs, as after a power cut or the OOM killer); with ``BNJAX_KILL_LOG=FILE`` it
appends each point's name to ``FILE``, so a test can count the points of an uninterrupted run and then kill
one at each. Unset (always, outside tests), a point costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "BNJAX_KILL_AT"
KILL_LOG = "BNJAX_KILL_LOG"
_reached = 0


def kill_point(name: str) -> None:
    """Marks a point between two writes (see the module docstring)."""
    global _reached
    if KILL_AT not in os.environ and KILL_LOG not in os.environ:
        return
    _reached += 1
    log = os.environ.get(KILL_LOG)
    if log:
        with open(log, "a") as f:
            f.write(f"{_reached} {name}\n")
    if os.environ.get(KILL_AT) == str(_reached):
        os.kill(os.getpid(), signal.SIGKILL)
