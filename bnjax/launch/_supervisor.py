"""A multi-process ``bnjax run`` as a supervised child process, so that JAX's fatal distributed errors end in
one clear line.

When a peer process dies, or the coordinator cannot be reached, JAX's distributed runtime terminates the
surviving processes from C++ (``LOG(FATAL)``: an abort with a stack trace) after its heartbeat or
initialisation timeout; Python cannot catch that. ``bnjax run`` in a multi-process run therefore runs the work
in a child process (the same command, marked by an environment variable) and turns such an abort into one
message with the command that resumes the run. Everything else the child prints passes through unchanged.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["CHILD_ENV", "PEER_FAILURE", "is_child", "is_peer_failure", "run_supervised", "watch_parent"]

# Words of the errors a collective raises when a peer process is gone (gloo's transport, the coordination
# service's barriers and heartbeats).
_PEER_WORDS = ("Gloo", "gloo", "heartbeat", "Connection reset", "Barrier failed", "UNAVAILABLE", "coordination")

CHILD_ENV = "BNJAX_SUPERVISED_CHILD"

# Lines of JAX's distributed runtime that mean "this process was stopped because the run cannot go on".
PEER_FAILURE = "bnjax-peer-failure:"
"""What the child prints (then exits 2) when a collective with another process failed in Python."""

_FATAL_MARKERS = (
    PEER_FAILURE,
    "JAX distributed service detected fatal errors",
    "stopped sending heartbeats",
    "Terminating process because",
)
_UNREACHABLE_MARKERS = ("RegisterTask", "DEADLINE_EXCEEDED")


def is_child() -> bool:
    """Whether this process is the supervised child of a multi-process ``bnjax run``."""
    return os.environ.get(CHILD_ENV) == "1"


def is_peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is JAX's runtime error for a collective whose peer process stopped (not a bug of ours)."""
    return isinstance(e, RuntimeError) and any(w in str(e) for w in _PEER_WORDS)


def watch_parent(interval_s: float = 1.0) -> None:
    """In the supervised child: exit when the supervising process is gone (killed with SIGKILL, it cannot stop
    its child), so no orphan keeps the run's devices and lock."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, daemon=True, name="bnjax-parent-watch").start()


_RUNTIME_LOG = re.compile(r"^[EFWI]\d{4} \d\d:\d\d:\d\d")  # absl's log-line prefix, e.g. "E1201 09:36:04"


def run_supervised(argv: Sequence[str], *, resume_hint: str, kept: Callable[[], str | None],
                   process_id: int | None, debug: bool = False, heartbeat_s: int = 10) -> int:
    """Run ``python -m bnjax <argv>`` as a child and return its exit code (2 after a distributed failure).

    ``kept()`` says, after a failure, what the results directory keeps for ``--resume``
    (:func:`bnjax.run._rundir.kept_message`; None: nothing, then no ``resume_hint``).

    SIGINT/SIGTERM are forwarded to the child (which saves what it has and says how to resume).
    """
    env = dict(os.environ, **{CHILD_ENV: "1"})
    proc = subprocess.Popen([sys.executable, "-m", "bnjax", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, errors="replace")

    def copy_stdout() -> None:  # gloo announces its connections on stdout; shown with --debug only
        assert proc.stdout is not None
        for line in proc.stdout:
            if debug or not line.startswith("[Gloo]"):
                sys.stdout.write(line)
                sys.stdout.flush()

    out_thread = threading.Thread(target=copy_stdout, daemon=True)
    out_thread.start()

    def forward(signum, frame):  # noqa: ARG001
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    fatal: list[str] = []
    held: list[str] = []  # the runtime's own log lines, shown only if the run did not end in a fatal error
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if fatal or any(m in line for m in _FATAL_MARKERS):
                fatal.append(line)
            elif line.startswith("[Gloo]") or (_RUNTIME_LOG.match(line) and ("coordination" in line
                                                                              or "distributed" in line)):
                held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        rc = proc.wait()
        out_thread.join(timeout=5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if fatal and rc != 0:
        if debug:
            sys.stderr.writelines(held + fatal)
        text = " ".join(fatal[:3])
        if any(m in text for m in _UNREACHABLE_MARKERS) and "heartbeat" not in text:
            why = ("the other processes did not join within the timeout" if process_id == 0
                   else "the coordinator could not be reached")
        else:
            why = f"another process of this multi-process run stopped (no heartbeat for {heartbeat_s} s)"
        saved = kept()
        if saved is not None:
            then = f"{saved}; resume with: {resume_hint}"
        else:
            then = "nothing was kept; start all processes again with the same command"
        print(f"bnjax run: error: {why}; JAX stopped this process too; {then}", file=sys.stderr)
        return 2
    sys.stderr.writelines(held)
    return rc
