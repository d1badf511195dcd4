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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("gradcheck", help="check every layer's analytic gradient against autodiff and finite differences")
    p.add_argument("--seed", type=int, default=231, help="NumPy seed of the inputs (default 231, as CS231n)")
    p.add_argument("--h", type=float, default=1e-5, help="finite-difference step (default 1e-5)")
    p.add_argument("--tol", type=float, default=1e-7, help="largest relative error that passes (default 1e-7)")
    p.set_defaults(func=_cmd_gradcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
