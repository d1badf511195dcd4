"""A run's ``summary.json``: its verdicts and the numbers behind them, and how, where and on what it ran.

The summary is what ``experiments/results/<study>/<dataset>/summary.json`` keeps (:mod:`bnjax.stored`), what the
README's results table is generated from (:mod:`bnjax.stored`) and what a rerun is compared with. Its fields:

- ``study``, ``description``, ``dataset`` (the ``data.name`` every variant trained on);
- ``sources_say`` (the study module's ``SOURCES_SAY``: what the sources claim, one line) and ``key_numbers`` (its
  ``key_numbers(results)``: the run's headline numbers, one line); empty when the module has none;
- ``claims``: per claim ``text``, ``verdict``, ``label``, ``passed``, ``evidence``, ``note``, ``numbers`` (each test
  it was decided on: ``label``, ``relation``, per-seed ``values``, ``mean``, ``half_width`` of the 95% interval,
  ``margin`` from the threshold on the claimed side, ``holds``, ``text``: the short form), and for an INCONCLUSIVE
  claim ``seeds_to_decide``: the seeds that would decide it with the same means and spreads (an int; the string
  ``"no finite number"``; null when it cannot be estimated);
- ``passed``, ``total``, ``verdicts`` (count per verdict word);
- ``seeds`` (every seed any variant trained) and ``num_seeds``;
- ``final`` (per variant and swept group: last-epoch metrics as [mean, std] over seeds) and ``variants`` (members,
  epochs, wall-clock, diverged members and the study's extras per variant);
- ``config`` (the resolved config: the TOML after ``--set``, code paths relative to the current directory when
  they lie under it), ``command`` (as typed) and ``rerun`` (``{"config": ..., "overrides": [...]}``, the command's
  config and ``--set`` options; null when the run was not started by ``bnjax run``);
- ``device``, ``software`` (bnjax version and commit, jax, jaxlib, flax, optax, numpy), ``compile_cache`` (whether
  JAX's persistent compilation cache was on: a warm cache cuts the wall-clock), ``python``, ``started``,
  ``wall_time_s`` (from setting up the run directory, after the data are loaded, to the report; a resumed run
  adds its sessions), ``load_average`` (``{"start": [1, 5, 15 min], "end": [...]}``);
- ``figures`` (the PNG files beside the summary).

Values that are not finite are written as null.
"""

from __future__ import annotations

import copy
import math
import shlex
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnjax.claims import INCONCLUSIVE, VERDICTS, Claim, dataset_of
from bnjax.run.config import resolved_raw
from bnjax.run.results import StudyResults, jsonable

__all__ = ["NO_FINITE_NUMBER", "build_summary", "claim_record", "parse_command", "software_line", "verdict_counts"]

NO_FINITE_NUMBER = "no finite number"


def verdict_counts(claims: Sequence[Claim]) -> dict[str, int]:
    """``{"PASS": n, "FAIL": n, "DIFFERS": n, "INCONCLUSIVE": n}``."""
    return {w: sum(c.verdict == w for c in claims) for w in VERDICTS}


def software_line(software: dict[str, Any] | None) -> str:
    """``"bnjax 0.1.0 (commit a822200cd2, with local changes), jax 0.10.2, jaxlib 0.10.2, ..."``."""
    if not software:
        return ""
    sw = dict(software)
    commit, dirty = sw.pop("bnjax_commit", None), sw.pop("bnjax_dirty", None)
    parts = [f"{k} {v}" for k, v in sw.items() if v is not None]
    if commit and parts and parts[0].startswith("bnjax "):
        parts[0] += f" (commit {commit[:10]}{', with local changes' if dirty else ''})"
    return ", ".join(parts)


def claim_record(claim: Claim) -> dict[str, Any]:
    """One claim as the summary keeps it (see the module docstring)."""
    record: dict[str, Any] = {
        "text": claim.text, "verdict": claim.verdict, "label": claim.label, "passed": claim.passed,
        "evidence": claim.evidence, "note": claim.note,
        "numbers": [{"label": c.label, "relation": c.relation, "values": list(c.values), "mean": c.mean,
                     "half_width": c.half_width, "margin": c.margin, "holds": c.holds, "text": c.text}
                    for c in claim.comparisons],
    }
    if claim.verdict == INCONCLUSIVE:
        n = claim.to_decide
        record["seeds_to_decide"] = NO_FINITE_NUMBER if n == math.inf else None if n is None else int(n)
    return record


