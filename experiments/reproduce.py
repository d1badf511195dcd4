"""Reruns the stored studies exactly as recorded and lists every difference from what is stored.

    python experiments/reproduce.py [--study S ...] [--dataset D ...] [--out DIR] [--rtol R] [--atol A] [--store]

Each ``experiments/results/<study>/<dataset>/summary.json`` records the config file and the ``--set`` options of
its run (``rerun``); this script runs ``python -m bnjax run CONFIG --set ... --out DIR/<study>-<dataset> --quiet``
from the project root and compares the rerun's summary with the stored one (``bnjax.stored.compare_summaries``:
verdicts, claim texts, seeds, the config and every number; timing, machine and software are not compared). Numbers
agree when ``|a - b| <= atol + rtol * |a|`` (default rtol 1e-5, atol 1e-8: a rerun on the same machine and software
gives identical numbers; another CPU or accelerator may differ in float summation order, hence the tolerance).

A killed reproduction continues with the same ``--out``: finished reruns are kept, an interrupted one resumes.
``--store`` replaces the stored summaries with the reruns' (after an intended change; then regenerate the tables with
``bnjax report --table experiments/results/``). Exit code: 0 when every rerun matches (with ``--store``: when every
rerun finished), 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: this checkout's bnjax, as the reruns (`python -m bnjax` in ROOT)
    sys.path.insert(0, str(ROOT))

from bnjax.run import RunError, inspect_run_dir  # noqa: E402
from bnjax.stored import SUMMARY_FILE, Stored, compare_summaries, load_stored, store_summary  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
SHOWN = 20  # differences listed per study and dataset (the count says how many more)


def command(entry: Stored, out: Path) -> list[str]:
    """The ``python -m bnjax run`` command that reruns ``entry`` into ``out`` (``--resume`` when ``out`` holds an
    interrupted rerun)."""
    rerun = entry.summary.get("rerun")
    if not rerun:
        raise RunError(f"{entry.path}: records no `bnjax run` command (its field \"rerun\" is empty); store a run "
                       f"started by `bnjax run`.")
    cmd = [sys.executable, "-m", "bnjax", "run", rerun["config"]]
    if rerun["overrides"]:
        cmd += ["--set", *rerun["overrides"]]
    cmd += ["--out", str(out), "--quiet"]
    if inspect_run_dir(out).kind == "interrupted":
        cmd.append("--resume")
    return cmd


def rerun(entry: Stored, out: Path) -> dict:
    """Runs ``entry`` again into ``out`` (kept when it already holds the complete rerun) and returns its summary.

    Raises:
      RunError: the rerun failed (its last line of output says why).
    """
    if inspect_run_dir(out).kind != "complete":
        cmd = command(entry, out)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
            raise RunError(f"the rerun `{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {last}")
    return json.loads((out / SUMMARY_FILE).read_text())


def reproduce(entry: Stored, out: Path, *, rtol: float = 1e-5, atol: float = 1e-8) -> tuple[dict, list[str]]:
    """The rerun's summary and its differences from the stored one (empty: reproduced)."""
    summary = rerun(entry, out)
    return summary, compare_summaries(entry.summary, summary, rtol=rtol, atol=atol)


def cheapest(entries: Sequence[Stored]) -> dict[str, Stored]:
    """Per dataset, the stored study with the shortest recorded wall-clock (what the slow test reruns)."""
    out: dict[str, Stored] = {}
    for e in entries:
        t = e.summary.get("wall_time_s") or float("inf")
        if e.dataset not in out or t < (out[e.dataset].summary.get("wall_time_s") or float("inf")):
            out[e.dataset] = e
    return out


def _seconds(summary: dict) -> str:
    t = summary.get("wall_time_s")
    return "?" if t is None else f"{t:.0f} s"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python experiments/reproduce.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", nargs="+", default=[], help="only these studies (default: every stored one)")
    p.add_argument("--dataset", nargs="+", default=[], help="only these datasets, e.g. mnist1d fashion_mnist")
    p.add_argument("--out", default=None, help="where the reruns go (default runs/reproduce-<time>)")
    p.add_argument("--results", default=str(RESULTS), help="the stored results (default experiments/results)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of numbers (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance of numbers (default 1e-8)")
    p.add_argument("--store", action="store_true", help="replace the stored summaries with the reruns'")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        entries = load_stored(args.results, studies=args.study, datasets=args.dataset)
    except RunError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    if not entries:
        print(f"reproduce: error: nothing stored under {args.results} for studies {args.study or 'any'} and "
              f"datasets {args.dataset or 'any'}.", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ROOT / "runs" / f"reproduce-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"reproducing {len(entries)} stored run(s) into {out} (rtol {args.rtol:g}, atol {args.atol:g})")
    failed = 0
    for e in entries:
        name = f"{e.study} / {e.dataset}"
        try:
            summary, diffs = reproduce(e, out / f"{e.study}-{e.dataset}", rtol=args.rtol, atol=args.atol)
        except RunError as err:
            print(f"{name}: {err}")
            failed += 1
            continue
        took = f"rerun {_seconds(summary)}, stored {_seconds(e.summary)}"
        if diffs:
            print(f"{name}: {len(diffs)} difference(s) ({took}):")
            print("\n".join(f"  {d}" for d in diffs[:SHOWN]))
            if len(diffs) > SHOWN:
                print(f"  ... and {len(diffs) - SHOWN} more")
        else:
            print(f"{name}: same verdicts and numbers ({summary.get('total', 0)} claims; {took})")
        if args.store:
            print(f"  stored: {store_summary(summary, args.results)}")
        elif diffs:
            failed += 1
    print(f"{len(entries) - failed} of {len(entries)} reproduced" if not args.store
          else f"{len(entries) - failed} of {len(entries)} rerun and stored")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
