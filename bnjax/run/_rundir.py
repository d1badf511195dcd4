"""A results directory's life: checked before anything is written, locked, cleaned up or marked on the way out.

A results directory is always one of

- absent or empty;
- a complete run (``run.json`` says ``"status": "complete"``);
- a resumable interrupted run (something was trained: a finished variant, a checkpoint, a metrics line);
- a run that stopped before its first epoch finished, which a new run replaces (saying so).

Validation that needs the data happens before the directory is touched (:func:`load_and_check`). While a run
writes, it holds an exclusive ``flock`` on ``.bnjax.lock`` in the directory, so a second run into the same
``--out`` is refused instead of interleaving; the kernel drops the lock when the process dies, even by
SIGKILL, so a stale lock never blocks. SIGTERM is turned into an exception like Ctrl-C's, so both flush the
metrics, keep the last complete epoch's checkpoint and leave the directory marked ``"interrupted"``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnjax._faults import kill_point
from bnjax._io import atomic_write, is_temporary, remove_stale_temporaries
from bnjax._machine import compile_cache_on, load_average, software
from bnjax._typing import FieldError
from bnjax.run._errors import RunError, RunInterrupted, Terminated
from bnjax.run._schema import config_error
from bnjax.run.config import ConfigError, DataConfig, StudyConfig, Variant, resolved_raw
from bnjax.run.results import metrics_lines
from bnjax.train._checkpoint import CheckpointError, verify_checkpoints
from bnjax.train._config import PLACEMENT_FIELDS

LOCK_FILE = ".bnjax.lock"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
VARIANTS = "variants"
# Everything a run writes at the top of its directory (a run that stops before training removes exactly these).
_WRITTEN = (CONFIG_FILE, "config.source.toml", "analysis.py", RUN_FILE, METRICS_FILE, VARIANTS, CHECKPOINTS,
            "summary.json", "report.md")


# ------------------------------------------------------------------------------------------------ messages

def describe_error(e: BaseException) -> str:
    """One line for a user: an OSError as ``path: what happened``, anything else as its message."""
    if isinstance(e, OSError) and e.strerror:
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return f"{where}: {e.strerror}" if where else e.strerror
    return str(e) or type(e).__name__


@contextlib.contextmanager
def user_errors(where: str, *, oserror: bool = False) -> Iterator[None]:
    """Turns the ValueError/TypeError (and, with ``oserror``, OSError) a validating call raises into a
    ConfigError prefixed with ``where``: the call's contract is that these mean bad input, not a bug. A
    :class:`bnjax.FieldError` is restated against its config key (``train.batch_size = ...``)."""
    try:
        yield
    except ConfigError:
        raise
    except FieldError as e:
        raise ConfigError(f"{where}: {config_error(e)}") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e
    except OSError as e:
        if not oserror:
            raise
        raise ConfigError(f"{where}: {describe_error(e)}") from e


def check_analysis(path: Path | None) -> Any:
    """The study's analysis module (:func:`bnjax.run.report.load_analysis`); a module without ``analyze`` or
    with a syntax error is a ConfigError naming the file."""
    from bnjax.run.report import load_analysis

    try:
        return load_analysis(path)
    except (TypeError, SyntaxError) as e:
        raise ConfigError(f"study.analysis: {e}") from e


def load_and_check(
    variants: Sequence[Variant], check: Callable[[Variant, Any], None]
) -> dict[DataConfig, Any]:
    """Loads every variant's data once and calls ``check(variant, data)``, which raises what training would
    (batch size vs training set, precise-BN batches, input size vs model); returns the datasets.

    Runs before the results directory is touched, so bad data or settings leave nothing behind. Errors become
    a ConfigError naming the variant.
    """
    datasets: dict[DataConfig, Any] = {}
    for v in variants:
        if v.data not in datasets:
            with user_errors(f"variant {v.name!r}: [data]", oserror=True):
                datasets[v.data] = v.data.load()
        with user_errors(f"variant {v.name!r}"):
            check(v, datasets[v.data])
    return datasets


# ------------------------------------------------------------------------------------------ directory state

@dataclass(frozen=True)
class RunDirState:
    """What a results directory holds.

    Attributes:
      kind: ``"absent"``, ``"empty"``, ``"foreign"`` (files but no run), ``"failed"`` (a run that trained
        nothing), ``"interrupted"`` (a run that trained something and did not finish) or ``"complete"``.
      finished: the variants saved under ``variants/`` (their ``history.npz`` exists).
      detail: a few words for messages (when it started, what is saved).
    """

    kind: str
    finished: tuple[str, ...] = ()
    detail: str = ""


def config_text(config: StudyConfig) -> str:
    """``config.json``: the resolved tables (:func:`bnjax.run.config.resolved_raw`) as JSON, every number kept as
    given, so the file parses back to an equal config. An unbounded renorm clip (``model.renorm_rmax = inf``) is
    written ``Infinity``, which Python's ``json`` (and so ``load_config``) reads back (``null`` would not parse);
    other non-finite values are refused by the config checks before anything is written."""
    return json.dumps(resolved_raw(config), indent=1)


def _same_json(a: Any, b: Any) -> bool:
    # Compared as canonical text, so that equal non-finite values (Infinity, NaN) compare equal.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def checkpoint_files(out: Path) -> list[Path]:
    d = out / CHECKPOINTS
    return sorted(d.glob("*/checkpoint*.msgpack")) if d.is_dir() else []


def inspect_run_dir(out: Path) -> RunDirState:
    """Classifies ``out`` (read-only). Raises RunError when ``out`` exists but is not a directory."""
    out = Path(out)
    if not out.exists():
        return RunDirState("absent")
    if not out.is_dir():
        raise RunError(f"--out {out} exists and is not a directory; choose another --out.")
    # The lock and the temporary files of a write cut short by a kill are not part of a run.
    entries = [p.name for p in out.iterdir() if p.name != LOCK_FILE and not is_temporary(p.name)]
    if not entries:
        return RunDirState("empty")
    if not (out / CONFIG_FILE).is_file():
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        return RunDirState("foreign", detail=f"it has {shown} but no {CONFIG_FILE}")
    meta = _read_json(out / RUN_FILE)
    finished = tuple(sorted(p.parent.name for p in (out / VARIANTS).glob("*/history.npz")))
    started = f"started {meta['started']}" if meta.get("started") else "start time unknown"
    status = meta.get("status")
    if status == "complete" or (status is None and (out / "summary.json").is_file()
                                and not (out / CHECKPOINTS).exists()):
        return RunDirState("complete", finished, started)
    metrics = out / METRICS_FILE
    if finished or checkpoint_files(out) or (metrics.is_file() and metrics.stat().st_size > 0):
        saved = f"{len(finished)} variant(s) finished" + (", a checkpoint saved" if checkpoint_files(out) else "")
        return RunDirState("interrupted", finished, f"{started}, {saved}")
    return RunDirState("failed", finished, started)


def kept_message(out: Path) -> str | None:
    """What ``--resume`` continues from in ``out`` after a run stopped, read from the disk (so no message claims a
    checkpoint that is not there), as a clause: ``"the metrics and the last complete epoch's checkpoint are
    saved in out"``; None when ``out`` holds no resumable run (nothing was kept)."""
    try:
        state = inspect_run_dir(out)
    except (RunError, OSError):
        return None
    if state.kind != "interrupted":
        return None
    finished = list(state.finished)
    saved = sorted({p.parent.name for p in checkpoint_files(out)} - set(finished))
    items = [f"the finished variant{'s' if len(finished) > 1 else ''} {', '.join(map(repr, finished))}"] if finished else []
    if saved:
        of = f" of variant{'s' if len(saved) > 1 else ''} {', '.join(map(repr, saved))}" if finished or len(saved) > 1 else ""
        items += ["the metrics", f"the last complete epoch's checkpoint{of}"]
    else:
        items.append("the metrics written so far")
    text = (", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]) + f" are saved in {out}"
    if not saved:
        text += ("; there is no checkpoint of the unfinished variants, so they train again from their first epoch"
                 if finished else "; there is no checkpoint yet, so training starts again from the first epoch")
    return text


# ------------------------------------------------------------------------------------------------- locking

def _lock_holder(path: Path) -> str:
    info = _read_json(path)
    return f"pid {info['pid']}, started {info.get('started', '?')}" if "pid" in info else "another process"


def _busy(out: Path, path: Path) -> RunError:
    return RunError(f"{out} is in use by another bnjax run ({_lock_holder(path)}); wait for it to finish or "
                    f"choose another --out.")


def probe_lock(out: Path) -> None:
    """Raises RunError if a live process holds the lock of ``out`` (read-only: writes nothing)."""
    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(out, path) from None
    finally:
        os.close(fd)  # closing drops the probe's lock


def acquire_lock(out: Path) -> int:
    """An exclusive ``flock`` on ``out/.bnjax.lock``, as an open file descriptor (close it to release).

    Raises:
      RunError: another live process holds it.
    """
    path = Path(out) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(out, path) from None
    # The file we locked must still be the one at the path (a run that cleaned up may have removed it).
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        raise RunError(f"{out} changed while this run was starting (another run cleaned it up); run again.")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    return fd


# ------------------------------------------------------------------------------------------------ planning

@dataclass(frozen=True)
class RunPlan:
    """What :class:`RunDir` will do with ``out``: start it fresh, replace a failed run, or resume."""

    out: Path
    kind: str  # the directory's kind when planned (RunDirState.kind)
    resume: bool  # train with the engine's resume (continue from checkpoints)
    replace: bool  # remove a failed run's files first
    finished: tuple[str, ...] = ()


def _results_part(raw: dict[str, Any]) -> dict[str, Any]:
    """The tables of a raw config that decide the results: without ``[parallel]`` and the placement keys of
    ``[train]`` (``member_chunk``), which only place the computation, so a run may resume with others."""
    def train_without(table: Any) -> Any:
        return {k: v for k, v in table.items() if k not in PLACEMENT_FIELDS} if isinstance(table, dict) else table

    out = {k: v for k, v in raw.items() if k != "parallel"}
    if "train" in out:
        out["train"] = train_without(out["train"])
    if isinstance(out.get("variants"), list):
        out["variants"] = [{**v, "train": train_without(v["train"])} if isinstance(v, dict) and "train" in v else v
                           for v in out["variants"]]
    return out


def plan_run(out: Path, config: StudyConfig, *, resume: bool) -> RunPlan:
    """Decides what a run of ``config`` into ``out`` does, refusing what cannot work; writes nothing.

    Raises:
      RunError: ``out`` is busy (another run holds its lock), holds something that is not a run, holds a
        complete run (without ``--resume``) or an interrupted one (without ``--resume``), or ``--resume`` finds
        nothing to resume.
      ConfigError: ``--resume`` with a config that differs from the saved one.
      CheckpointError: ``--resume`` and every checkpoint of a variant to resume is damaged.
    """
    out = Path(out)
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"--out {out}: {parent} is a file, not a directory; choose another --out.")
            break
    state = inspect_run_dir(out)
    if state.kind != "absent":
        probe_lock(out)
    if state.kind == "foreign":
        raise RunError(f"--out {out} is not empty and holds no bnjax run ({state.detail}); choose a new or empty "
                       f"directory.")
    if state.kind in ("absent", "empty"):
        if resume:
            what = "does not exist" if state.kind == "absent" else "is empty"
            raise RunError(f"--resume: nothing to resume, {out} {what}; run without --resume to start a new run.")
        return RunPlan(out, state.kind, resume=False, replace=False)
    if state.kind == "failed":
        return RunPlan(out, state.kind, resume=False, replace=True)
    if not resume:
        if state.kind == "complete":
            raise RunError(f"{out} already holds a complete run ({state.detail}); choose another --out, or pass "
                           f"--resume to rebuild its report.")
        raise RunError(f"{out} already holds a run; pass --resume to continue it ({state.detail}), or choose "
                       f"another --out.")
    saved = out / CONFIG_FILE
    before, now = _results_part(_read_json(saved)), _results_part(json.loads(config_text(config)))
    if not _same_json(before, now):
        diffs = [k for k in sorted(set(before) | set(now)) if not _same_json(before.get(k), now.get(k))]
        raise ConfigError(f"--resume: the config differs from the one saved in {saved} (tables {diffs}); "
                          f"resume with the same config and --set options, or use a new --out directory.")
    for v in config.variants:
        if v.name in state.finished:
            continue
        intact, problems = verify_checkpoints(out / CHECKPOINTS / v.name)
        if intact is None and problems:
            raise CheckpointError(
                f"--resume: no intact checkpoint for variant {v.name!r}: " + "; ".join(problems)
                + f". Delete {out / CHECKPOINTS / v.name} to train that variant again from scratch (finished "
                  f"variants are kept), then resume."
            )
    return RunPlan(out, state.kind, resume=True, replace=False, finished=state.finished)


