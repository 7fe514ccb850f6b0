"""The ``daskparcel`` command: convert, fit, transform, report, run, demo.

Every subcommand exits 0 on success and 2 on bad input, with a one-line error on stderr (no traceback);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from daskparcel import __version__
from daskparcel.errors import InputError, StoreLockedError

logger = logging.getLogger("daskparcel")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(
    name: str,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        _COMMANDS[name] = func
        return func

    return register


# ----------------------------------------------------------------------------------------- convert
@command("convert")
def _convert(args: argparse.Namespace) -> int:
    from daskparcel.ingest.convert import convert, print_progress

    inputs = list(args.inputs)
    if args.bids is not None:
        from daskparcel.ingest.bids import find_bids_runs

        runs = find_bids_runs(
            args.bids, subject=args.subject, session=args.session, task=args.task, space=args.space
        )
        inputs += [str(r.path) for r in runs]
    if not inputs:
        raise InputError("no input given; pass NIfTI files or globs, or --bids FOLDER")
    result = convert(
        inputs,
        args.out,
        chunk_volumes=args.chunk_volumes,
        compression=args.compression,
        overwrite=args.overwrite,
        progress=None if args.quiet else print_progress,
    )
    print(result.summary())
    return EXIT_OK


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert NIfTI runs to a zarr store (one run, or a cohort of runs on one grid)",
        description="Write 4D NIfTI BOLD runs to a zarr v3 store, chunk by chunk (resumable).",
    )
    p.add_argument("inputs", nargs="*", help=".nii/.nii.gz files or globs (quote globs)")
    p.add_argument("--out", required=True, help="the store folder to write")
    p.add_argument("--bids", help="a BIDS derivatives folder (fMRIPrep layout) to take runs from")
    p.add_argument("--subject", nargs="*", help="BIDS filter: subject labels")
    p.add_argument("--session", nargs="*", help="BIDS filter: session labels")
    p.add_argument("--task", nargs="*", help="BIDS filter: task labels")
    p.add_argument(
        "--space", nargs="*", help="BIDS filter: space labels (e.g. MNI152NLin2009cAsym)"
    )
    p.add_argument(
        "--chunk-volumes", type=int, help="whole volumes per chunk (default: ~32 MB per chunk)"
    )
    p.add_argument("--compression", default="blosc-lz4", choices=["blosc-lz4", "zstd", "none"])
    p.add_argument(
        "--overwrite", action="store_true", help="replace a store made from other inputs"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# -------------------------------------------------------------------------------------------- demo
@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from daskparcel.demo import run_demo

    return run_demo(
        Path(args.out), resolution=args.resolution, quick=args.quick, inputs=args.inputs
    )


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the parcellation tour on data made offline (a synthetic MNI run), outputs written and shown",
        description="Make a synthetic MNI run (or take yours), convert it, parcellate it, write the results.",
    )
    p.add_argument(
        "inputs", nargs="*", help="optional: your own 4D NIfTI runs instead of synthetic data"
    )
    p.add_argument(
        "--out", default="daskparcel-demo", help="output folder (default: ./daskparcel-demo)"
    )
    p.add_argument(
        "--resolution", type=int, default=4, choices=[4, 2], help="synthetic MNI grid (mm)"
    )
    p.add_argument("--quick", action="store_true", help="smaller parcellations, for a fast check")


# -------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daskparcel",
        description="Out-of-core, distributed brain parcellations from fMRI (dask + xarray + zarr).",
    )
    parser.add_argument("--version", action="version", version=f"daskparcel {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_convert, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskparcel`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except (InputError, StoreLockedError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"daskparcel {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"daskparcel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
