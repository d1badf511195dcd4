"""The ``bnjax`` command line (``run``, ``report``, ``list``, ``gradcheck``, ``bench``): parses arguments and calls
the library; no logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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
    from bnjax.run.runner import default_out_dir, run_study

    overrides = [o for group in args.set for o in group]
    path = find_config(args.config)  # a path, or a study name (./configs, then the studies shipped with bnjax)
    config = load_config(path, overrides)
    args.out_dir = Path(args.out) if args.out else default_out_dir(config)
    command = "bnjax " + " ".join(shlex.quote(a) for a in (args.argv or sys.argv[1:]))
    out, summary = run_study(config, args.out_dir, resume=args.resume, progress=not args.quiet, command=command,
                             source=path, checkpoint_every=args.checkpoint_every)
    if summary is None:  # another process of a multi-process run wrote the results
        import jax

        print(f"process {jax.process_index()} of {jax.process_count()}: done; process 0 wrote {out}/report.md")
    else:
        print(f"results: {out}/report.md ({summary['passed']}/{summary['total']} claims PASS)")
        if args.store:
            from bnjax.stored._summaries import store_summary

            print(f"stored: {store_summary(summary, args.store)}")
    return 0


def _resume_command(args: argparse.Namespace) -> str:
    """The command that continues the run ``args`` started: same config and --set options, its --out, --resume."""
    import shlex

    parts = ["bnjax", "run", args.config]
    for group in args.set:
        parts += ["--set", *group]
    parts += ["--out", str(args.out_dir), "--resume"] + (["--quiet"] if args.quiet else [])
    if args.checkpoint_every != "auto":
        parts += ["--checkpoint-every", f"{args.checkpoint_every:g}"]
    if args.store:
        parts += ["--store", args.store]
    if args.cpu_devices is not None:
        parts += ["--cpu-devices", str(args.cpu_devices)]
    if args.coordinator is not None:
        parts += ["--coordinator", args.coordinator, "--num-processes", str(args.num_processes),
                  "--process-id", str(args.process_id)]
    text = " ".join(shlex.quote(p) for p in parts)
    if args.coordinator is not None:
        text += "   (on every process, each with its own --process-id)"
    return text


def _cmd_report(args: argparse.Namespace) -> int:
    from bnjax.run._errors import RunError

    if args.check and args.table is None:
        raise RunError("--check compares the tables with --table DIR's summaries: give --table DIR.")
    if args.run_dir is None and args.table is None:
        raise RunError("give a run directory (bnjax report RUN_DIR [--store DIR]) or --table DIR.")
    if args.run_dir is not None:
        _report_run(args)
    if args.table is None:
        return 0
    from bnjax.stored._tables import check_tables, write_tables

    if args.check:
        differences = check_tables(args.table, args.readme, args.references)
        for d in differences:
            print(f"bnjax report: {d}", file=sys.stderr)
        if differences:
            print(f"regenerate with: bnjax report --table {args.table}", file=sys.stderr)
            return 1
        print(f"tables: {args.readme} and {args.references} match {args.table}")
        return 0
    changed = write_tables(args.table, args.readme, args.references)
    print(f"tables: {', '.join(map(str, changed))} rewritten from {args.table}" if changed
          else f"tables: {args.readme} and {args.references} already match {args.table}")
    return 0


def _report_run(args: argparse.Namespace) -> None:
    from bnjax.run.runner import rebuild_report
    from bnjax.stored._summaries import store_run

    run_dir = args.run_dir.rstrip("/")
    if args.store:
        stored = store_run(run_dir, args.store)
        summary = json.loads(stored.read_text())
    else:
        summary = rebuild_report(run_dir)
    print(f"results: {run_dir}/report.md ({summary['passed']}/{summary['total']} claims PASS)")
    if args.store:
        print(f"stored: {stored}")


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

    from bnjax.bench import run_bench
    from bnjax.run._schema import ConfigError

    out = args.out or f"bench_results/bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        run_bench(quick=args.quick, out=out, devices=None if args.devices == "all" else args.devices)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return 0


def _setup_processes(args: argparse.Namespace, argv: list[str] | None) -> int | None:
    """Before JAX starts: the CPU device count; for one process of a multi-process run, the checks of its flags
    and, in the launching process, the supervised child that does the work (returns its exit code).

    JAX's distributed runtime ends a process whose peer died with a C++ abort that Python cannot catch; the
    supervisor (:mod:`bnjax.launch._supervisor`) turns that into one line with the command that resumes the run.
    """
    from bnjax.launch._supervisor import is_child, run_supervised, watch_parent
    from bnjax.launch._platform import DistributedArgs, multi_process_requested, set_cpu_devices
    from bnjax.run._schema import ConfigError

    args.distributed = None
    if args.cpu_devices is not None:
        set_cpu_devices(args.cpu_devices)
    dist = DistributedArgs(args.coordinator, args.num_processes, args.process_id, timeout_s=args.timeout)
    if not multi_process_requested(dist):
        return None
    if not args.out:
        raise ConfigError("a multi-process run needs --out DIR (the same on every process; process 0 writes "
                          "there).")
    args.distributed = dist
    if is_child():
        watch_parent()
        return None
    args.out_dir = Path(args.out)
    from bnjax.run._rundir import kept_message

    return run_supervised(argv if argv is not None else sys.argv[1:], resume_hint=_resume_command(args),
                          kept=lambda: kept_message(args.out_dir), process_id=dist.process_id,
                          debug=args.debug, heartbeat_s=dist.heartbeat_s)


def _checkpoint_every(text: str) -> float | str:
    """``auto`` or a finite number of seconds >= 0 (argparse type of ``--checkpoint-every``)."""
    import math

    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a number of seconds >= 0")
    return value


def _add_run_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``bnjax run`` sub-command's arguments."""
    p = sub.add_parser("run", parents=[common],
                       help="run a study config: train its variants, write metrics, plots and a verdict report")
    p.add_argument("config", help="a study name (e.g. quickstart) or a TOML file's path (e.g. configs/quickstart.toml); "
                                  "`bnjax list` shows the studies")
    p.add_argument("--set", nargs="+", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override config values (TOML literals; bare words are strings), e.g. "
                        "--set train.epochs=2 sweep.seeds=[0,1]; checked like the file")
    p.add_argument("--out", default=None, help="results directory (default runs/<study>-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: finished variants are kept, the interrupted one resumes from "
                        "its last intact epoch checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--store", default=None, metavar="DIR",
                   help="also keep the run's summary.json as DIR/<study>/<dataset>/summary.json (the project keeps "
                        "its results in experiments/results/)")
    p.add_argument("--checkpoint-every", type=_checkpoint_every, default="auto", metavar="SECONDS",
                   help="when the training variant's checkpoint is saved: 'auto' (default: every epoch while the "
                        "members' state is under 64 MiB; a larger one once nine times what the last save took has "
                        "passed, so saving costs at most a tenth of the run) or every SECONDS (0: every epoch); "
                        "always at a variant's last epoch. A killed run resumes from the last one")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: on, in $XDG_CACHE_HOME/bnjax/"
                        "jax-compile or ~/.cache/bnjax/jax-compile; BNJAX_COMPILE_CACHE=0 also turns it off)")
    p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="split the CPU into N JAX devices (XLA's host-platform device count), so [parallel] can "
                        "shard members and batches on a machine without accelerators")
    dist = p.add_argument_group(
        "multi-process run (jax.distributed)",
        "start one `bnjax run` per process, all with the same config, --set options and --out; process 0 writes "
        "the results. Without these flags JAX detects SLURM, Open MPI, TPU pod slices and JAX_COORDINATOR_ADDRESS "
        "by itself.")
    dist.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                      help="address of process 0, which serves the coordination service, e.g. 10.0.0.1:12355")
    dist.add_argument("--num-processes", type=int, default=None, metavar="N", help="how many processes take part")
    dist.add_argument("--process-id", type=int, default=None, metavar="I", help="this process's id, 0..N-1")
    dist.add_argument("--timeout", type=int, default=60, metavar="S",
                      help="seconds to wait for the coordinator and the other processes to join (default 60)")
    p.set_defaults(func=_cmd_run, argv=None, out_dir=None)


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before and after the command (`bnjax --debug run ...`, `bnjax run ... --debug`).
    debug_help = "on an error, also print the Python traceback"
    parser = argparse.ArgumentParser(prog="bnjax", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)  # SUPPRESS: an absent sub-command flag keeps the main one
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("gradcheck", parents=[common],
                       help="check every layer's analytic gradient against autodiff and finite differences")
    p.add_argument("--seed", type=int, default=231, help="NumPy seed of the inputs (default 231, as CS231n)")
    p.add_argument("--h", type=float, default=1e-5, help="finite-difference step (default 1e-5)")
    p.add_argument("--tol", type=float, default=1e-7, help="largest relative error that passes (default 1e-7)")
    p.set_defaults(func=_cmd_gradcheck)

    _add_run_parser(sub, common)

    p = sub.add_parser("report", parents=[common],
                       help="rebuild the plots and report.md of a run directory from its saved metrics; store its "
                            "summary; generate or check the README's results table from stored summaries")
    p.add_argument("run_dir", nargs="?", default=None, help="a directory written by `bnjax run`")
    p.add_argument("--store", default=None, metavar="DIR",
                   help="keep the complete run's summary.json as DIR/<study>/<dataset>/summary.json, e.g. "
                        "--store experiments/results/")
    p.add_argument("--table", default=None, metavar="DIR",
                   help="rewrite the generated parts of --readme and --references from the summaries under DIR")
    p.add_argument("--check", action="store_true",
                   help="with --table: write nothing; exit 1 naming the first difference in each file")
    p.add_argument("--readme", default="README.md", help="the file holding the results table (default README.md)")
    p.add_argument("--references", default="experiments/REFERENCES.md",
                   help="the file holding the per-study blocks (default experiments/REFERENCES.md)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bench", parents=[common],
                       help="time bnjax against hand-written JAX and flax.linen (steps, epochs, ensembles, the BN "
                            "layer), bfloat16 vs float32, and ensembles sharded over 2 devices vs 1; prints medians "
                            "and ratios, saves JSON")
    p.add_argument("--quick", action="store_true", help="one workload per part and few rounds (a smoke run)")
    p.add_argument("--out", default=None, help="JSON file (default bench_results/bench-<time>.json)")
    p.add_argument("--devices", choices=("all", "cpu", "accelerator"), default="all",
                   help="where to run: the CPU and, when there is one, the accelerator (default), or only one of them")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: on, in $XDG_CACHE_HOME/bnjax/"
                        "jax-compile or ~/.cache/bnjax/jax-compile; BNJAX_COMPILE_CACHE=0 also turns it off)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("list", parents=[common], help="list the study configs with their one-line descriptions")
    p.add_argument("--configs", default=None,
                   help="directory of *.toml configs (default ./configs if it has any, else the studies shipped "
                        "with bnjax)")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command in ``argv`` (default ``sys.argv[1:]``) and returns the exit code.

    Exit codes: 0 success; 1 a failed check (gradcheck, list, report --check) or a bug (with its traceback); 2 an
    error the user can fix (bad config, option, path, data file, busy or occupied results directory, damaged
    checkpoint, a results table's missing marker, full or read-only disk), printed as one ``bnjax <command>:
    error: ...`` message; 128 + N after signal N (130 Ctrl-C, 143 SIGTERM), with the command that resumes the run.
    """
    import logging

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage and the error
        return 0 if e.code is None else int(e.code) if isinstance(e.code, int) else 2
    if args.command == "run":
        args.argv = argv
    from bnjax.launch import LaunchError
    from bnjax.run._errors import RunError, RunInterrupted
    from bnjax.run._rundir import describe_error, kept_message
    from bnjax.run._schema import ConfigError
    from bnjax.train._checkpoint import CheckpointError

    name = f"bnjax {args.command}"
    # Library warnings (a damaged checkpoint skipped on resume) as plain lines on stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{name}: warning: %(message)s"))
    logger = logging.getLogger("bnjax")
    logger.addHandler(handler)
    try:
        if args.command == "run":
            supervised = _setup_processes(args, argv)
            if supervised is not None:
                return supervised
        if hasattr(args, "no_compile_cache"):
            from bnjax.launch._platform import compile_cache_wanted, enable_compile_cache

            if compile_cache_wanted(args.no_compile_cache):
                enable_compile_cache()
        if args.command == "run" and args.distributed is not None:
            from bnjax.launch._platform import join_distributed

            join_distributed(args.distributed)
        return int(args.func(args) or 0)
    except RunInterrupted as e:
        how = "Ctrl-C" if e.exit_code == 130 else e.args[0]
        kept = kept_message(e.out) if e.resumable else None
        if kept is not None:
            print(f"{name}: interrupted ({how}) {e.detail}; {kept}.\nresume with: {_resume_command(args)}",
                  file=sys.stderr)
        else:
            print(f"{name}: interrupted ({how}) {e.detail}; nothing was kept in {e.out}.", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{name}: interrupted (Ctrl-C).", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from bnjax.launch._supervisor import PEER_FAILURE, is_child, is_peer_failure

        if getattr(args, "distributed", None) is None or not is_child() or not is_peer_failure(e):
            raise
        # A collective failed because another process is gone. The supervisor prints the one-line error; exit
        # now, without JAX's shutdown barrier, which would wait for the dead process.
        import os

        first = str(e).strip().splitlines()[0][:300]
        print(f"{PEER_FAILURE} {first}", file=sys.stderr, flush=True)
        if args.debug:
            import traceback

            traceback.print_exc()
        sys.stderr.flush()
        os._exit(2)
    except (ConfigError, LaunchError, RunError, CheckpointError, OSError) as e:
        # Mistakes in a config, a path, a data file, a results directory or a checkpoint, and a full or
        # read-only disk: one clear message, no traceback (unless --debug).
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"{name}: error: {describe_error(e)}", file=sys.stderr)
        resumable = isinstance(e, OSError) or getattr(e, "resumable", False)
        kept = kept_message(args.out_dir) if resumable and getattr(args, "out_dir", None) else None
        if kept is not None:
            print(f"{kept[0].upper()}{kept[1:]}; resume with: {_resume_command(args)}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