# ------------------------------------------------------------------------------------------------- writing

class MetricsLog:
    """Appends one JSON line per member per epoch to ``metrics.jsonl``, flushed at once (a crash loses nothing
    written). ``last`` is the ``(variant, epoch)`` of the latest line.

    ``keep`` (a resumed run): first rewrite the file with the lines of those variants only (the finished ones);
    an unfinished variant's lines are written again as the engine replays its checkpoint's epochs, so every line
    ends up in the file exactly once whatever the moment of the kill.
    """

    def __init__(self, path: Path, keep: Collection[str] | None = None) -> None:
        self.path = Path(path)
        self.last: tuple[str, int] | None = None
        try:
            if keep is not None and self.path.exists():
                atomic_write(self.path, "".join(_lines_of(self.path, set(keep))))
            self.f = open(self.path, "a+")  # noqa: SIM115 - held open across the run, closed by RunDir
            if self.f.tell() > 0:  # a line cut short by a kill must not swallow the next one
                self.f.seek(self.f.tell() - 1)
                if self.f.read(1) != "\n":
                    self.f.write("\n")
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from e

    def write(self, lines: list[dict[str, Any]]) -> None:
        try:
            self.f.write("".join(json.dumps(line) + "\n" for line in lines))
            self.f.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from e
        kill_point("metrics: an epoch's rows written")
        epochs = [(line["variant"], line["epoch"]) for line in lines if line.get("epoch", 0) > 0]
        if epochs:
            self.last = epochs[-1]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()


