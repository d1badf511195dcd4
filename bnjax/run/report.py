"""Plots, the summary and ``report.md`` of a run directory, rebuilt from saved numbers (no training).

The generic part lives here: accuracy/loss per epoch per variant with a seed band, the per-step loss, the
final-numbers table and the claims table. A study's analysis module adds its claims (``analyze``), and may add
plots (``plots``), notes (``notes``) and the one-line texts of the README's results table (``key_numbers``,
``SOURCES_SAY``, kept in ``summary.json``):

    def analyze(results: StudyResults) -> list[Claim]: ...
    def plots(results: StudyResults, out_dir: Path) -> list[Figure]: ...       # optional
    def notes(results: StudyResults) -> list[str]: ...                          # optional
    def key_numbers(results: StudyResults) -> str: ...                          # optional: the README table's
    SOURCES_SAY = "what the sources claim, one line"                            # optional     numbers and text

A claim's verdict (PASS, FAIL, DIFFERS, INCONCLUSIVE) is computed by the analysis module from the numbers, with the
rules of :mod:`bnjax.claims` (seed-by-seed decisions against the expectations of the dataset in use); this
module only lays it out, with a legend of the verdict words and a one-line note under each DIFFERS/INCONCLUSIVE
(for INCONCLUSIVE: how many seeds would decide it). The fields of ``summary.json``: :mod:`bnjax.run.summary`.
"""

from __future__ import annotations

import json
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnjax._io import atomic_write
from bnjax.run._schema import import_file
from bnjax.claims import DATASET_TITLES, LEGEND, VERDICTS, Claim
from bnjax.run.results import StudyResults, VariantResult
from bnjax.run.summary import build_summary, software_line, verdict_counts

__all__ = [
    "Claim",
    "brief",
    "Figure",
    "fmt",
    "load_analysis",
    "loss_tail",
    "markdown_table",
    "mean_std",
    "plot_curves",
    "plot_metric_vs_axis",
    "plot_step_loss",
    "summary_rows",
    "write_report",
]

# Metrics shown in the final-numbers table, with their column names.
TABLE_METRICS = (
    ("train_acc", "train acc"),
    ("val_acc", "val acc"),
    ("test_acc", "test acc"),
    ("train_loss", "train loss"),
)
MAX_LEGEND = 12


@dataclass(frozen=True)
class Figure:
    """A PNG written into the run directory (``path`` relative to it) and its caption."""

    path: str
    caption: str


def mean_std(values: Any) -> tuple[float, float]:
    """Mean and (population) std over seeds, ignoring NaNs (diverged members); NaN when nothing is finite."""
    a = np.asarray(values, float).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std())


def fmt(values: Any, digits: int = 3) -> str:
    """``"0.812 ± 0.013"`` over seeds (``"0.812"`` for one value, ``"n/a"`` when nothing is finite)."""
    a = np.asarray(values, float).ravel()
    m, s = mean_std(a)
    if not np.isfinite(m):
        return "n/a"
    if a.size == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def brief(values: Any, digits: int = 2, *, signed: bool = False) -> str:
    """The mean over seeds as the README's table writes it: ``".82"``, ``"-.01"`` (``"+.11"`` with ``signed``);
    ``"n/a"`` when nothing is finite."""
    m, _ = mean_std(values)
    if not np.isfinite(m):
        return "n/a"
    text = f"{m:+.{digits}f}" if signed else f"{m:.{digits}f}"
    return text.replace("0.", ".", 1) if abs(m) < 1 else text


def load_analysis(path: str | Path | None) -> types.ModuleType | None:
    """Imports a study's analysis module from its file path (never as part of the ``bnjax`` package).

    Raises:
      FileNotFoundError: no file at ``path``.
      TypeError: the module has no ``analyze(results)`` function.
    """
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analysis module {path} not found; set study.analysis to the path of the study's "
                                f"module relative to the project root, e.g. \"experiments/bn_vs_baseline.py\".")
    module = import_file(path, "bnjax_study_")
    if not callable(getattr(module, "analyze", None)):
        raise TypeError(f"analysis module {path} defines no analyze(results) -> list[Claim] function.")
    return module


# --------------------------------------------------------------------------------------------------- tables

def summary_rows(results: StudyResults) -> list[dict[str, Any]]:
    """One row per variant and group of swept values: final metrics as mean/std over seeds."""
    rows = []
    for v in results:
        for g in v.groups():
            row: dict[str, Any] = {"variant": v.name, **g, "seeds": int(v.mask(**g).sum()),
                                   "diverged": int(v.diverged(**g).sum())}
            for metric, _ in TABLE_METRICS:
                if metric in v.history:
                    row[metric] = mean_std(v.final(metric, **g))
            if "val_acc" in v.history:
                row["best_val_acc"] = mean_std(v.best("val_acc", **g))
            for metric in sorted(v.history):
                if metric.endswith("_precise") and metric.replace("_precise", "") in ("train_acc", "val_acc"):
                    row[metric] = mean_std(v.final(metric, **g))
            rows.append(row)
    return rows


