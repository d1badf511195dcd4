"""The README's results table and the per-study tables of ``experiments/REFERENCES.md``, from stored summaries.

Both files keep their hand-written prose; only what lies between marker comments is generated:

    README.md                   <!-- results-table:start --> ... <!-- results-table:end -->
    experiments/REFERENCES.md   <!-- results:<study>:start --> ... <!-- results:<study>:end -->   (one per study)

The README's table has a row per stored study, in the order of the REFERENCES.md blocks (every stored study needs
one), and a column per dataset: the verdict counts, the study's key numbers, the wall-clock with the 1-minute load
average at its start and end, the seeds, and any ``--set`` option other than the dataset's. A REFERENCES.md block
has a row per claim: the numbers it was decided on (mean, 95% interval, threshold) and the verdict with its note.
Nothing in them is typed by hand: ``bnjax report --table experiments/results/`` writes them, ``--check`` compares.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bnjax._io import atomic_write
from bnjax.run._errors import RunError
from bnjax.claims import DATASET_TITLES
from bnjax.run.report import markdown_table
from bnjax.stored._summaries import Stored, load_stored
from bnjax.run.summary import software_line

__all__ = ["README_MARKERS", "check_tables", "generate", "readme_table", "references_block", "study_markers",
           "write_tables"]

README_MARKERS = ("<!-- results-table:start -->", "<!-- results-table:end -->")
_BLOCK = re.compile(r"<!-- results:([\w.-]+):start -->")
MAX_NUMBERS = 3  # a claim decided on more tests shows how many, and the one closest to its threshold


def study_markers(study: str) -> tuple[str, str]:
    """The marker comments around a study's block in REFERENCES.md."""
    return f"<!-- results:{study}:start -->", f"<!-- results:{study}:end -->"


# ------------------------------------------------------------------------------------------------ cells

def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "time not recorded"
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def _load(summary: dict[str, Any]) -> str:
    load = summary.get("load_average") or {}
    start, end = load.get("start"), load.get("end")
    if not start or not end:
        return ""
    return f" at load {start[0]:.1f} to {end[0]:.1f}"


def _command(summary: dict[str, Any]) -> str:
    rerun = summary.get("rerun")
    if not rerun:
        return "(command not recorded)"
    sets = f" --set {' '.join(rerun['overrides'])}" if rerun["overrides"] else ""
    return f"`bnjax run {rerun['config']}{sets}`"


def _other_options(summary: dict[str, Any]) -> list[str]:
    """The command's ``--set`` options other than the dataset's (``data.*``): a run that is not the config's."""
    rerun = summary.get("rerun") or {}
    return [o for o in rerun.get("overrides", []) if not o.startswith("data.")]


def _verdicts(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {w}" for w, n in summary.get("verdicts", {}).items() if n)
    return f"**{counts or 'no claims'}**"


def readme_cell(summary: dict[str, Any] | None) -> str:
    """``**4 PASS**: key numbers; 46 s at load 0.2 to 2.1, 5 seeds`` (plus the non-dataset ``--set`` options)."""
    if summary is None:
        return "not stored"
    head = _verdicts(summary) + (f": {summary['key_numbers']}" if summary.get("key_numbers") else "")
    run = f"{_duration(summary.get('wall_time_s'))}{_load(summary)}, {summary.get('num_seeds', '?')} seeds"
    other = _other_options(summary)
    return f"{head}; {run}" + (f", `--set {' '.join(other)}`" if other else "")


def _closest(numbers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    # The test that decided the verdict: a failing or unclear one first, then the smallest margin.
    def key(n: dict[str, Any]) -> tuple[bool, float]:
        margin = n.get("margin")
        return n.get("holds") is True, margin if margin is not None else float("inf")

    return min(numbers, key=key)


def claim_cell(claim: dict[str, Any] | None) -> str:
    """The numbers a claim was decided on, its verdict and its note (why it differs; what would decide it)."""
    if claim is None:
        return "not checked"
    numbers = claim.get("numbers") or []
    if not numbers:
        text = claim.get("evidence", "")
    elif len(numbers) <= MAX_NUMBERS:
        text = "; ".join(n["text"] for n in numbers)
    else:
        text = f"{len(numbers)} tests, the closest: {_closest(numbers)['text']}"
    verdict, label = claim["verdict"], claim.get("label", claim["verdict"])
    cell = f"{text}: **{verdict}**{label[len(verdict):]}"
    return cell + (f" — {claim['note']}" if claim.get("note") else "")


# ----------------------------------------------------------------------------------------------- tables

def _datasets(entries: Iterable[Stored]) -> list[str]:
    names = {e.dataset for e in entries}
    known = [d for d in DATASET_TITLES if d in names]
    return known + sorted(names - set(known))


def _title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)


def _distinct(values: Iterable[str]) -> str:
    counts = Counter(v for v in values if v)
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in counts.items())


def _footer(entries: Sequence[Stored]) -> str:
    summaries = [e.summary for e in entries]
    cache = Counter(bool(s.get("compile_cache")) for s in summaries)
    cache_text = ("off" if not cache[True] else "on" if not cache[False]
                  else f"on in {cache[True]} of {len(summaries)} runs")
    return (f"Device: {_distinct(s.get('device') or '' for s in summaries) or 'not recorded'}. Software: "
            f"{_distinct(software_line(s.get('software')) for s in summaries) or 'not recorded'}. JAX's persistent "
            f"compilation cache: {cache_text}.")