def _lines_of(path: Path, variants: set[str]) -> Iterator[str]:
    """The complete lines of ``path`` that belong to ``variants``, as written."""
    return (line for line, row in metrics_lines(path) if row.get("variant") in variants)


def _remove_written(out: Path) -> None:
    for name in _WRITTEN:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    for p in out.glob("*.png"):
        p.unlink(missing_ok=True)
    remove_stale_temporaries(out)


class RunDir:
    """The results directory while a run writes it (a context manager).

    On entry: creates and locks the directory, replaces a failed run's files (saying so), writes
    ``config.json``, ``config.source.toml``, ``analysis.py``, ``run.json`` (``"status": "running"``) and opens
    ``metrics.jsonl`` (:attr:`metrics`); SIGTERM/SIGHUP now raise :class:`Terminated`.

    On exit: closes the metrics log and records the wall-clock time and the load average (unless
    :meth:`record_time` already did, before the report). Without an exception the run is marked
    ``"complete"``. Otherwise, if nothing was trained, everything the run wrote is removed (and the directory
    itself if the run created it), so a rerun starts cleanly; else ``run.json`` says ``"interrupted"`` and
    ``--resume`` continues. Ctrl-C and termination signals come out as :class:`RunInterrupted`; an OSError that
    names no file is given the directory's path.
    """

    def __init__(self, plan: RunPlan, config: StudyConfig, *, command: str | None = None,
                 source: str | Path | None = None, device: str = "", python: str = "",
                 say: Callable[[str], None] = print) -> None:
        self.plan, self.config, self.out = plan, config, plan.out
        self.command, self.source, self.device, self.python, self.say = command, source, device, python, say
        self.metrics: MetricsLog | None = None
        self._fd: int | None = None
        self._created = False  # the run created the directory
        self._wrote = False  # the run began writing into it (after checking it under the lock)
        self._t0: float | None = time.perf_counter()
        self._handlers: dict[int, Any] = {}
        self.meta: dict[str, Any] = {}

    # -- entry
    def __enter__(self) -> RunDir:
        try:
            self._setup()
        except BaseException as e:
            self._finish(type(e), e)
            raise
        return self

    def _setup(self) -> None:
        out, plan = self.out, self.plan
        self._created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, f"cannot create the results directory ({e.strerror})", str(out)) from e
        self._fd = acquire_lock(out)
        state = inspect_run_dir(out)
        if state.kind != plan.kind and not (plan.kind == "absent" and state.kind == "empty"):
            raise RunError(f"{out} changed while this run was starting (it now holds a {state.kind} run); run "
                           f"again.")
        self._wrote = True
        if plan.replace:
            self.say(f"{out} holds a run that stopped before its first epoch ({state.detail}); replacing it.")
            _remove_written(out)
        remove_stale_temporaries(out, recursive=True)  # temporary files of writes a kill cut short
        atomic_write(out / CONFIG_FILE, config_text(self.config))
        src = Path(self.source) if self.source is not None else None
        if src is not None and src.is_file() and src.resolve() != (out / "config.source.toml").resolve():
            atomic_write(out / "config.source.toml", src.read_text())
        if self.config.analysis_path is not None:
            atomic_write(out / "analysis.py", self.config.analysis_path.read_text())
        meta = _read_json(out / RUN_FILE) if plan.resume else {}
        meta.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
        meta.update(command=self.command or meta.get("command"), device=self.device, python=self.python,
                    software=software(), compile_cache=compile_cache_on(), load_average_start=load_average(),
                    status="running", pid=os.getpid())
        self.meta = meta
        atomic_write(out / RUN_FILE, json.dumps(meta, indent=1))
        self.metrics = MetricsLog(out / METRICS_FILE, keep=plan.finished if plan.resume else None)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._handlers[sig] = signal.signal(sig, _raise_terminated)

    # -- exit
    def __exit__(self, et: Any, ev: BaseException | None, tb: Any) -> bool:
        self._finish(et, ev)
        return False

    def _finish(self, et: Any, ev: BaseException | None) -> None:
        # Cleanup runs with Ctrl-C and SIGTERM ignored: a second press must not leave a half-cleaned directory.
        quiet = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                quiet[sig] = signal.signal(sig, signal.SIG_IGN)
        try:
            new = self._cleanup(et, ev)
        finally:
            for sig, h in quiet.items():
                signal.signal(sig, h)
            for sig, h in self._handlers.items():
                signal.signal(sig, h)
            self._handlers = {}
            if self._fd is not None:
                os.close(self._fd)  # releases the lock
                self._fd = None
        if new is not None:
            raise new from ev

    def _cleanup(self, et: Any, ev: BaseException | None) -> BaseException | None:
        out = self.out
        if self.metrics is not None:
            self.metrics.close()
        if not self._wrote:  # refused before writing: leave the directory as it was
            if self._created and self._fd is not None:
                (out / LOCK_FILE).unlink(missing_ok=True)
            if self._created:
                with contextlib.suppress(OSError):
                    out.rmdir()
            return None
        self._stop_clock()
        if et is None:
            self._mark("complete")
            return None
        state = inspect_run_dir(out)
        resumable = state.kind == "interrupted"
        if not resumable:
            # Nothing trained: remove what this run wrote, so the directory does not look like a run.
            _remove_written(out)
            (out / LOCK_FILE).unlink(missing_ok=True)
            if self._created:
                with contextlib.suppress(OSError):
                    out.rmdir()
        signum = ev.signum if isinstance(ev, Terminated) else signal.SIGINT
        if resumable:
            reason = signal.Signals(signum).name if isinstance(ev, KeyboardInterrupt) else describe_error(ev)
            self._mark("interrupted", reason=f"{type(ev).__name__}: {reason}")
        if isinstance(ev, KeyboardInterrupt) and not isinstance(ev, RunInterrupted):
            last = self.metrics.last if self.metrics is not None else None
            detail = f"in variant {last[0]!r} after epoch {last[1]}" if last else "before an epoch finished"
            return RunInterrupted(signum, out, resumable, detail)
        if isinstance(ev, OSError) and ev.filename is None and ev.strerror:
            return OSError(ev.errno, ev.strerror, str(out))
        return None

    def record_time(self) -> None:
        """Writes the wall-clock so far and the load average now into ``run.json``: called once training is done,
        before the report, so that the summary carries them. This session's clock stops here."""
        self._stop_clock()
        atomic_write(self.out / RUN_FILE, json.dumps(self.meta, indent=1))

    def _stop_clock(self) -> None:
        # A resumed run adds this session's seconds to the earlier sessions'.
        if "started" in self.meta and self._t0 is not None:
            self.meta["wall_time_s"] = float(self.meta.get("wall_time_s") or 0.0) + (time.perf_counter() - self._t0)
            self.meta["load_average_end"] = load_average()
            self._t0 = None

    def _mark(self, status: str, reason: str = "") -> None:
        self.meta.update(status=status)
        self.meta.pop("pid", None)
        if reason:
            self.meta["stopped_by"] = reason
        else:
            self.meta.pop("stopped_by", None)
        with contextlib.suppress(OSError):  # best effort: the disk may be what failed
            atomic_write(self.out / RUN_FILE, json.dumps(self.meta, indent=1))


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)
