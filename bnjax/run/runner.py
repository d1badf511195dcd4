"""Turns a :class:`~bnjax.run.config.StudyConfig` into trained ensembles, saved metrics and a report.

Each variant is one call of :func:`bnjax.train.train_ensemble`: its sweep (seeds x numeric axes) is ONE
vmapped program; variants differ in structure and compile separately. The model is the variant's
:class:`bnjax.MLPSpec` with the data's sizes, or the :class:`bnjax.Layer` its ``model.factory`` builds. Metrics
are appended to ``metrics.jsonl`` as the engine reports each epoch (epoch 0 before training), a finished
variant is saved under ``variants/<name>/`` before the next starts, and the engine checkpoints every epoch
after reporting it, so ``--resume`` continues a killed run where it stopped and every epoch is logged.

A study's analysis module may define ``post_train(trained: TrainedVariant) -> dict`` to compute numbers that
need the trained parameters (e.g. recomputed BN statistics); they are saved in ``extras.json`` so that
``bnjax report`` never needs to retrain.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnjax._faults import kill_point
from bnjax._io import atomic_write
from bnjax._typing import FieldError, Layer
from bnjax.data import Dataset
from bnjax.nn import MLPSpec
from bnjax.run import _rundir
from bnjax.run._processes import agree, from_writer, is_writer
from bnjax.run._schema import config_error
from bnjax.run.config import ConfigError, FactoryModel, StudyConfig, Variant, load_config
from bnjax.run.progress import EpochBar
from bnjax.run.report import load_analysis, write_report
from bnjax.run.results import (
    StudyResults,
    VariantResult,
    jsonable,
    load_variant,
    save_variant,
    variant_dir,
)
from bnjax.train import EnsembleResult, Parallel, TrainConfig, train_ensemble
from bnjax.train._setup import check_inputs

__all__ = ["TrainedVariant", "build_model", "default_out_dir", "load_results", "rebuild_report", "run_study"]

CONFIG_FILE = _rundir.CONFIG_FILE


@dataclass
class TrainedVariant:
    """What an analysis module's ``post_train`` receives: one variant right after training.

    Attributes:
      variant: the resolved config of the variant.
      spec: the model that was trained: the :class:`bnjax.MLPSpec` (sizes from the data) or, for a
        ``model.factory`` variant, the :class:`bnjax.Layer` the factory returned. Every engine function
        (``evaluate``, ``recompute_batch_stats``, ...) takes either.
      cfg: the training settings.
      data: the prepared dataset.
      result: the engine's result (``params``/``batch_stats`` carry a leading member axis ``K``).
    """

    variant: Variant
    spec: MLPSpec | Layer
    cfg: TrainConfig
    data: Dataset
    result: EnsembleResult

    @property
    def model(self) -> MLPSpec | Layer:
        """The trained model (the same object as ``spec``)."""
        return self.spec


def build_model(variant: Variant, data: Dataset) -> MLPSpec | Layer:
    """The model of ``variant`` for ``data``: its MLPSpec with the data's sizes, or what its factory builds."""
    if isinstance(variant.model, FactoryModel):
        return variant.model.build(data.input_shape, data.num_classes)
    return variant.model.replace(in_features=data.num_features, num_classes=data.num_classes)


def default_out_dir(config: StudyConfig, base: str | Path = "runs") -> Path:
    """``runs/<study>-<YYYYmmdd-HHMMSS>``."""
    return Path(base) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _device(parallel: Parallel | None = None) -> str:
    import jax

    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    name = d.platform if kind == d.platform else f"{d.platform} ({kind})"
    procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    layout = ""
    if parallel is not None and jax.device_count() > 1:
        layout = f", [parallel] members={parallel.members} data={parallel.data} sync_bn={parallel.sync_bn}"
    return (f"{name}, {jax.device_count()} device(s){procs}, {os.cpu_count()} CPU core(s), jax {jax.__version__}"
            f"{layout}")