def readme_table(entries: Sequence[Stored], order: Sequence[str]) -> str:
    """The README's results table: a row per study in ``order`` that has stored results, a column per dataset."""
    datasets = _datasets(entries)
    by_key = {(e.study, e.dataset): e.summary for e in entries}
    rows = []
    for study in order:
        mine = [e.summary for e in entries if e.study == study]
        if not mine:
            continue
        says = next((s["sources_say"] for s in mine if s.get("sources_say")), "")
        rows.append([f"`{study}`", says, *(readme_cell(by_key.get((study, d))) for d in datasets)])
    table = markdown_table(["study", "what the sources say", *map(_title, datasets)], rows)
    return f"{table}\n\n{_footer(entries)}" if entries else table


def references_block(study: str, entries: Sequence[Stored]) -> str:
    """A study's REFERENCES.md block: a row per claim, a column per dataset, then the command of each run."""
    if not entries:
        return (f"No stored results yet: `bnjax run configs/{study}.toml --store experiments/results/` stores the "
                f"MNIST-1D run, and with `--set data.name=fashion_mnist data.num_test=1000` the Fashion-MNIST one.")
    datasets = _datasets(entries)
    by_dataset = {e.dataset: e.summary for e in entries}
    count = max(len(s.get("claims", [])) for s in by_dataset.values())
    rows = []
    for i in range(count):
        claims = [s["claims"][i] if i < len(s.get("claims", [])) else None for s in map(by_dataset.get, datasets)]
        text = next(c["text"] for c in claims if c is not None)
        rows.append([str(i + 1), text, *map(claim_cell, claims)])
    table = markdown_table(["#", "claim, as the study checks it", *map(_title, datasets)], rows)
    runs = "; ".join(f"{_title(d)}: {_command(by_dataset[d])}, {by_dataset[d].get('num_seeds', '?')} seeds"
                     for d in datasets)
    return f"{table}\n\nRuns: {runs}."


# -------------------------------------------------------------------------------------------- the files

def _span(text: str, start: str, end: str, file: str) -> tuple[int, int]:
    """Where the generated text between ``start`` and ``end`` lies in ``text``."""
    if text.count(start) != 1 or text.count(end) != 1:
        raise RunError(f"{file}: needs exactly one {start} and one {end} (found {text.count(start)} and "
                       f"{text.count(end)}); the generated table goes between them.")
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise RunError(f"{file}: {end} comes before {start}.")
    return i, j


def _replace(text: str, start: str, end: str, body: str, file: str) -> str:
    i, j = _span(text, start, end, file)
    return f"{text[:i]}\n{body.strip()}\n{text[j:]}"


def generate(root: str | Path, readme: str, references: str, *, readme_name: str = "README.md",
             references_name: str = "experiments/REFERENCES.md") -> tuple[str, str]:
    """The README's and REFERENCES.md's texts with their generated parts rebuilt from the summaries under ``root``.

    Raises:
      RunError: a marker is missing or repeated, a stored study has no block in REFERENCES.md, or a stored summary
        cannot be read.
    """
    entries = load_stored(root)
    order = _BLOCK.findall(references)
    unplaced = sorted({e.study for e in entries} - set(order))
    if unplaced:
        start, end = study_markers(unplaced[0])
        raise RunError(f"{references_name}: no block for the stored study {unplaced[0]!r}; add {start} and {end} "
                       f"(on lines of their own) to its section.")
    for study in order:
        start, end = study_markers(study)
        block = references_block(study, [e for e in entries if e.study == study])
        references = _replace(references, start, end, block, references_name)
    readme = _replace(readme, *README_MARKERS, readme_table(entries, order), readme_name)
    return readme, references


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def _first_difference(path: Path, old: str, new: str) -> str | None:
    if old == new:
        return None
    a, b = old.splitlines(), new.splitlines()
    for n, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return f"{path}:{n}: has {_clip(x)!r}; the stored results give {_clip(y)!r}"
    n = min(len(a), len(b)) + 1
    return f"{path}:{n}: the stored results give {len(b)} lines, the file has {len(a)}"


def _clip(line: str, width: int = 160) -> str:
    return line if len(line) <= width else line[:width - 3] + "..."


def _both(root: str | Path, readme: str | Path, references: str | Path) -> list[tuple[Path, str, str]]:
    paths = [Path(readme), Path(references)]
    old = [_read(p) for p in paths]
    new = generate(root, *old, readme_name=str(paths[0]), references_name=str(paths[1]))
    return list(zip(paths, old, new))


def write_tables(root: str | Path, readme: str | Path, references: str | Path) -> list[Path]:
    """Rewrites the generated parts of ``readme`` and ``references`` from the summaries under ``root``; returns the
    files that changed."""
    changed = []
    for path, old, new in _both(root, readme, references):
        if new != old:
            atomic_write(path, new)
            changed.append(path)
    return changed


def check_tables(root: str | Path, readme: str | Path, references: str | Path) -> list[str]:
    """The first difference in each file between its generated parts and what the summaries give (empty: none)."""
    return [d for path, old, new in _both(root, readme, references) if (d := _first_difference(path, old, new))]