def parse_command(command: str | None) -> dict[str, Any] | None:
    """``{"config": ..., "overrides": [...]}`` of a ``bnjax run`` command line (as ``run.json`` records it), or
    None for anything else. Only the config and the ``--set`` options are kept: ``--out``, ``--resume``,
    ``--quiet`` and the placement options do not change the results."""
    try:
        words = shlex.split(command or "")
    except ValueError:
        return None
    if len(words) < 3 or Path(words[0]).name != "bnjax" or words[1] != "run":
        return None
    config, overrides, in_set, takes_value = None, [], False, False
    for word in words[2:]:
        if takes_value:
            takes_value = False
        elif word.startswith("-"):
            in_set = word == "--set"
            takes_value = not in_set and "=" not in word and word not in _RUN_FLAGS
        elif in_set:
            overrides.append(word)
        elif config is None:
            config = word
    return None if config is None else {"config": config, "overrides": overrides}


_RUN_FLAGS = frozenset({"--resume", "--quiet", "--no-compile-cache", "--debug"})
"""The options of ``bnjax run`` that take no value."""


def _portable(raw: dict[str, Any]) -> dict[str, Any]:
    """The resolved config with the analysis module's and model factories' paths relative to the current
    directory where they lie under it (so that a stored summary names no machine's directories)."""
    raw = copy.deepcopy(raw)
    here = Path.cwd().resolve()

    def rel(text: str) -> str:
        p = Path(text)
        return str(p.relative_to(here)) if p.is_absolute() and p.is_relative_to(here) else text

    if isinstance(raw.get("study", {}).get("analysis"), str):
        raw["study"]["analysis"] = rel(raw["study"]["analysis"])
    tables = [raw.get("model")] + [v.get("model") for v in raw.get("variants", []) if isinstance(v, dict)]
    for table in tables:
        if isinstance(table, dict) and isinstance(table.get("factory"), str):
            file, sep, function = table["factory"].rpartition(":")
            if sep:
                table["factory"] = f"{rel(file)}:{function}"
    return raw


def _hook(module: types.ModuleType | None, name: str, results: StudyResults) -> str:
    if module is None:
        return ""
    value = getattr(module, name, "")
    return str(value(results) if callable(value) else value)


def build_summary(results: StudyResults, claims: Sequence[Claim], rows: list[dict[str, Any]],
                  figures: Sequence[str], module: types.ModuleType | None = None) -> dict[str, Any]:
    """The summary of a run (see the module docstring), as JSON values.

    Args:
      results: the loaded run directory (its ``meta`` is ``run.json``).
      claims: the verdicts of the study's ``analyze``.
      rows: the final-numbers rows (:func:`bnjax.run.report.summary_rows`).
      figures: the PNG files written beside it.
      module: the study's analysis module (for ``SOURCES_SAY`` and ``key_numbers``), or None.
    """
    meta, cfg = results.meta, results.config
    try:
        dataset = dataset_of(results)
    except ValueError:
        dataset = None
    seeds = sorted({int(m["seed"]) for v in results for m in v.members})
    counts = verdict_counts(claims)
    summary = {
        "study": cfg.study.name,
        "description": cfg.study.description,
        "dataset": dataset,
        "sources_say": _hook(module, "SOURCES_SAY", results),
        "key_numbers": _hook(module, "key_numbers", results),
        "claims": [claim_record(c) for c in claims],
        "passed": counts["PASS"],
        "total": len(claims),
        "verdicts": counts,
        "seeds": seeds,
        "num_seeds": len(seeds),
        "final": rows,
        "variants": {v.name: {"members": v.num_members, "epochs": v.epochs, "wall_time_s": v.wall_time,
                              "diverged": int((v.diverged_step >= 0).sum()), "extras": v.extras} for v in results},
        "config": _portable(resolved_raw(cfg)),
        "command": meta.get("command"),
        "rerun": parse_command(meta.get("command")),
        "device": meta.get("device"),
        "software": meta.get("software"),
        "compile_cache": meta.get("compile_cache"),
        "python": meta.get("python"),
        "started": meta.get("started"),
        "wall_time_s": meta.get("wall_time_s"),
        "load_average": {"start": meta.get("load_average_start"), "end": meta.get("load_average_end")},
        "figures": list(figures),
    }
    return jsonable(summary)
