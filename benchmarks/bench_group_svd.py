"""Time the group SVD of a cohort's reduction: the fused range finder (a pass per power iteration) against the
two-pass one, on the same stored per-run components, features compared.

Usage::

    python benchmarks/bench_group_svd.py                       # 3 lazy 2 mm subjects x 100 volumes (plumbing)
    python benchmarks/bench_group_svd.py --subjects 40 --volumes 300
                                                               # the out-of-core cohort (its store is reused)

The signals store is the benchmarks' judge store of the cohort (``kmeans`` preprocessing: 10 mm smoothing,
``zscore_sample``), written once and shared with ``run.py --share-store``. The per-run components are computed
once (``reduce_runs``' first passes) on a LocalCluster of 2 workers x 1 thread x 1.5 GiB, as the out-of-core
suite's; then each finder runs on them with nilearn's 3 power iterations, whatever the number of columns. Prints
one row per finder: passes, time, peak RSS of all processes, and the largest principal angle to the other
finder's features; then one streaming read of the components.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


class PeakSampler:
    """Peak RSS of this process and all its descendants (``_measure.tree_rss``), sampled every 0.2 s."""

    def __init__(self) -> None:
        import psutil

        self.peak = 0
        self._me = psutil.Process()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from _measure import tree_rss

        while True:
            self.peak = max(self.peak, tree_rss(self._me))
            time.sleep(0.2)

    def reset(self) -> int:
        peak, self.peak = self.peak, 0
        return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--n-components", type=int, default=200)
    args = parser.parse_args()
    if args.subjects < 2:
        parser.error("--subjects must be >= 2: a single run has no group SVD")

    import dask
    import dask.array as da
    import scipy.linalg
    import zarr
    from _measure import GIB, RESULTS, capped_client, fmt, markdown_table
    from run import JUDGE, _signals_store, lazy_input

    import daskparcel.reduction as red

    sampler = PeakSampler()
    cluster = contextlib.ExitStack()
    cluster.enter_context(capped_client(4 * GIB))  # 2 workers x 1.5 GiB, as the out-of-core suite
    inp = lazy_input(2, args.subjects, args.volumes)
    store = _signals_store(
        inp.imgs, inp.mask, 10.0, "zscore_sample", str(JUDGE), keep_smoothed=True
    )
    print(f"{inp.name}: signals store {store.path}", flush=True)

    captured: dict[str, Any] = {}

    class Captured(Exception):
        """The per-run components are written: stop before reduce_runs' group step deletes them."""

    def capture(stacked: da.Array | list[Any], k: int, **kwargs: Any) -> Any:
        if kwargs.get("what", "group") != "group":  # a long run's own randomized SVD
            return two_pass(stacked, k, **kwargs)
        # the fused finder's input: the runs' zarr arrays side by side
        if isinstance(stacked, list):
            stacked = da.concatenate([da.from_zarr(a) for a in stacked], axis=1)
        captured["stacked"], captured["k"] = stacked, k
        raise Captured

    scratch_path = Path(tempfile.mkdtemp(dir=RESULTS, prefix="group-svd-"))
    atexit.register(shutil.rmtree, scratch_path, True)  # ~8 GB at 40 subjects, removed on any exit
    scratch = zarr.open_group(str(scratch_path), mode="w", zarr_format=3)
    two_pass, fused = red.passes_left_singular, red.stacked_svd
    red.passes_left_singular = red.stacked_svd = capture  # type: ignore[assignment]
    sampler.reset()
    t0 = time.perf_counter()
    try:
        red.reduce_runs(store.run_signals("cleaned"), scratch, n_components=args.n_components)
    except Captured:
        pass
    finally:
        red.passes_left_singular, red.stacked_svd = two_pass, fused  # type: ignore[assignment]
    per_run_s, per_run_peak = time.perf_counter() - t0, sampler.reset()
    stacked, k = captured["stacked"], captured["k"]
    print(
        f"per-run components: {stacked.shape[0]} voxels x {stacked.shape[1]} columns, "
        f"{per_run_s:.1f} s, peak {per_run_peak / GIB:.2f} GiB",
        flush=True,
    )
    seed = red._seed(0, 2**31 - 1)
    rows, features = [], {}
    finders = {
        "two-pass (QR)": (
            8,
            lambda: two_pass(stacked, k, n_power_iter=3, seed=seed, what="group", scratch=scratch),
        ),
        "fused": (4, lambda: fused(stacked, k, n_power_iter=3, seed=seed, scratch=scratch)[0]),
    }
    for name, (passes, finder) in finders.items():
        t = time.perf_counter()
        with dask.config.set({"daskparcel.reduction.exact-max-columns": 1}):
            features[name] = finder()
        rows.append(
            {
                "finder": name,
                "passes": passes,
                "time": time.perf_counter() - t,
                "peak": sampler.reset() / GIB,
            }
        )
        print(f"  {name}: {rows[-1]['time']:.1f} s", flush=True)
    angle = float(np.degrees(scipy.linalg.subspace_angles(*features.values()).max()))
    for row in rows:
        row["angle"] = angle
    t = time.perf_counter()
    dask.compute(stacked.sum())
    read_s = time.perf_counter() - t
    cluster.close()
    print()
    print(
        markdown_table(
            rows,
            [
                ("finder", "group SVD finder", fmt("")),
                ("passes", "passes", fmt("d")),
                ("time", "time (s)", fmt(".1f")),
                ("peak", "peak, all processes (GiB)", fmt(".2f")),
                ("angle", "largest angle to the other (deg)", fmt(".2g")),
            ],
        )
    )
    print(f"\none read of the stacked components: {read_s:.1f} s; per-run step: {per_run_s:.1f} s")


if __name__ == "__main__":
    main()