def _pm(pair: tuple[float, float] | None) -> str:
    if pair is None or not np.isfinite(pair[0]):
        return "n/a"
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (``|`` inside a cell escaped)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _final_table(results: StudyResults, rows: list[dict[str, Any]]) -> str:
    axes: list[str] = []
    for v in results:
        axes += [a for a in v.axes if a not in axes]
    metrics = [m for m, _ in TABLE_METRICS if any(m in r for r in rows)]
    extra = sorted({k for r in rows for k in r if k.endswith("_precise")})
    headers = ["variant", *axes, *(dict(TABLE_METRICS)[m] for m in metrics), "best val acc", *extra,
               "diverged"]
    body = []
    for r in rows:
        body.append([r["variant"], *(f"{r[a]:.3g}" if a in r else "" for a in axes),
                     *(_pm(r.get(m)) for m in metrics), _pm(r.get("best_val_acc")), *(_pm(r.get(m)) for m in extra),
                     f"{r['diverged']}/{r['seeds']}"])
    return markdown_table(headers, body)


def _setup_table(results: StudyResults) -> str:
    """The settings that differ between variants (plus the data and epoch count), one row per variant."""
    flat: dict[str, dict[str, Any]] = {}
    for v in results:
        spec = v.spec
        f = {}
        for sec in ("data", "model", "train"):
            for k, val in spec.get(sec, {}).items():
                f[f"{sec}.{k}"] = val
        f["members"] = v.num_members
        flat[v.name] = f
    keys = sorted({k for f in flat.values() for k in f})
    always = {"data.name", "data.num_train", "train.epochs", "train.batch_size", "model.hidden", "model.norm",
              "members"}
    shown = [k for k in keys if k in always or len({json.dumps(f.get(k)) for f in flat.values()}) > 1]
    return markdown_table(["variant", *shown],
                           [[name, *(json.dumps(f.get(k)) for k in shown)] for name, f in flat.items()])


# ---------------------------------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, axes: Sequence[Any], out_dir: Path, filename: str, caption: str, *,
                xlabel: str | None = None, legend_fontsize: int = 7) -> Figure:
    """Finishes a study figure the same way everywhere (x label, grid, legend on each axis; tight layout), writes
    ``out_dir/filename`` and closes it."""
    for ax in axes:
        if xlabel is not None:
            ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    fig.savefig(out_dir / filename, dpi=110)
    _pyplot().close(fig)
    return Figure(filename, caption)


def _lines(results: StudyResults) -> list[tuple[VariantResult, dict[str, Any]]]:
    return [(v, g) for v in results for g in v.groups()]


def plot_curves(results: StudyResults, out_dir: Path) -> list[Figure]:
    """Accuracy and loss per epoch (train subset in eval mode, validation): mean over seeds, min-max band."""
    plt = _pyplot()
    lines = _lines(results)
    panels = [m for m in ("train_acc", "val_acc", "train_loss", "val_loss") if any(m in v.history for v in results)]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(lines) <= 10 else "viridis")
    for j, metric in enumerate(panels):
        ax = axes[0, j]
        for i, (v, g) in enumerate(lines):
            if metric not in v.history:
                continue
            c = v.curves(metric, **g)
            with np.errstate(all="ignore"):
                finite = np.where(np.isfinite(c), c, np.nan)
                ok = np.isfinite(finite).any(axis=0)
                mean = np.full(c.shape[1], np.nan)
                lo, hi = mean.copy(), mean.copy()
                mean[ok] = np.nanmean(finite[:, ok], axis=0)
                lo[ok], hi[ok] = np.nanmin(finite[:, ok], axis=0), np.nanmax(finite[:, ok], axis=0)
            color = cmap(i % 10) if len(lines) <= 10 else cmap(i / max(1, len(lines) - 1))
            epochs = np.arange(c.shape[1])
            ax.plot(epochs, mean, color=color, lw=1.5, label=v.label(g))
            if c.shape[0] > 1:
                ax.fill_between(epochs, lo, hi, color=color, alpha=0.15, lw=0)
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("epoch")
        if metric.endswith("loss"):
            vals = np.concatenate([v.history[metric].ravel() for v in results if metric in v.history])
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if vals.size and vals.max() / vals.min() > 20:  # log only when the range needs it (divergence)
                ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if len(lines) <= MAX_LEGEND:
        axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)
    n_seeds = max(int(v.mask(**g).sum()) for v, g in lines)
    caption = (f"Accuracy and loss per epoch (epoch 0 = before training); train metrics are measured in eval "
               f"mode on a fixed training subset. Line: mean over {n_seeds} seed(s); band: min-max over seeds.")
    if len(lines) > MAX_LEGEND:
        caption += f" {len(lines)} lines (colour follows member order); see the study plots for a readable view."
    return [Figure("curves.png", caption)]