def _metric_lines(variant: str, members: list[dict[str, Any]], epoch: int, values: dict[str, Any]) -> list[dict]:
    """One ``metrics.jsonl`` line per member: its settings and every metric of ``epoch`` (NaN/inf as null),
    built column by column from the ``(K,)`` arrays."""
    cols = {name: [x if math.isfinite(x) else None for x in np.asarray(v, np.float64).reshape(-1).tolist()]
            for name, v in values.items()}
    return [{"variant": variant, "member": k, "epoch": epoch, **m, **{name: c[k] for name, c in cols.items()}}
            for k, m in enumerate(members)]


def _check_variant(parallel: Parallel, variant: Variant, data: Dataset) -> None:
    # What train_ensemble would refuse, checked before the results directory is touched.
    check_inputs(build_model(variant, data), variant.train, data, variant.sweep.members(), parallel)


def _train_variant(
    variant: Variant,
    data: Dataset,
    out: Path,
    log: _rundir.MetricsLog | None,
    module: types.ModuleType | None,
    *,
    resume: bool,
    progress: bool,
    parallel: Parallel | None = None,
    checkpoint_every: float | str = "auto",
    say: Callable[[str], None] | None = None,
) -> VariantResult | None:
    """Trains one variant and saves it; in a multi-process run every process trains, only process 0 (the one
    with a ``log``) writes, and the others return None."""
    writer = log is not None
    model = build_model(variant, data)
    cfg = variant.train
    members = variant.sweep.members()
    swept = [{a: members[a][k] for a in members} for k in range(len(members["seed"]))]
    vdir = variant_dir(out, variant.name)
    if writer:
        vdir.mkdir(parents=True, exist_ok=True)
        built = {"mlp_spec": dataclasses.asdict(model)} if isinstance(model, MLPSpec) else {"layer": model.name}
        atomic_write(vdir / "spec.json", json.dumps(jsonable({
            **variant.to_dict(), **built, "dataset": data.describe(), "preprocessing": dict(data.preprocessing),
        }), indent=1))
    ckpt = out / "checkpoints" / variant.name

    t0 = time.perf_counter()
    with EpochBar(variant.name, cfg.epochs, len(swept), enabled=progress and writer) as bar:
        def callback(epoch: int, metrics: dict[str, np.ndarray]) -> None:
            if log is not None:
                log.write(_metric_lines(variant.name, swept, epoch, metrics))
            bar.update(epoch, metrics)

        try:
            result = train_ensemble(model, cfg, data, members, callback=callback, checkpoint_dir=str(ckpt),
                                    resume=resume, parallel=parallel, checkpoint_every=checkpoint_every, log=say)
        except FieldError as e:  # a setting that fails only while training (a chunk out of memory)
            error = ConfigError(f"variant {variant.name!r}: {config_error(e)}")
            error.resumable = True  # type: ignore[attr-defined]  # the epochs checkpointed so far are kept
            raise error from e

    extras: dict[str, Any] = {}
    if module is not None and callable(getattr(module, "post_train", None)):
        extras = module.post_train(TrainedVariant(variant, model, cfg, data, result)) or {}
    if not writer:
        return None
    # The engine's result, saved: the variant's name, swept axes and settings, no parameters.
    vr = dataclasses.replace(
        result, name=variant.name, axes=variant.sweep.axes, wall_time=time.perf_counter() - t0,
        epoch_times=np.asarray(result.epoch_times), spec=variant.to_dict(),
        extras={**jsonable(extras), "compile_seconds": float(result.compile_seconds)},
        params=None, batch_stats=None, model=None,
    )
    save_variant(out, vr)
    shutil.rmtree(ckpt, ignore_errors=True)  # the saved variant supersedes its checkpoint
    kill_point("variant: checkpoint removed")
    return vr


