"""``daskparcel stability``: reproducibility and held-out accuracy against K (Thirion et al. 2014).

Registered by :func:`daskparcel.cli.build_parser`; it takes the inputs, parameters and ``--scheduler`` /
``--cluster`` flags of ``daskparcel fit`` (the same argument handling), with several ``--n-parcels``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daskparcel.cli import (
    EXIT_OK,
    add_inputs,
    add_output,
    add_parameters,
    add_where,
    check_out,
    progress_bar,
    read_inputs,
    read_parameters,
    read_where,
)
from daskparcel.errors import InputError
from daskparcel.outputs.record import saved_parameters


def run_stability(args: argparse.Namespace) -> int:
    """``daskparcel stability``: check, resample, refit, write the table and the figure (and the fit's record)."""
    from daskparcel.estimator import Parcellations
    from daskparcel.jobs import check_writable, estimator_kwargs
    from daskparcel.metrics.stability import check_stability_args, stability
    from daskparcel.outputs.stability import record_in_fit, write_stability

    ks = check_stability_args(
        args.stability_n_parcels, args.n_samples, args.resampling, args.n_blocks, args.accuracy
    )
    out = check_out(args.out, overwrite=args.overwrite)
    if args.store is not None:
        check_writable(args.store, "--store")
    params = read_parameters(args, "fit")
    if args.fit is not None:
        fitted = saved_parameters(Path(args.fit) / "fit.json", "or give another --fit").get(
            "method"
        )
        if fitted != params["method"]:
            raise InputError(
                f"--fit {args.fit}: a {fitted} fit, but --method is {params['method']}; pass --method {fitted} "
                "(the stability of the fit's own method)"
            )
    where = read_where(args)
    est = Parcellations(**estimator_kwargs(params), store=args.store, client=where)
    est.set_params(n_parcels=ks[0])._validate_params()
    imgs = read_inputs(args)
    with progress_bar(args):
        table = stability(
            est, imgs, ks, n_samples=args.n_samples, resampling=args.resampling,
            n_blocks=args.n_blocks, accuracy=args.accuracy, random_state=args.seed,
            confounds=args.confounds_resolved,
        )  # fmt: skip
    doc = write_stability(table, out, args.argv)
    lines = [
        f"K={r['n_parcels']}: ARI {_num(r['ari_mean'])} +- {_num(r['ari_sd'])}, AMI {_num(r['ami_mean'])}, "
        f"{args.accuracy} {_num(r['accuracy_mean'])} +- {_num(r['accuracy_sd'])}"
        for r in doc["table"]
    ]
    print(
        f"{est.method}, {args.n_samples} {doc['resampling']} samples:\n  "
        + "\n  ".join(lines)
        + f"\nwritten to {out} (stability.tsv, stability.json, stability.png)"
    )
    if args.fit is not None:
        summary = record_in_fit(args.fit, doc)
        print(f"recorded in {Path(args.fit) / 'fit.json'} (stability ARI {summary['ari']})")
    return EXIT_OK


def _num(value: Any) -> str:
    return "NaN" if value is None else f"{float(value):.3f}"


HELP = (
    "reproducibility (ARI/AMI across bootstrap samples or split halves) and held-out accuracy vs K"
)
DESCRIPTION = (
    "Refit on bootstrap samples of subjects (or split halves of time for one subject), sharing one signals "
    "store, and write the pairwise ARI / AMI and the held-out accuracy for each K: stability.tsv, "
    "stability.json and stability.png in --out."
)


def add_stability(p: argparse.ArgumentParser) -> None:
    """The ``stability`` subcommand's arguments."""
    add_inputs(p)
    add_output(p, "output folder", alias="--output")
    p.add_argument("--store", help="folder of the cached stores (a fit's --store is reused)")
    g = p.add_argument_group("stability")
    g.add_argument(
        "--n-parcels", dest="stability_n_parcels", nargs="+", type=int, required=True, metavar="K",
        help="the numbers of parcels to compare, e.g. 50 100 200",
    )  # fmt: skip
    g.add_argument("--n-samples", type=int, default=8, help="resamplings (default 8)")
    g.add_argument(
        "--resampling", default="auto", choices=["auto", "bootstrap", "split-half"],
        help="bootstrap of subjects, or random halves of time blocks (auto: bootstrap for 2+ subjects)",
    )  # fmt: skip
    g.add_argument("--n-blocks", type=int, default=10, help="split-half: time blocks per run")
    g.add_argument(
        "--accuracy", default="r2", choices=["r2", "homogeneity"],
        help="held-out accuracy: compression R^2 (default) or homogeneity",
    )  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    g.add_argument(
        "--fit", metavar="FITDIR",
        help="a `daskparcel fit` folder of the same method: stability.json and the ARI at its K are "
        "recorded there and its report rewritten",
    )  # fmt: skip
    add_parameters(p, "stability")
    add_where(p)
