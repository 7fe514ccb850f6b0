"""The out-of-core CIFTI cohort: fs_LR-size synthetic dense time series, every method, under a 4 GiB cap.

Usage::

    python benchmarks/bench_cifti.py                    # 40 subjects x 1,200 frames x 92,484 grayordinates
    python benchmarks/bench_cifti.py --subjects 4 --configs kmeans50      # project the full run
    python benchmarks/bench_cifti.py --quick            # 2 subjects x 100 frames, kmeans 50 and ward 400

The runs are lazy (:func:`daskparcel.datasets_cifti.synthetic_cifti_cohort`): generated block by block while the
signals pass reads them, no ``.dtseries.nii`` (40 x 1,200 frames are 17 GB of float32), with the fs_LR sizes of
HCP's grayordinates (icosphere meshes of 40,962 vertices with a medial wall left out, 34,729 kept per
hemisphere, and two subcortical structures of 11,513 voxels: 92,484 grayordinates) and one planted
parcellation (``--planted`` parcels, each connected within one structure).

Every configuration is fitted in its own process (``_measure.measure``: the summed RSS of the process and its
dask workers sampled every 50 ms) on a LocalCluster of 2 workers x 1.5 GiB plus 1 GiB kept for the client
(``_measure.capped_client``: a 4 GiB cap). All configurations use the same preprocessing (no smoothing,
z-scored per run, as a cohort of runs with other baselines needs) and share one signals store: the first one
writes it (signals) and its reduction, the others reuse both, as a refit would. Per configuration: status,
fit wall and its steps (the estimator's ``timings_``), peak RSS of all processes, compression R^2 on a fixed
sample (the first ``--r2-runs`` runs, every grayordinate; read after the fit, in the same process) and the ARI
to the planted parcellation. Prints a Markdown table, saves ``results/cifti-<time>.{json,md}`` and deletes the
store unless ``--keep-store``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import (
    GIB,
    RESULTS,
    capped_client,
    client_reserve,
    dir_size,
    fmt,
    markdown_table,
    measure,
    save,
    seconds,
    timed,
)

#: name -> (method, n_parcels)
CONFIGS = {
    "kmeans50": ("kmeans", 50),
    "hkmeans50": ("hierarchical_kmeans", 50),
    "ward400": ("ward", 400),
    "rena400": ("rena", 400),
    "complete400": ("complete", 400),
    "average400": ("average", 400),
}
DEFAULT = ["kmeans50", "hkmeans50", "ward400", "rena400"]
#: fs_LR size: icosphere meshes of 40,962 vertices (34,729 kept each) and two subcortical balls of 11,513 voxels
SIZE = {"subdivisions": 6, "subcortical_radius": 14.0}
STANDARDIZE = "zscore_sample"


def cohort(n_subjects: int, n_volumes: int, planted: int) -> Any:
    """The lazy synthetic cohort at fs_LR size (the same arguments give the same runs and store)."""
    from daskparcel.datasets_cifti import synthetic_cifti_cohort

    return synthetic_cifti_cohort(n_subjects, n_volumes, n_parcels=planted, random_state=0, **SIZE)  # type: ignore[arg-type]


def fit_cifti(
    method: str,
    n_parcels: int,
    n_subjects: int,
    n_volumes: int,
    planted: int,
    store: str,
    memory_cap: int,
    n_workers: int,
    r2_runs: int,
) -> dict[str, Any]:
    """The child: fit one configuration on the capped cluster, then its R^2 on a sample and its ARI."""
    import numpy as np
    import xarray as xr
    from sklearn.metrics import adjusted_rand_score

    from daskparcel import Parcellations
    from daskparcel.metrics import compression_r2

    phases: dict[str, list[float]] = {}
    with timed(phases, "cohort"):
        data = cohort(n_subjects, n_volumes, planted)
    with capped_client(memory_cap, n_workers) as client:
        est = Parcellations(
            method=method, n_parcels=n_parcels, smoothing_fwhm=None, standardize=STANDARDIZE,
            random_state=0, store=store, client=client,
        )  # fmt: skip
        with timed(phases, "fit"):
            est.fit(data.runs)
        labels = np.asarray(est.labels_.values)
        with timed(phases, "r2"):
            sample = est.store_.run_signals("cleaned")[:r2_runs]
            r2 = float(compression_r2(xr.concat(sample, dim="time"), labels))
    return {
        "fit_s": seconds(phases, "fit"),
        "r2_s": seconds(phases, "r2"),
        "timings": {k: float(v) for k, v in est.timings_.items()},
        "n_parcels": len(np.unique(labels[labels > 0])),
        "r2": r2,
        "ari": float(adjusted_rand_score(data.labels, labels)),
        "grayordinates": len(labels),
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=None, help="default 40 (--quick: 2)")
    parser.add_argument("--volumes", type=int, default=None, help="default 1200 (--quick: 100)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--quick", action="store_true", help="2 x 100 frames, kmeans50 and ward400")
    parser.add_argument("--planted", type=int, default=100, help="planted parcels (default 100)")
    parser.add_argument("--r2-runs", type=int, default=4, help="runs of the R^2 sample (default 4)")
    parser.add_argument("--cap-gib", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-gib", type=float, default=6.0, help="kill a child above this RSS")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    parser.add_argument("--store", type=Path, default=RESULTS / "work" / "cifti-store")
    parser.add_argument("--keep-store", action="store_true")
    opts = parser.parse_args(argv)
    n_subjects = opts.subjects or (2 if opts.quick else 40)
    n_volumes = opts.volumes or (100 if opts.quick else 1200)
    names = opts.configs or (["kmeans50", "ward400"] if opts.quick else DEFAULT)
    cap = int(opts.cap_gib * GIB)
    data_gib = n_subjects * n_volumes * 92_484 * 4 / GIB
    print(
        f"cifti: {n_subjects} subjects x {n_volumes} frames x 92,484 grayordinates (lazy): {data_gib:.1f} "
        f"GiB of float32, cap {opts.cap_gib:g} GiB ({opts.workers} workers)",
        flush=True,
    )
    rows = []
    for name in names:
        method, k = CONFIGS[name]
        print(f"  {name:<12}", end=" ", flush=True)
        args = {
            "method": method, "n_parcels": k, "n_subjects": n_subjects, "n_volumes": n_volumes,
            "planted": opts.planted, "store": str(opts.store), "memory_cap": cap,
            "n_workers": opts.workers, "r2_runs": min(opts.r2_runs, n_subjects),
        }  # fmt: skip
        m = measure(
            __file__, "fit_cifti", args, timeout_s=opts.timeout, memory_cap=cap,
            kill_above=int(opts.kill_gib * GIB),
        )  # fmt: skip
        steps = m.result.get("timings", {})
        row = {
            "config": name,
            "status": m.status,
            "wall_s": m.wall_s,
            "fit_s": m.result.get("fit_s"),
            **{f"{s}_s": steps.get(s) for s in ("signals", "reduction", "clustering")},
            # the rest of the fit: resolving the runs, the geometry's checks, the client-side bookkeeping
            "other_s": m.result["fit_s"]
            - sum(steps.get(s, 0.0) for s in ("mask", "signals", "reduction", "clustering"))
            if steps
            else None,
            "peak_gib": m.peak_rss / GIB,
            "fit_peak_gib": m.phase_peaks.get("fit", 0) / GIB,
            "over_cap": m.over_cap,
            "k": m.result.get("n_parcels"),
            "r2": m.result.get("r2"),
            "r2_s": m.result.get("r2_s"),
            "ari": m.result.get("ari"),
            "error": m.error,
        }
        rows.append(row)
        print(
            f"{m.status}: fit {fmt('.0f')(row['fit_s'])} s, peak {row['peak_gib']:.2f} GiB, "
            f"R^2 {fmt('.4f')(row['r2'])}, ARI {fmt('.3f')(row['ari'])}",
            flush=True,
        )
        if m.error:
            print("    " + m.error.replace("\n", "\n    "), flush=True)
    store_gib = dir_size(opts.store) / GIB if opts.store.exists() else 0.0
    if not opts.keep_store:
        shutil.rmtree(opts.store, ignore_errors=True)
    reserve = client_reserve(cap)
    lines = [
        "## cifti",
        "",
        f"{n_subjects} lazy synthetic CIFTI runs x {n_volumes} frames x 92,484 grayordinates (fs_LR size, "
        f"{data_gib:.1f} GiB of float32, {opts.planted} planted parcels), {time.strftime('%Y-%m-%d')}. "
        f"Each configuration in its own process on a LocalCluster of {opts.workers} workers x "
        f"{(cap - reserve) / opts.workers / GIB:.2f} GiB + {reserve / GIB:.2f} GiB for the client "
        f"({opts.cap_gib:g} GiB cap; 'peak': the sampled RSS of all processes, 'over cap': it passed the "
        "cap). No smoothing, z-scored per run; one signals store "
        f"({store_gib:.1f} GiB) shared: the first configuration writes it and its reduction, the others "
        f"reuse them. R^2: compression R^2 on the first {min(opts.r2_runs, n_subjects)} runs' signals "
        "(every grayordinate); ARI: to the planted parcellation.",
        "",
        markdown_table(
            rows,
            [
                ("config", "config", fmt("")),
                ("status", "status", fmt("")),
                ("fit_s", "fit (s)", fmt(".0f")),
                ("signals_s", "signals (s)", fmt(".0f")),
                ("reduction_s", "reduction (s)", fmt(".0f")),
                ("clustering_s", "clustering (s)", fmt(".1f")),
                ("other_s", "other (s)", fmt(".0f")),
                ("peak_gib", "peak RSS (GiB)", fmt(".2f")),
                ("over_cap", "over cap", fmt("")),
                ("k", "K", fmt("")),
                ("r2", "R^2", fmt(".4f")),
                ("ari", "ARI", fmt(".3f")),
            ],
        ),
    ]
    doc = {
        "subjects": n_subjects,
        "volumes": n_volumes,
        "planted": opts.planted,
        "cap_gib": opts.cap_gib,
        "workers": opts.workers,
        "store_gib": store_gib,
        "rows": rows,
    }
    json_path, _ = save("cifti", doc, "\n".join(lines))
    print("\n".join(lines))
    print(f"\nsaved {json_path}")


if __name__ == "__main__":
    main()
