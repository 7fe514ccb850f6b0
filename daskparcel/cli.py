"""The ``daskparcel`` command: convert, fit, transform, report, run, demo (and stability: :mod:`daskparcel.cli_stability`).

Every subcommand exits 0 on success and 2 on bad input, with a one-line error on stderr (no traceback);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from daskparcel import __version__
from daskparcel._log import labelled
from daskparcel._warnings import one_line_warnings
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
    from daskparcel.jobs import check_writable

    inputs = list(args.inputs)
    if args.bids is not None:
        from daskparcel.ingest.bids import find_bids_runs

        runs = find_bids_runs(
            args.bids, subject=args.subject, session=args.session, task=args.task, space=args.space
        )
        inputs += [str(r.path) for r in runs]
    if not inputs:
        raise InputError("no input given; pass NIfTI files or globs, or --bids FOLDER")
    _check_not_cwd(args.out)
    check_writable(args.out, "--out")
    if args.format == "nifti-zarr":
        from daskparcel.outputs.nifti_zarr import convert_to_nifti_zarr

        print(convert_to_nifti_zarr(inputs, args.out, overwrite=args.overwrite))
        return EXIT_OK
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


def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", help=".nii/.nii.gz files or globs (quote globs)")
    add_output(p, "the store folder to write", overwrite="replace a store made from other inputs")
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
        "--format",
        default="zarr",
        choices=["zarr", "nifti-zarr"],
        help="zarr: daskparcel's run store (default); nifti-zarr: one run as a .nii.zarr image",
    )


# ----------------------------------------------------------------------------------- fit / transform
def add_parameters(p: argparse.ArgumentParser, command: str) -> None:
    """One flag per estimator parameter of the table shared with job files (``daskparcel.jobs.PARAMETERS``).

    Every flag defaults to None, "not given": the estimator's default applies, or for ``transform --labels
    FITDIR`` the value saved in the fit folder's fit.json.
    """
    from daskparcel.jobs import PARAMETERS

    g = p.add_argument_group(
        "parameters of daskparcel.Parcellations (nilearn's names and defaults)"
    )
    for param in PARAMETERS:
        if command == "transform" and not (param.preprocessing or param.transform):
            continue
        if command == "stability" and param.name == "n_parcels":
            continue  # several K: daskparcel.cli_stability's own --n-parcels
        kwargs: dict[str, Any] = {"help": param.help, "default": None}
        if param.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif param.kind == "strings":
            kwargs["nargs"] = "*"
        elif param.kind == "choice":
            kwargs["metavar"] = "{" + ",".join(param.choices) + "}"
        if param.name == "method":
            kwargs["required"] = True
        g.add_argument(param.flag, **kwargs)
    g.add_argument("--confounds", nargs="*", help="confounds TSV files, one per input run")


def read_parameters(
    args: argparse.Namespace, command: str, saved: dict[str, Any] | None = None, source: str = ""
) -> dict[str, Any]:
    """The parameters given on the command line, checked; for ``transform``, the fit's saved preprocessing
    parameters where none is given."""
    from daskparcel.jobs import PARAMETERS

    params: dict[str, Any] = {}
    for param in PARAMETERS:
        text = getattr(args, param.name, None)
        if text is not None:
            params[param.name] = param.from_cli(text)
        elif saved is not None and param.preprocessing and param.name in saved:
            try:
                params[param.name] = param.check(saved[param.name])
            except ValueError as exc:
                raise InputError(
                    f"{source}: parameters.{param.name}: {saved[param.name]!r} {exc}; re-run `daskparcel fit`, "
                    f"or give {param.flag}"
                ) from exc
    log_verbose: int = getattr(args, "log_verbose", 0)
    if "verbose" not in params and log_verbose:
        params["verbose"] = min(log_verbose, 2)
    return params


def _check_not_cwd(out: str) -> None:
    resolved = Path(out).resolve()
    if resolved == Path.cwd() or resolved in Path.cwd().parents:
        raise InputError(
            f"--out {out}: is the current folder (or a folder above it); give a new folder, e.g. --out results"
        )


def check_out(out: str, *, overwrite: bool) -> Path:
    """An output location: not the current folder, not a file, empty unless --overwrite, writable."""
    from daskparcel.jobs import check_writable
    from daskparcel.outputs.results import check_out_dir

    _check_not_cwd(out)
    path = check_out_dir(Path(out), overwrite=overwrite)
    check_writable(path, "--out")
    return path


def add_output(
    p: argparse.ArgumentParser,
    help: str,
    *,
    overwrite: str = "replace an existing output folder",
    alias: str | None = None,
) -> None:
    """``--out`` (required; ``alias`` another name for it), ``--overwrite`` and ``--quiet``: every subcommand
    that writes has them."""
    p.add_argument("--out", *([alias] if alias else []), dest="out", required=True, help=help)
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_where(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where graphs run (default: this machine)")
    g.add_argument("--scheduler", help="a dask scheduler address, e.g. tcp://host:8786")
    g.add_argument("--cluster", help="a cluster YAML file (SLURM, PBS, Kubernetes: see deploy/)")


def add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs", nargs="*", help="4D NIfTI runs, globs, stores, or a BIDS derivatives folder"
    )
    g = p.add_argument_group("BIDS derivatives (fMRIPrep)")
    g.add_argument("--bids", help="a BIDS derivatives folder to take runs from")
    g.add_argument("--subject", nargs="*", help="BIDS filter: subject labels")
    g.add_argument("--session", nargs="*", help="BIDS filter: session labels")
    g.add_argument("--task", nargs="*", help="BIDS filter: task labels")
    g.add_argument("--space", nargs="*", help="BIDS filter: space labels")
    text = "CIFTI: the cortex's surf.gii meshes of the .dtseries.nii inputs (ward, complete, average, rena)"
    p.add_argument("--meshes", nargs=2, metavar=("LEFT", "RIGHT"), help=text)


def read_inputs(args: argparse.Namespace) -> list[Any]:
    from daskparcel.ingest.cifti import with_meshes

    items: list[Any] = with_meshes(list(args.inputs), getattr(args, "meshes", None))
    confounds = list(args.confounds) if args.confounds else None
    if args.bids is not None:
        from daskparcel.ingest.bids import find_bids_runs

        runs = find_bids_runs(
            args.bids, subject=args.subject, session=args.session, task=args.task, space=args.space
        )
        items += runs
        if confounds is None and args.confounds_columns:
            confounds = [r.confounds for r in runs]
    if not items:
        raise InputError("no input given; pass NIfTI runs, globs, a store, or --bids FOLDER")
    args.confounds_resolved = confounds
    return items


def read_where(args: argparse.Namespace) -> Any:
    if args.scheduler and args.cluster:
        raise InputError("--scheduler and --cluster: give one of them")
    if (
        args.cluster
    ):  # its keys, then whether this site's scheduler can run it (sinfo): before any input
        from daskparcel.runtime import load_cluster_config
        from daskparcel.runtime.site import check_site

        check_site(load_cluster_config(args.cluster))
    return args.scheduler or args.cluster


@command("fit")
def _fit(args: argparse.Namespace) -> int:
    from daskparcel.estimator import Parcellations
    from daskparcel.jobs import check_writable, estimator_kwargs
    from daskparcel.outputs.record import summary_line
    from daskparcel.outputs.results import write_fit_outputs
    from daskparcel.runtime.connect import performance_report, performance_report_path

    out = check_out(args.out, overwrite=args.overwrite)
    if args.store is not None:
        check_writable(args.store, "--store")
    kinds = _connectome_kinds(args)
    where = read_where(args)
    report = performance_report_path(args.performance_report, where, "--performance-report")
    est = Parcellations(
        **estimator_kwargs(read_parameters(args, "fit")), store=args.store, client=where
    )
    est._validate_params()
    imgs = read_inputs(args)
    with progress_bar(args), performance_report(report, where) as client:
        est.set_params(client=client)
        est.fit(imgs, confounds=args.confounds_resolved)
        t0 = time.perf_counter()
        with labelled("outputs"):
            doc = write_fit_outputs(
                est,
                imgs,
                out,
                confounds=args.confounds_resolved,
                inputs=[str(i) for i in args.inputs],
                overwrite=args.overwrite,
                connectomes=kinds,
                argv=args.argv,
            )
        logger.info("outputs: %.1f s, written to %s", time.perf_counter() - t0, out)
    data = doc["data"]  # a CIFTI fit has grayordinates, not voxels
    size = f"{data['voxels_in_mask']} voxels" if "voxels_in_mask" in data else f"{data.get('grayordinates')} grayordinates"  # fmt: skip
    print(
        f"{est.method} {est.n_elements_} parcels on {data['n_runs']} run(s), "
        f"{size}: fit {doc['timings']['total']:.1f} s, "
        f"{summary_line(doc['metrics'])}\nwritten to {out} (labels.nii.gz, report.html, fit.json, ...)"
    )
    return EXIT_OK


def _add_fit(p: argparse.ArgumentParser) -> None:
    add_inputs(p)
    p.add_argument(
        "--store", help="folder of the cached stores (reused by later fits; default: temporary)"
    )
    add_output(p, "output folder")
    add_parameters(p, "fit")
    add_where(p)
    p.add_argument(
        "--performance-report",
        metavar="FILE.html",
        help="save dask's performance report of the fit (task stream, worker profiles, bandwidth); needs "
        "--scheduler or --cluster (a `kind: local` cluster file starts one on this machine)",
    )
    _add_tables(p, transform=False)


# ------------------------------------------------------------------- BIDS tables and connectomes
def _add_tables(p: argparse.ArgumentParser, *, transform: bool) -> None:
    g = p.add_argument_group("parcel time series and connectomes (BIDS tables)")
    g.add_argument(
        "--connectome",
        nargs="+",
        metavar="KIND",
        help='connectomes per run (*_relmat.tsv) and their group mean: correlation, "partial correlation", '
        "tangent (over the runs), covariance (nilearn's ConnectivityMeasure)",
    )
    if transform:
        g.add_argument(
            "--tables",
            help="also write each run's parcel time series (and connectomes) as BIDS TSV tables in this folder",
        )


def _connectome_kinds(args: argparse.Namespace) -> list[str]:
    from daskparcel.outputs.connectomes import check_kinds

    kinds = check_kinds(args.connectome, name="--connectome")
    if kinds and getattr(args, "tables", "") is None:
        raise InputError(
            "--connectome: give --tables DIR, the folder its *_relmat.tsv tables go to"
        )
    if getattr(args, "tables", None):
        from daskparcel.outputs.results import check_out_dir

        check_out_dir(args.tables, overwrite=args.overwrite)
    return kinds


@command("transform")
def _transform(args: argparse.Namespace) -> int:
    import shutil

    import xarray as xr

    from daskparcel.estimator import Parcellations
    from daskparcel.jobs import estimator_kwargs
    from daskparcel.store.runs import replace_dir

    out = check_out(args.out, overwrite=args.overwrite)
    kinds = _connectome_kinds(args)
    labels = Path(args.labels)
    mask = args.mask
    saved: dict[str, Any] | None = None
    source = ""
    if labels.is_dir():  # a fit folder: its labels, mask and preprocessing parameters
        from daskparcel.outputs.record import saved_parameters

        fit_json = labels / "fit.json"
        if not fit_json.exists():
            raise InputError(
                f"{labels}: not a daskparcel fit folder (no fit.json); give labels.nii.gz or a fit folder"
            )
        saved, source = saved_parameters(fit_json), str(fit_json)
        mask = mask or str(labels / "mask.nii.gz")
        labels = labels / "labels.nii.gz"
    if not labels.exists():
        raise InputError(
            f"{labels}: no such labels image; give the labels.nii.gz of `daskparcel fit`"
        )
    params = read_parameters(args, "transform", saved, source)
    # any atlas (label values with gaps, --lut names); on another grid than the runs it is resampled (a warning)
    est = Parcellations.from_labels(
        labels, mask, lut=args.lut, **estimator_kwargs(params), client=read_where(args)
    )
    imgs = read_inputs(args)
    from daskparcel.runtime import connect

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        with progress_bar(args), labelled("transform"), connect(est.client):
            signals = est.transform(
                imgs if len(imgs) > 1 else imgs[0], confounds=args.confounds_resolved
            )
            runs: list[xr.DataArray] = signals if isinstance(signals, list) else [signals]
            combined = xr.concat(runs, dim="time") if len(runs) > 1 else runs[0]
            combined.to_dataset(name="parcel_signals").to_zarr(
                partial, mode="w", zarr_format=3, consolidated=False
            )
            if args.tables:
                from daskparcel.outputs.bids import write_transform_tables

                write_transform_tables(
                    args.tables, partial, runs, est.labels_img_, labels=args.labels, kinds=kinds,
                    inputs=imgs, overwrite=args.overwrite,
                )  # fmt: skip
        replace_dir(partial, out)
        logger.info("transform: %.1f s, %d run(s)", time.perf_counter() - t0, len(runs))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"parcel signals of {len(runs)} run(s), {est.n_elements_} parcels, written to {out}")
    return EXIT_OK


def _add_transform(p: argparse.ArgumentParser) -> None:
    add_inputs(p)
    p.add_argument(
        "--labels",
        required=True,
        help="labels.nii.gz, a `daskparcel fit` output folder, or any integer atlas (label values may have gaps; "
        "resampled to the runs' grid when it differs)",
    )
    p.add_argument("--mask", help="mask image (default: the fit folder's, or the labelled voxels)")
    p.add_argument(
        "--lut",
        help="a BIDS look-up table (TSV with columns index, name) naming the labels of an atlas given as --labels",
    )
    add_output(p, "the zarr store to write", overwrite="replace an existing store")
    add_parameters(p, "transform")
    add_where(p)
    _add_tables(p, transform=True)


@command("report")
def _report(args: argparse.Namespace) -> int:
    from daskparcel.outputs.report import write_report

    path = write_report(Path(args.folder))
    print(f"report written to {path}")
    return EXIT_OK


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a `daskparcel fit` output folder")


@command("run")
def _run(args: argparse.Namespace) -> int:
    from daskparcel.jobs import run_job

    try:
        return run_job(args.job)
    except (InputError, StoreLockedError):
        raise
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"daskparcel run: failed: {type(exc).__name__}: {exc} (see job.log; re-run to resume)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _add_run(p: argparse.ArgumentParser) -> None:
    p.formatter_class = (
        argparse.RawDescriptionHelpFormatter
    )  # the description is the job file's layout
    p.add_argument("job", help="the job YAML file")


def progress_bar(args: argparse.Namespace) -> Any:
    """A progress bar on stderr for each computation, labelled with its step, on a terminal (local or
    distributed scheduler); without one, main() logs one timed line per step instead."""
    from daskparcel._log import progress_bars

    return progress_bars(not getattr(args, "quiet", False) and sys.stderr.isatty())


# -------------------------------------------------------------------------------------------- demo
@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from daskparcel.demo import run_demo

    return run_demo(
        Path(args.out), resolution=args.resolution, quick=args.quick, inputs=args.inputs
    )


def _add_demo(p: argparse.ArgumentParser) -> None:
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
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest="log_verbose",
        help="more log lines (-vv: debug)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from daskparcel import cli_stability, jobs

    _COMMANDS["stability"] = (
        cli_stability.run_stability
    )  # here, not by import: `python -m daskparcel.cli` too
    # every subcommand: its name, one-line help, description and arguments
    subcommands: list[tuple[str, str, str, Callable[[argparse.ArgumentParser], None]]] = [
        (
            "convert",
            "convert NIfTI runs to a zarr store (one run, or a cohort of runs on one grid)",
            "Write 4D NIfTI BOLD runs to a zarr v3 store, chunk by chunk (resumable).",
            _add_convert,
        ),
        (
            "fit",
            "learn a parcellation and write labels, mask, parcel signals, fit.json and report.html",
            "Fit daskparcel.Parcellations on runs and write its outputs to --out.",
            _add_fit,
        ),
        (
            "transform",
            "mean signal of each parcel of runs, written to a zarr store",
            "Parcel signals (time, parcel) of runs with a labels image (or a fit folder).",
            _add_transform,
        ),
        (
            "report",
            "(re)write the HTML report of a fit folder",
            "Write DIR/report.html from the outputs of `daskparcel fit ... --out DIR`.",
            _add_report,
        ),
        (
            "run",
            "run a job file (inputs, parcellation, output, where): for cron, SLURM, Kubernetes",
            (jobs.__doc__ or "").split("The job's folder")[0],
            _add_run,
        ),
        (
            "demo",
            "the parcellation tour on data made offline (a synthetic MNI run), outputs written and shown",
            "Make a synthetic MNI run (or take yours), convert it, parcellate it, write the results.",
            _add_demo,
        ),
        ("stability", cli_stability.HELP, cli_stability.DESCRIPTION, cli_stability.add_stability),
    ]
    for name, help, description, add in subcommands:
        add(sub.add_parser(name, help=help, description=description))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskparcel`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = ["daskparcel", *(sys.argv[1:] if argv is None else argv)]  # recorded in fit.json
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.log_verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    package_logger = logging.getLogger("daskparcel")
    previous_level = package_logger.level
    if (
        args.command in ("fit", "transform")
        and not args.quiet
        and not args.log_verbose
        and not sys.stderr.isatty()
    ):
        # no progress bar without a terminal (cron, SLURM logs): one timed line per step instead
        package_logger.setLevel(logging.INFO)
    try:
        with one_line_warnings(f"daskparcel {args.command}"):
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
    finally:
        package_logger.setLevel(previous_level)  # main() called in-process leaves logging as it was


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
