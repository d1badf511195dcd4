"""Process setup for the CLI, done before JAX creates its backends: the CPU device count (``--cpu-devices``),
JAX's persistent compilation cache (on by default for ``bnjax run`` and ``bnjax bench``) and joining a
multi-process run through ``jax.distributed``.

A library user calls JAX directly: ``jax.config.update("jax_num_cpu_devices", n)``,
``jax.config.update("jax_compilation_cache_dir", path)``, ``jax.distributed.initialize(...)``.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from bnjax.launch import LaunchError

__all__ = ["CACHE_ENV", "DistributedArgs", "compile_cache_dir", "compile_cache_wanted", "enable_compile_cache",
           "join_distributed", "multi_process_requested", "set_cpu_devices"]

CACHE_ENV = "BNJAX_COMPILE_CACHE"
"""Set to ``0`` to turn the persistent compilation cache off for every command (as ``--no-compile-cache``)."""


# Environments in which ``jax.distributed.initialize()`` finds the coordinator, the process count and this
# process's id by itself (JAX's own cluster detection: SLURM, Open MPI, TPU pods, the JAX_* variables).
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_TPU_HOSTS = "TPU_WORKER_HOSTNAMES"


def _backends_started() -> bool:
    from jax._src import xla_bridge  # the one place JAX records this; no public API says it

    return bool(getattr(xla_bridge, "_backends", None))


def set_cpu_devices(n: int) -> None:
    """Split the host CPU into ``n`` JAX devices (XLA's host-platform device count).

    Must run before JAX first touches a device. Raises LaunchError for ``n < 1`` or when JAX has already
    started its backends in this process.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise LaunchError(f"--cpu-devices={n!r} must be a positive int, e.g. --cpu-devices 2.")
    if _backends_started():
        raise LaunchError("--cpu-devices: JAX has already started its devices in this process; set it before any "
                          "computation (the bnjax CLI does this first).")
    jax.config.update("jax_num_cpu_devices", n)


def compile_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bnjax/jax-compile`` (``~/.cache/bnjax/jax-compile`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnjax" / "jax-compile"


def compile_cache_wanted(flag_off: bool) -> bool:
    """Whether ``bnjax run``/``bench`` use the persistent cache: yes unless ``--no-compile-cache`` or
    ``BNJAX_COMPILE_CACHE=0``."""
    return not flag_off and os.environ.get(CACHE_ENV, "1") != "0"


def enable_compile_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (default :func:`compile_cache_dir`).

    Every compiled program is stored (no minimum compile time or size), so a second run of the same study in
    a fresh process loads its programs instead of compiling them. Returns the directory, or None when it cannot
    be created (the run then compiles as usual; a cache is an optimisation, never a reason to fail).
    """
    path = Path(directory) if directory is not None else compile_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@dataclass(frozen=True)
class DistributedArgs:
    """How this process joins a multi-process run (all None: a single process, unless the cluster is detected)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 60
    heartbeat_s: int = 10


def _cluster_detected() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if all(v in env for v in _SLURM) and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return len([h for h in env.get(_TPU_HOSTS, "").split(",") if h]) > 1


_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_distributed_args(a: DistributedArgs) -> None:
    """Raises LaunchError naming the flag when the explicit multi-process flags are incomplete or out of range."""
    given = [a.coordinator is not None, a.num_processes is not None, a.process_id is not None]
    if not any(given):
        return
    if not all(given):
        raise LaunchError("a multi-process run needs all three of --coordinator HOST:PORT, --num-processes N and "
                          "--process-id I (or none of them, where JAX detects the cluster itself).")
    m = _ADDRESS.match(a.coordinator)
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise LaunchError(f"--coordinator={a.coordinator!r} must be HOST:PORT with a port in 1..65535, e.g. "
                          f"127.0.0.1:12355.")
    if a.num_processes < 1:
        raise LaunchError(f"--num-processes={a.num_processes} must be at least 1.")
    if a.timeout_s < 1:
        raise LaunchError(f"--timeout={a.timeout_s} must be at least 1 (seconds).")
    if not 0 <= a.process_id < a.num_processes:
        raise LaunchError(f"--process-id={a.process_id} is out of range for --num-processes={a.num_processes}; "
                          f"use 0..{a.num_processes - 1}.")


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Poll a TCP connection to the coordinator (process 0 serves it) for up to ``timeout_s`` seconds.

    JAX itself would abort this process from C++ after its timeout; checking first gives a clear error.
    """
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise LaunchError(f"--coordinator={address}: no coordinator answered within {timeout_s} s ({last}); start "
                      f"process 0 with the same --coordinator, or check the address.")


def multi_process_requested(args: DistributedArgs) -> bool:
    """Whether this command is one process of several: explicit flags with ``num_processes > 1``, or none and a
    cluster JAX detects by itself. Raises LaunchError for bad flags."""
    check_distributed_args(args)
    if args.num_processes is not None:
        return args.num_processes > 1
    return _cluster_detected()


def _initialize_kwargs(timeout_s: int, heartbeat_s: int) -> dict[str, int]:
    """The timeouts this JAX's ``jax.distributed.initialize`` accepts (older releases lack some)."""
    import inspect

    accepted = inspect.signature(jax.distributed.initialize).parameters
    wanted = {"initialization_timeout": timeout_s, "heartbeat_timeout_seconds": heartbeat_s}
    return {k: v for k, v in wanted.items() if k in accepted}


def join_distributed(args: DistributedArgs) -> bool:
    """Join a multi-process run with ``jax.distributed.initialize``; returns whether this is one.

    With explicit ``coordinator``/``num_processes``/``process_id`` those are passed on; with none of them,
    ``jax.distributed.initialize()`` is called only where JAX can detect the cluster (SLURM, Open MPI, a TPU pod
    slice, ``JAX_COORDINATOR_ADDRESS``). On CPU the collectives go over gloo. A coordinator that cannot be reached
    within ``timeout_s`` is a LaunchError naming it; a peer that stops sending heartbeats for ``heartbeat_s``
    makes JAX stop the other processes.
    """
    if not multi_process_requested(args):
        return False
    explicit = args.coordinator is not None  # checked: the three flags come together or not at all
    if explicit and args.process_id != 0:
        _wait_for_coordinator(args.coordinator, args.timeout_s)
    try:  # CPU devices talk over gloo (JAX's CPU collectives); accelerators use their own
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, KeyError, ValueError):
        pass
    kwargs: dict[str, Any] = _initialize_kwargs(args.timeout_s, args.heartbeat_s)
    if explicit:
        kwargs.update(coordinator_address=args.coordinator, num_processes=args.num_processes,
                      process_id=args.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # JAX raises RuntimeError/XlaRuntimeError/ValueError depending on the failure
        where = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or "the detected cluster"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LaunchError(f"could not join the multi-process run at {where} within {args.timeout_s} s: {first[:300]}")
    return True
