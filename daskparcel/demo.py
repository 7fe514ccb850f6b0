"""``daskparcel demo``: the parcellation tour on data made offline.

It writes a synthetic 4 mm MNI run (nilearn's example size: 50x59x50, 168 volumes) with a planted parcellation,
converts it to a store, and shows what was written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from daskparcel.store import check_output_path

logger = logging.getLogger(__name__)


def run_demo(
    out: Path, *, resolution: int = 4, quick: bool = False, inputs: list[str] | None = None
) -> int:
    """Run the demo into ``out``; returns the exit code."""
    from daskparcel import datasets
    from daskparcel.ingest.convert import convert, print_progress

    out = Path(out)
    if out.exists() and not out.is_dir():
        check_output_path(out)
    out.mkdir(parents=True, exist_ok=True)
    if inputs:
        paths = [Path(p) for p in inputs]
        truth = None
        print(f"demo on your data: {', '.join(map(str, paths))}")
    else:
        t0 = time.perf_counter()
        n_volumes = 60 if quick else 168
        paths, truth = datasets.write_synthetic_nifti(out / "data", 1, resolution, n_volumes)
        print(
            f"synthetic {resolution} mm MNI run written to {paths[0]} ({time.perf_counter() - t0:.1f} s)"
        )
    result = convert(paths, out / "run.zarr", progress=print_progress)
    print(result.summary())
    if truth is not None:
        print(f"ground-truth parcellation: {out / 'data' / 'ground_truth_labels.nii.gz'}")
    return 0
