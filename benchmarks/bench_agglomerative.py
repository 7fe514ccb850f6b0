"""Time daskparcel's compiled ward/complete/average against scikit-learn's, labels compared.

Usage::

    python benchmarks/bench_agglomerative.py                 # small: a cropped 2 mm MNI mask
    python benchmarks/bench_agglomerative.py --size 2mm      # one whole 2 mm subject (~235k voxels)
    python benchmarks/bench_agglomerative.py --linkage ward complete --features 200 --clusters 1000

Features are random, spatially smooth (a Gaussian-smoothed noise volume per component), float32.
Prints one table row per linkage: voxels, features, our time, scikit-learn's time, ratio, ARI.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy import ndimage


def _mask(size: str) -> np.ndarray:
    from nilearn.datasets import load_mni152_brain_mask

    mask = np.asarray(load_mni152_brain_mask(resolution=2).get_fdata()) > 0
    if size == "small":
        mask = mask[30:60, 40:70, 30:50]
        lab, _ = ndimage.label(mask)
        mask = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return mask


def _features(mask: np.ndarray, n_features: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((int(mask.sum()), n_features), dtype=np.float32)
    for f in range(n_features):
        vol = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma=2.0)
        out[:, f] = vol[mask]
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "2mm"], default="small")
    parser.add_argument("--features", type=int, default=None)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--linkage", nargs="+", default=["ward"])
    parser.add_argument("--no-sklearn", action="store_true", help="time only daskparcel")
    args = parser.parse_args(argv)

    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.image import grid_to_graph
    from sklearn.metrics import adjusted_rand_score

    from daskparcel.clustering.agglomerative import build_tree
    from daskparcel.clustering.connectivity import grid_connectivity

    mask = _mask(args.size)
    n_features = args.features or (200 if args.size == "2mm" else 50)
    x = _features(mask, n_features)
    # compile once outside the timings
    small = np.zeros((4, 4, 4), bool)
    small[1:3, 1:3, 1:3] = True
    for link in args.linkage:
        build_tree(np.random.default_rng(0).random((8, 2)), grid_connectivity(small), link)

    print(
        f"{'linkage':<9}{'voxels':>9}{'feat':>6}{'ours (s)':>10}{'sklearn (s)':>13}{'ratio':>8}{'ARI':>6}"
    )
    for link in args.linkage:
        t0 = time.perf_counter()
        tree = build_tree(x, grid_connectivity(mask), link)
        ours = tree.cut(args.clusters)
        t_ours = time.perf_counter() - t0
        t_ref = float("nan")
        ari = float("nan")
        if not args.no_sklearn:
            t0 = time.perf_counter()
            conn = grid_to_graph(*mask.shape, mask=mask)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = AgglomerativeClustering(
                    n_clusters=args.clusters, linkage=link, connectivity=conn
                ).fit(x)
            t_ref = time.perf_counter() - t0
            ari = adjusted_rand_score(ref.labels_, ours)
        print(
            f"{link:<9}{x.shape[0]:>9}{n_features:>6}{t_ours:>10.2f}{t_ref:>13.2f}"
            f"{t_ours / t_ref:>8.3f}{ari:>6.2f}"
        )


if __name__ == "__main__":
    main()
