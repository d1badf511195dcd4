"""What training an ensemble produced: one result type from the engine (:func:`bnjax.train.train_ensemble`)
through the runner's saved variants to the reports (``bnjax.run.results.VariantResult`` is this class)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnjax.train._checkpoint import plain


@dataclass
class EnsembleResult:
    """The outcome of training ``K`` members over ``E`` epochs, and the analysis helpers of a study.

    Attributes:
      members: per member, its settings as plain values (:meth:`Member.to_dict`: ``"seed"``,
        ``"learning_rate"`` and the options it sets; an MLP's members set ``"weight_scale"``, ``"dropout"``
        and ``"bn_momentum"`` too). A saved variant keeps the seed and its swept axes.
      history: metric -> ``(K, E + 1)`` float64 array; column 0 is before training. Metrics ``train_acc``,
        ``val_acc``, ``test_acc``, ``train_loss``, ``val_loss``, ``test_loss`` (eval mode; "train" is the fixed
        subset of ``cfg.eval_train_samples`` examples; losses are mean cross-entropy without the L2 term), plus
        the same with a ``"_precise"`` suffix when ``cfg.precise_bn_batches > 0``.
      loss_history: ``(K, E * steps_per_epoch)`` float32 train-mode loss of every step (what was minimised,
        L2 term included); NaN after a member diverged.
      diverged_step: ``(K,)`` int, the 0-based global step at which the member diverged, or -1.
      name: the variant's name (the runner's; "" from the engine).
      axes: the swept settings other than ``"seed"``, in config order (members differing only in seed form a
        group); () from the engine.
      params, batch_stats: final values stacked with a leading ``K`` axis (NumPy); None once saved.
      epoch_times: wall-clock seconds of each epoch's training (evaluation excluded; epochs restored from a
        checkpoint keep their recorded times).
      steps_per_epoch: optimizer steps per epoch.
      compile_seconds: time to compile the epoch program in this process.
      wall_time: seconds the runner spent on the variant (compilation included); NaN from the engine.
      spec: what describes the model: from the engine, ``Layer.spec`` (the :class:`bnjax.MLPSpec` of an MLP,
        None for another Layer); once saved by the runner, the variant's resolved settings
        (``{"data", "model", "train", "sweep"}``).
      extras: study-specific numbers computed after training by the analysis module's ``post_train``.
      cfg: the training configuration (engine only).
      model: the :class:`bnjax.Layer` that was trained (engine only).
    """

    members: list[dict[str, Any]]
    history: dict[str, np.ndarray]
    loss_history: np.ndarray
    diverged_step: np.ndarray
    name: str = ""
    axes: tuple[str, ...] = ()
    params: Any = field(default=None, repr=False)
    batch_stats: Any = field(default=None, repr=False)
    epoch_times: Any = field(default_factory=lambda: np.zeros(0))
    steps_per_epoch: int = 0
    compile_seconds: float = 0.0
    wall_time: float = float("nan")
    spec: Any = field(default=None, repr=False)
    extras: dict[str, Any] = field(default_factory=dict)
    cfg: Any = field(default=None, repr=False)
    model: Any = field(default=None, repr=False)

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def epochs(self) -> int:
        """Epochs trained (the history's columns after column 0)."""
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
        """``(S,)`` last-epoch value of ``metric`` per matching member (all members without ``where``)."""
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

    def member(self, k: int) -> dict[str, Any]:
        """Member ``k``'s settings, final metrics and divergence step as plain Python values."""
        out = dict(self.members[k])
        out.update({m: _json_float(v[k, -1]) for m, v in self.history.items()})
        out["diverged_step"] = int(self.diverged_step[k])
        return out

    def to_json(self) -> dict[str, Any]:
        """A ``json.dumps``-ready dict (no parameters; NaN/inf become None)."""
        return {
            "members": self.members,
            "history": {m: [[_json_float(v) for v in row] for row in a] for m, a in self.history.items()},
            "loss_history": [[_json_float(v) for v in row] for row in self.loss_history],
            "diverged_step": [int(d) for d in self.diverged_step],
            "epoch_times": [float(t) for t in self.epoch_times],
            "steps_per_epoch": self.steps_per_epoch,
            "compile_seconds": self.compile_seconds,
            "spec": plain(self.spec),
            "cfg": plain(self.cfg),
        }


def _json_float(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
