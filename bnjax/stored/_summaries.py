"""Stored results: one run's ``summary.json`` per study and dataset, kept with the project and compared on rerun.

Layout (small files only: no plots, no metrics)::

    experiments/results/<study>/<dataset>/summary.json

``bnjax run CONFIG ... --store experiments/results/`` stores a run as it finishes; ``bnjax report RUN_DIR --store
experiments/results/`` stores a finished run (its report rebuilt first). The summary's fields are listed in
:mod:`bnjax.run.summary`; among them ``rerun``, the config and ``--set`` options that reproduce it
(``experiments/reproduce.py`` reruns every stored study and compares with :func:`compare_summaries`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnjax._io import atomic_write
from bnjax.run._errors import RunError

__all__ = ["IGNORED", "SUMMARY_FILE", "Stored", "compare_summaries", "load_stored", "store_run", "store_summary"]

SUMMARY_FILE = "summary.json"

# What a rerun may change without the results changing: when, where and how fast it ran (also any key ending in
# TIMED, e.g. a variant's extras.compile_seconds), and text that only repeats numbers compared elsewhere (evidence,
# notes, key numbers) or describes the study (descriptions).
IGNORED = frozenset({
    "wall_time_s", "load_average", "started", "device", "software", "compile_cache", "python", "figures", "command",
    "evidence", "note", "text", "key_numbers", "sources_say", "description",
})
TIMED = ("_seconds", "_time_s")


@dataclass(frozen=True)
class Stored:
    """One stored summary: ``path`` is ``<root>/<study>/<dataset>/summary.json``."""

    path: Path
    study: str
    dataset: str
    summary: dict[str, Any]


def store_summary(summary: dict[str, Any], root: str | Path) -> Path:
    """Writes ``summary`` to ``<root>/<study>/<dataset>/summary.json`` (replacing what is there); returns the path.

    Raises:
      RunError: the summary names no study or no single dataset.
    """
    study, dataset = summary.get("study"), summary.get("dataset")
    if not study or not dataset:
        raise RunError(f"a summary without a study name and a single dataset cannot be stored (study {study!r}, "
                       f"dataset {dataset!r}).")
    return atomic_write(Path(root) / study / dataset / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")


def store_run(run_dir: str | Path, root: str | Path) -> Path:
    """Rebuilds the report of the complete run in ``run_dir`` and stores its summary under ``root``.

    Raises:
      RunError: ``run_dir`` holds no complete run (an interrupted one must be finished with ``--resume`` first).
    """
    from bnjax.run._rundir import inspect_run_dir
    from bnjax.run.runner import rebuild_report

    state = inspect_run_dir(Path(run_dir))
    if state.kind in ("absent", "empty", "foreign"):
        raise RunError(f"{run_dir} is not a bnjax run directory ({state.detail or state.kind}); give the --out "
                       f"directory of a finished `bnjax run`.")
    if state.kind != "complete":
        raise RunError(f"{run_dir} holds an unfinished run ({state.detail}); only a complete run is stored: finish it "
                       f"with `bnjax run CONFIG --out {run_dir} --resume`.")
    return store_summary(rebuild_report(run_dir), root)


def load_stored(root: str | Path, *, studies: Iterable[str] = (), datasets: Iterable[str] = ()) -> list[Stored]:
    """The summaries under ``root``, sorted by study and dataset, optionally only the given studies/datasets.

    Raises:
      RunError: ``root`` is not a directory, or a summary is not valid JSON or names another study or dataset
        than its path.
    """
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"{root}: no stored results directory (it holds <study>/<dataset>/{SUMMARY_FILE}).")
    only_s, only_d = set(studies), set(datasets)
    out = []
    for path in sorted(root.glob(f"*/*/{SUMMARY_FILE}")):
        study, dataset = path.parent.parent.name, path.parent.name
        if (only_s and study not in only_s) or (only_d and dataset not in only_d):
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RunError(f"{path}: not a readable summary ({e}).") from e
        if not isinstance(summary, dict) or (summary.get("study"), summary.get("dataset")) != (study, dataset):
            got = (summary.get("study"), summary.get("dataset")) if isinstance(summary, dict) else None
            raise RunError(f"{path}: the summary is of (study, dataset) {got}, not ({study!r}, {dataset!r}) as its "
                           f"path says; store it with `bnjax report RUN_DIR --store {root}`.")
        out.append(Stored(path, study, dataset, summary))
    return out


def compare_summaries(stored: Any, rerun: Any, *, rtol: float = 1e-5, atol: float = 1e-8) -> list[str]:
    """Every difference between a stored summary and a rerun's, one line each, in the summary's order.

    Verdicts, claim texts, seeds, the config and every number (per-seed values, means, intervals, final metrics,
    extras) are compared; numbers match when ``|a - b| <= atol + rtol * |a|``. Keys in :data:`IGNORED` (timing,
    machine, software, text that repeats numbers) and keys ending in :data:`TIMED` are skipped.
    """
    out: list[str] = []
    _walk(stored, rerun, "", out, rtol, atol)
    return out


def _show(x: Any) -> str:
    text = json.dumps(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _walk(a: Any, b: Any, path: str, out: list[str], rtol: float, atol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if k in IGNORED or k.endswith(TIMED):
                continue
            where = f"{path}.{k}" if path else k
            if k not in b:
                out.append(f"{where}: {_show(a[k])} stored, absent in the rerun")
            elif k not in a:
                out.append(f"{where}: absent in the stored summary, {_show(b[k])} in the rerun")
            else:
                _walk(a[k], b[k], where, out, rtol, atol)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} entries stored, {len(b)} in the rerun")
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", out, rtol, atol)
    elif _number(a) and _number(b):
        if abs(b - a) > atol + rtol * abs(a):
            out.append(f"{path}: {a!r} stored, {b!r} in the rerun")
    elif a != b:
        out.append(f"{path}: {_show(a)} stored, {_show(b)} in the rerun")
