"""The errors ``bnjax run`` reports as one message (exit code 2) or as an interruption (130/143)."""

from __future__ import annotations

import signal
from pathlib import Path


class RunError(Exception):
    """A results directory cannot be used as asked (busy, already complete, nothing to resume, not a run);
    the message names the directory and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) arrived during a run; raised like Ctrl-C's KeyboardInterrupt so cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or a termination signal after its results directory was set up.

    Attributes:
      signum: the signal (``SIGINT`` for Ctrl-C).
      out: the results directory.
      resumable: whether anything was trained (a checkpoint, a finished variant); otherwise the directory
        was cleaned up.
      detail: where the run stopped, e.g. ``"in variant 'bn' after epoch 2"``.
    """

    def __init__(self, signum: int, out: Path, resumable: bool, detail: str) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.out, self.resumable, self.detail = signum, Path(out), resumable, detail

    @property
    def exit_code(self) -> int:
        """``128 + signal number``: 130 for Ctrl-C, 143 for SIGTERM (the shell's convention)."""
        return 128 + self.signum
