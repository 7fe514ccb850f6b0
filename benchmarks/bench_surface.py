"""nilearn's surface ``Parcellations`` against daskparcel on one synthetic fsaverage5 run (20,484 vertices).

Usage::

    python benchmarks/bench_surface.py                          # ward 100 and kmeans 50, 100 time points
    python benchmarks/bench_surface.py --configs ward100 rena100 --volumes 200

Each configuration runs in its own Python process (nothing cached or compiled by an earlier one): nilearn's
fit, then daskparcel's first fit (cold: numba compilation and the signals store included) and a second fit in a
fresh store (warm: compiled code, the same work). Prints fit seconds, compression R^2 (numpy, on the run's
vertices) and the ARI to the planted parcellation (50 planted parcels) for each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

CONFIGS = {
    "ward100": ("ward", 100),
    "kmeans50": ("kmeans", 50),
    "hierarchical_kmeans50": ("hierarchical_kmeans", 50),
    "rena100": ("rena", 100),
    "complete100": ("complete", 100),
    "average100": ("average", 100),
}
PLANTED = 50


def _r2(data: np.ndarray, labels: np.ndarray) -> float:
    x = data.astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    codes = np.unique(labels, return_inverse=True)[1].ravel()
    sums = np.zeros((codes.max() + 1, x.shape[1]))
    np.add.at(sums, codes, x)
    means = sums / np.bincount(codes)[:, None]
    return float(1 - ((x - means[codes]) ** 2).sum() / (x**2).sum())


def _vertices(img: object) -> np.ndarray:
    return np.concatenate([np.asarray(img.data.parts[p]) for p in ("left", "right")])  # type: ignore[attr-defined]


def measure(config: str, n_volumes: int) -> dict[str, float]:
    """One configuration, in this process: times, R^2 and ARI of nilearn and daskparcel."""
    from nilearn.regions import Parcellations as NilearnParcellations
    from sklearn.metrics import adjusted_rand_score

    from daskparcel import Parcellations
    from daskparcel.datasets_surface import planted_surface_parcellation, synthetic_surface_run

    method, k = CONFIGS[config]
    run = synthetic_surface_run(n_volumes, n_parcels=PLANTED)
    data, truth = _vertices(run), _vertices(planted_surface_parcellation(PLANTED))
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnParcellations(method=method, n_parcels=k, smoothing_fwhm=None).fit(run)
    out["nilearn_s"] = time.perf_counter() - t0
    labels = _vertices(theirs.labels_img_)
    out["nilearn_r2"], out["nilearn_ari"] = _r2(data, labels), adjusted_rand_score(truth, labels)
    for name in ("cold", "warm"):
        with tempfile.TemporaryDirectory() as store:
            t0 = time.perf_counter()
            ours = Parcellations(method=method, n_parcels=k, smoothing_fwhm=None, store=store)
            ours.fit(run)
            out[f"daskparcel_{name}_s"] = time.perf_counter() - t0
    labels = _vertices(ours.labels_img_)
    out["daskparcel_r2"], out["daskparcel_ari"] = (
        _r2(data, labels),
        adjusted_rand_score(truth, labels),
    )
    out["daskparcel_k"] = float(len(np.unique(labels)))
    return out


def main(argv: list[str] | None = None) -> None:
    """Run each configuration in a child process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["ward100", "kmeans50"], choices=CONFIGS)
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.volumes)))
        return
    print(f"one synthetic fsaverage5 run, 20484 vertices x {args.volumes} time points")
    print(
        "| config | nilearn s | daskparcel s (cold / warm) | R^2 nilearn | R^2 daskparcel "
        "| ARI nilearn | ARI daskparcel |"
    )
    print("|---|---|---|---|---|---|---|")
    for config in args.configs:
        child = subprocess.run(
            [sys.executable, __file__, "--child", config, "--volumes", str(args.volumes)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"| {config} | {r['nilearn_s']:.1f} | {r['daskparcel_cold_s']:.1f} / "
            f"{r['daskparcel_warm_s']:.1f} | {r['nilearn_r2']:.4f} | {r['daskparcel_r2']:.4f} | "
            f"{r['nilearn_ari']:.3f} | {r['daskparcel_ari']:.3f} |"
        )


if __name__ == "__main__":
    main()
