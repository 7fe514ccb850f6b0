"""Preprocessing to the signals store, next to nilearn's MultiNiftiMasker (issue 3's numbers).

``python benchmarks/bench_signals.py [--subjects 10] [--volumes 300]``: 2 mm synthetic runs (written once under
``results/data``), EPI mask, 6 mm smoothing, detrend + zscore_sample. daskparcel writes its signals store (the
voxel-major transpose, on disk); nilearn's ``MultiNiftiMasker(...).fit_transform`` returns the arrays in memory.
Each in its own process; peak RSS summed over the process tree.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import GIB, fmt, markdown_table, measure, save
from run import synthetic_input

PARAMS = {"smoothing_fwhm": 6.0, "detrend": True, "standardize": "zscore_sample"}


def daskparcel_signals(imgs: list[str]) -> dict[str, Any]:
    """Mask (EPI, all runs), smooth, clean and write the signals store; the time of each step."""
    import numpy as np

    from daskparcel.estimator import Parcellations
    from daskparcel.ingest.resolve import resolve_runs
    from daskparcel.preprocessing.pipeline import write_signals

    start = time.perf_counter()
    est = Parcellations(method="kmeans", **PARAMS)
    runs = resolve_runs(imgs)
    affine = np.asarray(runs[0].data.attrs["affine"])
    mask = est._mask(runs, affine)
    t_mask = time.perf_counter() - start
    cache = Path(tempfile.mkdtemp(prefix="bench-signals-"))
    try:
        store = write_signals(runs, mask, affine, est._clean_params(None), cache)
        total = time.perf_counter() - start
        return {
            "seconds": total,
            "mask_s": t_mask,
            "voxels": int(mask.sum()),
            "time_points": int(store.signals().sizes["time"]),
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def nilearn_signals(imgs: list[str]) -> dict[str, Any]:
    """nilearn's MultiNiftiMasker with the same parameters (the EPI mask of all runs)."""
    from nilearn.maskers import MultiNiftiMasker

    start = time.perf_counter()
    signals = MultiNiftiMasker(mask_strategy="epi", **PARAMS).fit_transform(imgs)
    return {
        "seconds": time.perf_counter() - start,
        "voxels": int(signals[0].shape[1]),
        "time_points": sum(s.shape[0] for s in signals),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    cohort = synthetic_input(2, args.subjects, args.volumes)
    imgs = cohort.imgs if isinstance(cohort.imgs, list) else [cohort.imgs]
    rows = []
    for library, function in (("daskparcel", "daskparcel_signals"), ("nilearn", "nilearn_signals")):
        m = measure(__file__, function, {"imgs": imgs}, timeout_s=args.timeout, kill_above=22 * GIB)
        result = m.result or {}
        rows.append({
            "library": library, "status": m.status, "seconds": result.get("seconds"),
            "peak_gib": m.peak_rss / GIB, "voxels": result.get("voxels"), "time_points": result.get("time_points"),
        })  # fmt: skip
        print(rows[-1], flush=True)
    columns = [
        ("library", "library", fmt("")), ("status", "status", fmt("")), ("seconds", "time (s)", fmt(".1f")),
        ("peak_gib", "peak RSS, all processes (GiB)", fmt(".2f")), ("voxels", "voxels", fmt("")),
        ("time_points", "time points", fmt("")),
    ]  # fmt: skip
    table = (
        f"## signals: {cohort.name} (EPI mask, 6 mm, detrend, zscore_sample)\n\n"
        + markdown_table(rows, columns)
    )
    if all(r["seconds"] for r in rows):
        table += f"\n\nratio daskparcel / nilearn: time {rows[0]['seconds'] / rows[1]['seconds']:.2f}, memory {rows[0]['peak_gib'] / rows[1]['peak_gib']:.2f}"
    save("signals", {"rows": rows, "params": PARAMS}, table)
    print(table)


if __name__ == "__main__":
    main()