def run_study(
    config: StudyConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    source: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    checkpoint_every: float | str = "auto",
) -> tuple[Path, dict[str, Any] | None]:
    """Trains every variant of ``config``, then writes plots, ``summary.json`` and ``report.md``.

    Args:
      config: the parsed study.
      out_dir: results directory; default ``runs/<study>-<timestamp>``.
      resume: continue the run in ``out_dir``: finished variants are kept, the interrupted one restarts from
        its last epoch checkpoint.
      progress: show a progress bar per variant.
      command: the command line, recorded in the report.
      source: the config file, copied into the run directory.
      log: where status lines go (default: stderr).
      checkpoint_every: when a variant's checkpoint is due: ``"auto"`` (saving costs at most a tenth of the
        run) or seconds (0: every epoch); see :func:`bnjax.train.train_ensemble`.

    Returns:
      ``(out_dir, summary)``; ``summary`` is what ``summary.json`` holds (claims with verdicts, final numbers),
      or None on the processes other than process 0 of a multi-process run (they train; process 0 writes).

    Raises:
      ConfigError: bad data or settings (checked against the loaded data before anything is written).
      RunError: ``out_dir`` is busy, already holds a run (without ``resume``) or nothing to resume.
      CheckpointError: ``resume`` finds no intact checkpoint of a variant to continue.
      RunInterrupted: Ctrl-C or SIGTERM; metrics and the last epoch's checkpoint are kept for ``resume``.
    """
    say = log or (lambda s: print(s, file=sys.stderr))
    out = Path(out_dir) if out_dir is not None else default_out_dir(config)
    writer = is_writer()

    # Everything that can refuse the run does so before the directory is touched (see bnjax/run/_rundir.py); in
    # a multi-process run every process checks and they agree (bnjax/run/_processes.py), process 0 alone
    # plans and writes the results directory.
    def prepare() -> tuple[_rundir.RunPlan | None, Any]:
        plan = _rundir.plan_run(out, config, resume=resume) if writer else None
        module = _rundir.check_analysis(config.analysis_path)
        for variant in config.variants:  # a missing model file or function fails here, before any training
            if isinstance(variant.model, FactoryModel):
                try:
                    variant.model.load()
                except ConfigError as e:
                    raise ConfigError(f"variant {variant.name!r}: {e}") from None
        return plan, module

    plan, module = agree(f"checking the config and --out {out}", prepare)
    names = [v.name for v in config.variants]
    mine = np.array([plan is not None and n in plan.finished for n in names] + [plan is not None and plan.resume])
    shared = from_writer(mine.astype(np.int32)).astype(bool)
    finished = {n for n, done in zip(names, shared[:-1]) if done}
    train_resume = bool(shared[-1])
    check = functools.partial(_check_variant, config.parallel)
    datasets = agree("loading and checking the data",
                     lambda: _rundir.load_and_check([v for v in config.variants if v.name not in finished], check))
    if not writer:
        for variant in config.variants:
            if variant.name not in finished:
                _train_variant(variant, datasets[variant.data], out, None, module, resume=train_resume,
                               progress=False, parallel=config.parallel, checkpoint_every=checkpoint_every)
        return out, None
    assert plan is not None
    with _rundir.RunDir(plan, config, command=command, source=source, device=_device(config.parallel),
                        python=platform.python_version(), say=say) as run:
        for variant in config.variants:
            if variant.name in finished:
                say(f"{variant.name}: finished in an earlier run, kept")
                shutil.rmtree(out / "checkpoints" / variant.name, ignore_errors=True)  # a kill left it behind
                continue
            _train_variant(variant, datasets[variant.data], out, run.metrics, module, resume=train_resume,
                           progress=progress, parallel=config.parallel, checkpoint_every=checkpoint_every, say=say)
        try:
            (out / "checkpoints").rmdir()  # only when every variant finished and removed its checkpoint
        except OSError:
            pass
        run.record_time()  # wall-clock and load average into run.json, for the summary
        summary = write_report(load_results(out), module)
    return out, summary


def load_results(run_dir: str | Path) -> StudyResults:
    """Reads a finished run directory (config, every variant's saved numbers, run metadata)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: {run_dir} is not a bnjax run directory.")
    config = load_config(cfg_path)
    variants = {v.name: load_variant(run_dir, v.name) for v in config.variants}
    meta_path = run_dir / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return StudyResults(run_dir=run_dir, config=config, variants=variants, meta=meta)


def rebuild_report(run_dir: str | Path) -> dict[str, Any]:
    """Rewrites the plots, ``summary.json`` and ``report.md`` of a run directory from its saved numbers.

    The analysis module is the one the config names if it still exists, else the copy saved in the run.
    """
    results = load_results(run_dir)
    path = results.config.analysis_path
    if path is not None and not path.is_file() and (Path(run_dir) / "analysis.py").is_file():
        path = Path(run_dir) / "analysis.py"
    return write_report(results, load_analysis(path))