def plot_step_loss(results: StudyResults, out_dir: Path) -> list[Figure]:
    """Training loss per optimizer step (train mode, mean over seeds, smoothed over 1% of the steps)."""
    lines = [(v, g) for v, g in _lines(results) if v.loss_history.size]
    if not lines or len(lines) > MAX_LEGEND:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for v, g in lines:
        rows = v.loss_history[v.mask(**g)]
        with np.errstate(all="ignore"):
            finite = np.where(np.isfinite(rows), rows, np.nan)
            ok = np.isfinite(finite).any(axis=0)
            mean = np.full(rows.shape[1], np.nan)
            mean[ok] = np.nanmean(finite[:, ok], axis=0)
        w = max(1, rows.shape[1] // 100)
        if w > 1:
            mean = np.convolve(np.nan_to_num(mean, nan=np.nan), np.ones(w) / w, mode="valid")
        ax.plot(np.arange(mean.size) + (w - 1), mean, lw=1, label=v.label(g))
    ax.set_ylabel("training loss (train mode)")
    ax.set_yscale("log")
    return [save_figure(fig, [ax], out_dir, "loss_steps.png",
                        "Training loss per step (train mode, on the mini-batch), mean over seeds.", xlabel="step")]


def plot_metric_vs_axis(
    results: StudyResults,
    axis: str,
    metrics: Sequence[tuple[str, str]],
    out_dir: Path,
    filename: str,
    *,
    variants: Sequence[str] | None = None,
    reduce: str = "final",
    logx: bool = False,
    logy: Sequence[bool] | None = None,
    xlabel: str | None = None,
    x_transform: Any = None,
    caption: str = "",
) -> Figure:
    """One panel per metric: its final (or best) value against a swept axis, a line per variant, seed band.

    Args:
      axis: the swept axis on the x axis (e.g. ``"weight_scale"``).
      metrics: ``(metric, title)`` pairs; ``metric`` may also be ``"loss_tail"`` (mean train-mode loss over
        the last 100 steps, CS231n's final-loss measure).
      reduce: ``"final"`` (last epoch) or ``"best"`` (best epoch >= 1).
      x_transform: maps the axis values before plotting (e.g. ``lambda d: 1 - d`` for keep probability).
    """
    plt = _pyplot()
    names = list(variants) if variants is not None else [v.name for v in results if axis in v.axes]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), squeeze=False)
    for j, (metric, title) in enumerate(metrics):
        ax = axes[0, j]
        for name in names:
            v = results[name]
            xs = np.array(v.values(axis), float)
            rows = []
            for x in xs:
                if metric == "loss_tail":
                    rows.append(loss_tail(v, **{axis: x}))
                elif reduce == "best":
                    rows.append(v.best(metric, **{axis: x}))
                else:
                    rows.append(v.final(metric, **{axis: x}))
            stats = np.array([mean_std(r) for r in rows])
            lo = np.array([np.nanmin(r) if np.isfinite(r).any() else np.nan for r in map(np.asarray, rows)])
            hi = np.array([np.nanmax(r) if np.isfinite(r).any() else np.nan for r in map(np.asarray, rows)])
            px = xs if x_transform is None else np.array([x_transform(x) for x in xs])
            line, = ax.plot(px, stats[:, 0], marker="o", ms=3, label=name)
            if max(len(r) for r in rows) > 1:
                ax.fill_between(px, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlabel(xlabel or axis)
        ax.set_title(title)
        if logx:
            ax.set_xscale("log")
        if logy is not None and logy[j]:
            ax.set_yscale("log")
    return save_figure(fig, list(np.ravel(axes)), out_dir, filename,
                       caption or f"{', '.join(t for _, t in metrics)} against {axis}; band: min-max over seeds.")


def loss_tail(v: VariantResult, steps: int = 100, **where: Any) -> np.ndarray:
    """``(S,)`` mean train-mode loss over the last ``steps`` steps (CS231n's final-loss measure); inf if any
    of those steps was non-finite (a diverged member)."""
    rows = v.loss_history[v.mask(**where)][:, -steps:]
    with np.errstate(all="ignore"):
        return np.where(np.isfinite(rows).all(axis=1), rows.mean(axis=1), np.inf)


# --------------------------------------------------------------------------------------------------- report

def _run_claims(module: types.ModuleType | None, results: StudyResults) -> list[Claim]:
    if module is None:
        return []
    claims = list(module.analyze(results))
    for c in claims:
        if not isinstance(c, Claim):
            raise TypeError(f"analyze() must return bnjax.claims.Claim objects, got {type(c).__name__}.")
    return claims


def _verdict_md(claims: Sequence[Claim], dataset: str | None) -> list[str]:
    counts = verdict_counts(claims)
    tally = ", ".join(f"{n} {w}" for w, n in counts.items() if n)
    on = f" on {DATASET_TITLES.get(dataset, dataset)}" if dataset else ""
    md = [(f"**{counts['PASS']} of {len(claims)} claims pass{on}** ({tally}). Each verdict is computed from the "
           "numbers below, seed by seed, against the expectations of the dataset in use "
           "(`experiments/REFERENCES.md` gives the sources and the per-dataset numbers)."), ""]
    md.append(markdown_table(["#", "claim", "verdict", "numbers"],
                              [[str(i + 1), c.text, f"**{c.verdict}**" + c.label[len(c.verdict):], c.evidence]
                               for i, c in enumerate(claims)]))
    notes = [f"- claim {i + 1}, {c.label}: {c.note}" for i, c in enumerate(claims) if c.note]
    if notes:
        md += [""] + notes
    md += ["", "Verdicts (decided on one number per seed, seed-paired where variants share seeds; the numbers read "
           "\"mean (95% confidence interval of the mean; per-seed values) relation threshold\", and a ± b elsewhere "
           "is mean ± std over seeds):", ""]
    md += [f"- **{w}**: {LEGEND[w]}." for w in VERDICTS]
    return md


def _facts(summary: dict[str, Any]) -> list[str]:
    """The lines above the verdict: command, seeds, wall-clock with the load average, device, software, start."""
    facts = []
    if summary["command"]:
        facts.append(f"command: `{summary['command']}`")
    if summary["seeds"]:
        facts.append(f"seeds: {summary['num_seeds']} ({', '.join(map(str, summary['seeds']))})")
    if summary["wall_time_s"] is not None:
        load = summary["load_average"]
        start, end = (", ".join(map(str, load[k])) if load[k] else "?" for k in ("start", "end"))
        facts.append(f"wall-clock: {summary['wall_time_s']:.1f} s (from setting up the run directory to the report), "
                     f"load average (1, 5, 15 min): {start} at the start, {end} at the end")
    if summary["device"]:
        facts.append(f"device: {summary['device']}")
    if summary["software"]:
        facts.append(f"software: {software_line(summary['software'])}")
    if summary["started"]:
        facts.append(f"started: {summary['started']}")
    return facts


def write_report(results: StudyResults, module: types.ModuleType | None = None) -> dict[str, Any]:
    """Writes the plots, ``summary.json`` and ``report.md`` into ``results.run_dir``; returns the summary.

    Args:
      results: the loaded run directory.
      module: the study's analysis module (``analyze``, optional ``plots``/``notes``), or None for a report
        with the generic parts only.
    """
    out = Path(results.run_dir)
    claims = _run_claims(module, results)
    figures = plot_curves(results, out) + plot_step_loss(results, out)
    if module is not None and callable(getattr(module, "plots", None)):
        figures += list(module.plots(results, out))
    notes = list(module.notes(results)) if module is not None and callable(getattr(module, "notes", None)) else []
    rows = summary_rows(results)
    cfg = results.config
    summary = build_summary(results, claims, rows, [f.path for f in figures], module)
    atomic_write(out / "summary.json", json.dumps(summary, indent=1))

    md = [f"# {cfg.study.name}", ""]
    if cfg.study.description:
        md += [cfg.study.description, ""]
    facts = _facts(summary)
    if facts:
        md += ["- " + f for f in facts] + [""]
    md += ["## Verdict", ""]
    if claims:
        md += _verdict_md(claims, summary["dataset"])
    else:
        md.append("No analysis module: no claims were checked.")
    md += ["", "## Final numbers", "",
           ("Last epoch, mean ± std over seeds; *best val acc* is the best epoch's. "
            "*diverged* counts members whose training loss became non-finite."), "",
           _final_table(results, rows), ""]
    if notes:
        md += ["## Observations", ""] + [f"- {n}" for n in notes] + [""]
    md += ["## Plots", ""]
    for f in figures:
        md += [f"![{f.caption}]({f.path})", "", f"*{f.caption}*", ""]
    md += ["## Setup", "", _setup_table(results), ""]
    times = [[v.name, str(v.num_members), f"{v.wall_time:.1f}"] for v in results]
    md += ["Wall-clock per variant (one compiled, vmapped program each; compilation included):", "",
           markdown_table(["variant", "members", "seconds"], times), ""]
    atomic_write(out / "report.md", "\n".join(md))
    return summary
