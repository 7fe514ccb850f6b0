"""``daskparcel demo``: nilearn's parcellation tour, on data made offline.

It writes a synthetic 4 mm MNI run (the size of nilearn's example: 50x59x50, 168 volumes) with a planted
parcellation, converts it to a store, and fits the example's parcellations on it: ward 1000 then 2000 (the second
cuts the first one's tree), kmeans 50, hierarchical kmeans 50 and rena 5000. Each fit's outputs (labels, mask,
parcel signals, fit.json and an HTML report) go to ``OUT/<method>-<K>/``; a summary table is printed and saved
as ``OUT/summary.md``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

# nilearn's example: (method, n_parcels, smoothing_fwhm, standardize)
TOUR = [
    ("ward", 1000, 2.0, False),
    ("ward", 2000, 2.0, False),
    ("kmeans", 50, 10.0, "zscore_sample"),
    ("hierarchical_kmeans", 50, 10.0, "zscore_sample"),
    ("rena", 5000, 2.0, False),
]
# --quick: the same fits with fewer parcels
QUICK = [
    (m, k, fwhm, std) for (m, _, fwhm, std), k in zip(TOUR, (200, 400, 20, 20, 500), strict=True)
]


def run_demo(
    out: Path, *, resolution: int = 4, quick: bool = False, inputs: list[str] | None = None
) -> int:
    """Run the tour into ``out``; returns the exit code."""
    from daskparcel import datasets
    from daskparcel.estimator import Parcellations
    from daskparcel.ingest.convert import convert, print_progress
    from daskparcel.metrics import adjusted_rand
    from daskparcel.outputs.record import METRICS, shown, summary_line
    from daskparcel.outputs.results import write_fit_outputs

    summary_metrics = [m for m in METRICS if m.short]

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path is a file; give a folder for --out")
    out.mkdir(parents=True, exist_ok=True)
    truth = None
    if inputs:
        paths = [Path(p) for p in inputs]
        print(f"demo on your data: {', '.join(map(str, paths))}")
    else:
        t0 = time.perf_counter()
        n_volumes = 60 if quick else 168
        paths, truth = datasets.write_synthetic_nifti(
            out / "data", 1, resolution, n_volumes, n_parcels=100
        )
        print(
            f"synthetic {resolution} mm MNI run ({n_volumes} volumes, 100 planted parcels) written to "
            f"{paths[0]} in {time.perf_counter() - t0:.1f} s"
        )
    result = convert(paths, out / "runs.zarr", progress=print_progress)
    print(result.summary())
    store = out / "cache"
    rows = []
    for method, k, fwhm, standardize in QUICK if quick else TOUR:
        est = Parcellations(
            method=method, n_parcels=k, smoothing_fwhm=fwhm, standardize=standardize, store=store
        )
        t0 = time.perf_counter()
        est.fit(out / "runs.zarr")
        fit_seconds = time.perf_counter() - t0
        doc = write_fit_outputs(
            est,
            out / "runs.zarr",
            out / f"{method}-{k}",
            inputs=[str(p) for p in paths],
            overwrite=True,
        )
        metrics = doc["metrics"]
        ari = f"{adjusted_rand(est.labels_img_, truth):.2f}" if truth is not None else "-"
        rows.append(
            [method, str(k), f"{fit_seconds:.1f}"]
            + [shown(metrics, m) for m in summary_metrics]
            + [ari, f"{method}-{k}/report.html"]
        )
        print(f"  {method:<20} {k:>5} parcels  fit {fit_seconds:6.1f} s  {summary_line(metrics)}")
    header = [
        "method",
        "parcels",
        "fit (s)",
        *(m.label for m in summary_metrics),
        "ARI to truth",
        "report",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    print()
    print(table)
    print(f"\noutputs in {out.resolve()}: open {out.resolve() / rows[0][-1]} in a browser")
    return 0
