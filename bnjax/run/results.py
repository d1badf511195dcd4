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
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnjax.run._errors import RunError

SEED = "seed"


@dataclass
class VariantResult:
    """Everything saved about one variant: an ensemble of ``K`` members trained as one program.

    Attributes:
      name: the variant's name from the config.
      members: ``K`` dicts of the member's swept hyperparameters (always ``"seed"``, plus any swept axes).
      axes: the swept axes other than ``"seed"``, in config order (members differing only in seed form a group).
      history: metric name -> ``(K, epochs + 1)`` array; column 0 is before training.
      loss_history: ``(K, steps)`` training loss per optimizer step (empty when not saved).
      diverged_step: ``(K,)`` first step with a non-finite loss, ``-1`` for members that did not diverge.
      wall_time: seconds spent on this variant (compilation included).
      epoch_times: seconds per epoch.
      spec: the variant's resolved settings (``{"data": ..., "model": ..., "train": ..., "sweep": ...}``).
      extras: study-specific numbers computed after training by the analysis module's ``post_train``.
    """

    name: str
    members: list[dict[str, Any]]
    axes: tuple[str, ...]
    history: dict[str, np.ndarray]
    loss_history: np.ndarray
    diverged_step: np.ndarray
    wall_time: float = float("nan")
    epoch_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spec: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def epochs(self) -> int:
        first = next(iter(self.history.values()), None)
        return 0 if first is None else first.shape[1] - 1

    def mask(self, **where: Any) -> np.ndarray:
        """``(K,)`` bool: members whose hyperparameters equal ``where`` (floats compared with rtol 1e-6)."""
        keep = np.ones(self.num_members, bool)
        for key, value in where.items():
            if self.members and key not in self.members[0]:
                raise KeyError(f"{self.name}: no swept axis {key!r}; axes are {list(self.members[0])}.")
            got = np.array([m[key] for m in self.members], dtype=float)
            keep &= np.isclose(got, float(value), rtol=1e-6, atol=0.0)
        return keep

    def curves(self, metric: str, **where: Any) -> np.ndarray:
        """``(S, epochs + 1)`` history of ``metric`` for the members matching ``where`` (one row per seed)."""
        if metric not in self.history:
            raise KeyError(f"{self.name}: no metric {metric!r}; saved metrics are {sorted(self.history)}.")
        rows = self.history[metric][self.mask(**where)]
        if rows.shape[0] == 0:
            raise KeyError(f"{self.name}: no member matches {where}; members are {self.groups()}.")
        return rows

    def final(self, metric: str, **where: Any) -> np.ndarray:
        """``(S,)`` last-epoch value of ``metric`` per matching member."""
        return self.curves(metric, **where)[:, -1]

    def best(self, metric: str, **where: Any) -> np.ndarray:
        """``(S,)`` best value over epochs 1.. (NaNs from diverged epochs ignored; NaN if all are)."""
        c = self.curves(metric, **where)[:, 1:]
        out = np.full(c.shape[0], np.nan)
        ok = np.isfinite(c).any(axis=1)
        out[ok] = np.nanmax(c[ok], axis=1)
        return out

    def diverged(self, **where: Any) -> np.ndarray:
        """``(S,)`` bool: which matching members diverged."""
        return self.diverged_step[self.mask(**where)] >= 0

    def groups(self) -> list[dict[str, Any]]:
        """The distinct settings of the non-seed axes, in member order (``[{}]`` when only seeds vary)."""
        seen: list[dict[str, Any]] = []
        for m in self.members:
            g = {a: m[a] for a in self.axes}
            if g not in seen:
                seen.append(g)
        return seen

    def values(self, axis: str) -> list[float]:
        """The distinct values of a swept axis, in member order."""
        return [g[axis] for g in self.groups()] if axis in self.axes else []

    def label(self, group: dict[str, Any]) -> str:
        """``"name"`` or ``"name (axis=value, ...)"`` for plot legends and tables."""
        if not group:
            return self.name
        return f"{self.name} (" + ", ".join(f"{k}={v:.3g}" for k, v in group.items()) + ")"


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


def _write(path: Path, write: Any) -> None:
    # Write to a temporary name, then rename: a crash or a full disk never leaves a torn file under the real
    # name; an OSError names the file.
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def save_variant(run_dir: Path, v: VariantResult) -> None:
    """Writes ``v`` under ``variants/<name>/`` (history.npz last, so its presence marks a finished variant)."""
    d = variant_dir(run_dir, v.name)
    d.mkdir(parents=True, exist_ok=True)
    members = json.dumps({"members": v.members, "axes": list(v.axes), "wall_time": v.wall_time,
                          "epoch_times": np.asarray(v.epoch_times, float).tolist()}, indent=1)
    _write(d / "members.json", lambda p: p.write_text(members))
    extras = json.dumps(jsonable(v.extras), indent=1)
    _write(d / "extras.json", lambda p: p.write_text(extras))
    arrays = {f"history/{k}": np.asarray(a) for k, a in v.history.items()}
    _write(d / "history.npz", lambda p: np.savez_compressed(
        p, loss_history=np.asarray(v.loss_history), diverged_step=np.asarray(v.diverged_step), **arrays))


def is_finished(run_dir: Path, name: str) -> bool:
    return (variant_dir(run_dir, name) / "history.npz").is_file()


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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl``; a line repeated by a resumed run (same variant, member, epoch) keeps
    its last value; a line cut short by a crash is skipped."""
    rows: dict[tuple[str, int, int], dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[(row["variant"], row["member"], row["epoch"])] = row
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
