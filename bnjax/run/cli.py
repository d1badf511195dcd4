"""The ``bnjax`` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import sys


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    from bnjax.nn import format_gradcheck, gradcheck_layers

    rows = gradcheck_layers(seed=args.seed, h=args.h)
    print("Relative errors (CS231n rel_error) of analytic vs autodiff vs numeric gradients, float64:")
    print(format_gradcheck(rows, tol=args.tol))
    worst = max(rows, key=lambda r: r.worst)
    ok = worst.worst <= args.tol
    print(f"\nlargest relative error: {worst.worst:.2e} ({worst.layer}, {worst.input}); "
          f"tolerance {args.tol:.0e}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _cmd_run(args: argparse.Namespace) -> int:
    import shlex

    from bnjax.run._studies import find_config
    from bnjax.run.config import load_config
    from bnjax.run.runner import run_study

    overrides = [o for group in args.set for o in group]
    path = find_config(args.config)  # a path, or a study name (./configs, then the studies shipped with bnjax)
    config = load_config(path, overrides)
    command = "bnjax " + " ".join(shlex.quote(a) for a in (args.argv or sys.argv[1:]))
    out, summary = run_study(config, args.out, resume=args.resume, progress=not args.quiet, command=command,
                             source=path)
    print(f"results: {out}/report.md ({summary['passed']}/{summary['total']} claims PASS)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bnjax.run.runner import rebuild_report

    summary = rebuild_report(args.run_dir)
    print(f"results: {args.run_dir.rstrip('/')}/report.md ({summary['passed']}/{summary['total']} claims PASS)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from bnjax.run._studies import default_configs_dir, shipped_configs_dir
    from bnjax.run.config import list_studies

    directory = args.configs or default_configs_dir()  # ./configs, else the studies shipped with bnjax
    studies = list_studies(directory) if directory is not None else []
    if not studies:
        print(f"no configs (*.toml) in {directory or './configs'}")
        return 1
    by_name = args.configs is None and directory == shipped_configs_dir()  # shipped: `bnjax run NAME`
    labels = [s.name if by_name and s.error is None else s.path for s in studies]
    width = max(map(len, labels))
    for label, s in zip(labels, studies):
        text = s.description if s.error is None else f"INVALID: {s.error}"
        print(f"{label:<{width}}  {text}")
    return 0 if all(s.error is None for s in studies) else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    import time

    from bnjax.run.bench import run_bench

    out = args.out or f"bench_results/bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    run_bench(quick=args.quick, out=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("gradcheck", help="check every layer's analytic gradient against autodiff and finite differences")
    p.add_argument("--seed", type=int, default=231, help="NumPy seed of the inputs (default 231, as CS231n)")
    p.add_argument("--h", type=float, default=1e-5, help="finite-difference step (default 1e-5)")
    p.add_argument("--tol", type=float, default=1e-7, help="largest relative error that passes (default 1e-7)")
    p.set_defaults(func=_cmd_gradcheck)

    p = sub.add_parser("run", help="run a study config: train its variants, write metrics, plots and a verdict report")
    p.add_argument("config", help="a study name (e.g. quickstart) or a TOML file's path (e.g. configs/quickstart.toml); "
                                  "`bnjax list` shows the studies")
    p.add_argument("--set", nargs="+", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override config values (TOML literals; bare words are strings), e.g. "
                        "--set train.epochs=2 sweep.seeds=[0,1]; checked like the file")
    p.add_argument("--out", default=None, help="results directory (default runs/<study>-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: finished variants are kept, the interrupted one resumes from "
                        "its last epoch checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run, argv=None)

    p = sub.add_parser("report", help="rebuild the plots and report.md of a run directory from its saved metrics")
    p.add_argument("run_dir", help="a directory written by `bnjax run`")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bench", help="time bnjax against hand-written JAX and flax.linen (steps, epochs, "
                                     "ensembles, the BN layer); prints medians and ratios, saves JSON")
    p.add_argument("--quick", action="store_true", help="one workload per part and few rounds (a smoke run)")
    p.add_argument("--out", default=None, help="JSON file (default bench_results/bench-<time>.json)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("list", help="list the study configs with their one-line descriptions")
    p.add_argument("--configs", default=None,
                   help="directory of *.toml configs (default ./configs if it has any, else the studies shipped "
                        "with bnjax)")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        args.argv = argv
    from bnjax.run._schema import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        # Mistakes in a config or a path: one clear line, no traceback.
        print(f"bnjax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
