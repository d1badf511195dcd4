"""A run directory's saved numbers, grouped for analysis: variants, members, seeds, metrics per epoch.

Layout of a run directory (written by :mod:`bnjax.run.runner`)::

    config.json              the resolved config (the TOML after ``--set``), reloadable
    config.source.toml       the config file as given
    run.json                 command, start time, wall-clock (from setting up this directory, after the data are
                             loaded, to the report; a resumed run adds its sessions), load averages (1/5/15 min)
                             at that start and end, software versions, whether the compile cache was on,
                             device and status ("running",
                             "interrupted", "complete"; see :mod:`bnjax.run._rundir`)
    metrics.jsonl            one line per epoch per member per variant, appended as training goes
    .bnjax.lock              flock held by the run writing the directory
    checkpoints/<name>/      the unfinished variant's last two epoch checkpoints (removed once it is saved)
    variants/<name>/spec.json       the variant's resolved data/model/train/sweep settings
    variants/<name>/history.npz     history arrays (K, epochs+1), loss_history (K, steps), diverged_step (K,)
    variants/<name>/members.json    member hyperparameters (K dicts) and timings
    variants/<name>/extras.json     study-specific numbers computed after training (optional)
    summary.json, report.md, *.png  written by :mod:`bnjax.run.report`
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnjax._io import atomic_write
from bnjax.run._errors import RunError
from bnjax.train import EnsembleResult

SEED = "seed"


VariantResult = EnsembleResult
"""A saved variant: the engine's result type (:class:`bnjax.train.EnsembleResult`)."""


@dataclass
class StudyResults:
    """The variants of one run directory, in config order, plus the run's metadata."""

    run_dir: Path
    config: Any
    variants: dict[str, VariantResult]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> VariantResult:
        try:
            return self.variants[name]
        except KeyError:
            raise KeyError(f"no variant {name!r} in {self.run_dir}; variants are {list(self.variants)}.") from None

    def __iter__(self) -> Iterator[VariantResult]:
        return iter(self.variants.values())

    def __contains__(self, name: str) -> bool:
        return name in self.variants


def variant_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "variants" / name


def save_variant(run_dir: Path, v: VariantResult) -> None:
    """Writes ``v`` under ``variants/<name>/`` (history.npz last, so its presence marks a finished variant)."""
    d = variant_dir(run_dir, v.name)
    d.mkdir(parents=True, exist_ok=True)
    members = json.dumps({"members": v.members, "axes": list(v.axes), "wall_time": v.wall_time,
                          "epoch_times": np.asarray(v.epoch_times, float).tolist()}, indent=1)
    atomic_write(d / "members.json", members)
    atomic_write(d / "extras.json", json.dumps(jsonable(v.extras), indent=1))
    arrays = {f"history/{k}": np.asarray(a) for k, a in v.history.items()}
    atomic_write(d / "history.npz", lambda f: np.savez_compressed(
        f, loss_history=np.asarray(v.loss_history), diverged_step=np.asarray(v.diverged_step), **arrays))


def load_variant(run_dir: Path, name: str) -> VariantResult:
    """Reads what :func:`save_variant` wrote."""
    d = variant_dir(run_dir, name)
    if not (d / "history.npz").is_file():
        raise FileNotFoundError(f"{d / 'history.npz'} not found: variant {name!r} did not finish; "
                                f"continue the run with `bnjax run CONFIG --out {run_dir} --resume`.")
    try:
        meta = json.loads((d / "members.json").read_text())
        with open(d / "history.npz", "rb") as f, np.load(f) as z:
            history = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("history/")}
            loss_history, diverged_step = z["loss_history"], z["diverged_step"]
        spec = json.loads((d / "spec.json").read_text()) if (d / "spec.json").is_file() else {}
        extras = json.loads((d / "extras.json").read_text()) if (d / "extras.json").is_file() else {}
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RunError(f"{d}: the saved results of variant {name!r} are damaged ({type(e).__name__}: {e}); "
                       f"delete {d} and continue the run with `bnjax run CONFIG --out {run_dir} --resume` to "
                       f"train it again.") from e
    return VariantResult(
        name=name, members=meta["members"], axes=tuple(meta["axes"]), history=history,
        loss_history=loss_history, diverged_step=diverged_step, wall_time=float(meta.get("wall_time", np.nan)),
        epoch_times=np.asarray(meta.get("epoch_times", []), float), spec=spec, extras=extras,
    )


def metrics_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(line, row)`` for every complete line of a ``metrics.jsonl`` (a line cut short by a kill is skipped)."""
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if line.endswith("\n") and isinstance(row, dict):
                yield line, row


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (one per variant, member and epoch; a line repeated by a run resumed
    before bnjax wrote every line once keeps its last value)."""
    rows = {(r["variant"], r["member"], r["epoch"]): r for _, r in metrics_lines(path)}
    return list(rows.values())


def jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, NumPy scalars/arrays -> JSON values; NaN and inf -> None."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
