"""Side-by-side benchmarks of daskparcel's and nilearn's ``Parcellations`` (issue 9).

Usage::

    python benchmarks/run.py --suite seed            # the real rapidtide scan + a 4 mm synthetic run
    python benchmarks/run.py --suite scale           # 2 mm cohorts of 1, 10, 40 subjects x 300 volumes
    python benchmarks/run.py --suite outofcore       # 40 subjects under a 4 GiB cap (2 workers x 1.5 GiB + 1 GiB client)
    python benchmarks/run.py --suite io              # one streaming read of the signals store
    python benchmarks/run.py --suite workers         # 10 subjects, kmeans 50: local default, 1 and 2 workers
    python benchmarks/run.py --suite scaling         # 1, 2, 4, 8, 16 pinned cores: threads and processes,
                                                     # per step speed-up and efficiency, weak scaling
    python benchmarks/run.py --suite slurm           # 10 subjects, kmeans 50: local default vs 2 SLURM jobs x 1 core
                                                     # (needs a running SLURM: ../shared/slurm/start.sh)
    python benchmarks/run.py --suite outofcore --lazy --share-store
                                                     # the same, lazy (no NIfTI: 40 x 1 GB .nii.gz need disk)
    python benchmarks/run.py --suite all --quick     # every suite, small, to check the plumbing

Every configuration runs in its own process (see ``_measure.py``): wall times of fit and transform as the child
measures them, peak RSS summed over the child and all its descendants (dask workers included). Both libraries
get the same images, the same mask file and the same parameters. Their labels images are scored by one judge
(:func:`judge`): compression R^2 (``daskparcel.metrics.compression_r2``) of the cleaned signals of the input,
smoothed / masked / standardized with the configuration's parameters, computed once per input and parameters
by daskparcel's signals store (the preprocessing is tested equal to nilearn's; on single-run inputs the judge
also scores nilearn's own ``NiftiMasker`` signals and reports the largest difference). Results:
``benchmarks/results/<suite>-<time>.{json,md}``; the synthetic NIfTI data are written once to
``benchmarks/results/data`` and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from _measure import (
    GIB,
    RESULTS,
    Measurement,
    capped_client,
    client_reserve,
    fmt,
    markdown_table,
    measure,
    save,
    seconds,
    timed,
)

SCRIPT = Path(__file__).resolve()
DATA = RESULTS / "data"
WORK = RESULTS / "work"
JUDGE = RESULTS / "judge"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "rapidtide"
REAL_SCAN = REAL / "sub-RAPIDTIDETEST.nii.gz"
REAL_MASK = REAL / "sub-RAPIDTIDETEST_brainmask.nii.gz"


@dataclasses.dataclass(frozen=True)
class Config:
    """One parameter set of ``Parcellations``, the same for both libraries."""

    name: str
    method: str
    n_parcels: int
    smoothing_fwhm: float
    standardize: bool | str = False
    scaling: bool = False
    after: int | None = None  # fit this many parcels first, in the same process and cache

    @property
    def preprocessing(self) -> tuple[float, bool | str]:
        return (self.smoothing_fwhm, self.standardize)


# nilearn's example (plot_data_driven_parcellations): ward and rena on lightly smoothed raw signals, kmeans on
# heavily smoothed z-scored ones; ward 2000 is fitted after ward 1000 with the same cache.
CONFIGS = {
    c.name: c
    for c in (
        Config("ward1000", "ward", 1000, 2.0),
        Config("ward2000", "ward", 2000, 2.0, after=1000),
        Config("kmeans50", "kmeans", 50, 10.0, "zscore_sample"),
        Config("hkmeans50", "hierarchical_kmeans", 50, 10.0, "zscore_sample"),
        Config("rena5000", "rena", 5000, 2.0, scaling=True),
    )
}
SEED = ["ward1000", "ward2000", "kmeans50", "hkmeans50", "rena5000"]
SCALE = ["ward1000", "kmeans50", "hkmeans50", "rena5000"]


@dataclasses.dataclass(frozen=True)
class Input:
    """Images (one path, or a list for a cohort) and the mask file given to both libraries."""

    name: str
    imgs: str | list[str]
    mask: str

    @property
    def paths(self) -> list[str]:
        return [self.imgs] if isinstance(self.imgs, str) else list(self.imgs)


# ------------------------------------------------------------------------------------------ inputs
def real_input() -> Input:
    """The rapidtide scan (64x64x29x260) with its brain mask."""
    if not REAL_SCAN.exists():
        raise SystemExit(f"{REAL_SCAN}: not found; the seed suite needs the real data folder")
    return Input("rapidtide", str(REAL_SCAN), str(REAL_MASK))


LAZY = "synthetic:"


def lazy_input(resolution: int, n_subjects: int, n_volumes: int) -> Input:
    """A synthetic cohort given to daskparcel as lazy Datasets (``datasets.synthetic_cohort``): generated
    block by block while it is read, so a cohort larger than the disk's free space needs no NIfTI files
    (nilearn cannot take it)."""
    spec = f"{LAZY}{resolution}:{n_subjects}:{n_volumes}"
    return Input(f"mni{resolution}mm {n_subjects}x{n_volumes} lazy", spec, _mask_file(resolution))


def _lazy_spec(imgs: str | list[str]) -> tuple[int, int, int] | None:
    """(resolution, subjects, volumes) of a ``synthetic:`` spec, or None for paths."""
    if isinstance(imgs, str) and imgs.startswith(LAZY):
        resolution, n_subjects, n_volumes = (int(v) for v in imgs[len(LAZY) :].split(":"))
        return resolution, n_subjects, n_volumes
    return None


def _resolve(imgs: str | list[str]) -> Any:
    """What a child gives ``fit``: the paths, or the lazy Datasets of a ``synthetic:`` spec."""
    spec = _lazy_spec(imgs)
    if spec is None:
        return imgs
    from daskparcel import datasets

    resolution, n_subjects, n_volumes = spec
    return datasets.synthetic_cohort(n_subjects, resolution, n_volumes)


def _mask_file(resolution: int) -> str:
    """The MNI brain mask at ``resolution``, written once under ``results/data``."""
    import nibabel as nib

    from daskparcel import datasets

    mask = DATA / f"mask-mni{resolution}mm.nii.gz"
    if not mask.exists():
        mask.parent.mkdir(parents=True, exist_ok=True)
        nib.save(datasets.brain_mask(resolution), mask)
    return str(mask)


def synthetic_input(resolution: int, n_subjects: int, n_volumes: int) -> Input:
    """A synthetic cohort on an MNI grid, written once under ``results/data`` (subjects are reused by larger
    cohorts of the same volumes), with the MNI brain mask written beside it."""
    from daskparcel import datasets

    folder = DATA / f"mni{resolution}mm-t{n_volumes}"
    todo = [
        s for s in range(1, n_subjects + 1) if not (folder / f"sub-{s:02d}_bold.nii.gz").exists()
    ]
    if todo:
        print(f"writing {len(todo)} synthetic subject(s) into {folder} ...", flush=True)
    paths, _ = datasets.write_synthetic_nifti(folder, n_subjects, resolution, n_volumes)
    imgs: str | list[str] = str(paths[0]) if n_subjects == 1 else [str(p) for p in paths]
    return Input(f"mni{resolution}mm {n_subjects}x{n_volumes}", imgs, _mask_file(resolution))


# ------------------------------------------------------------------- child processes (one a run)
def _materialise(signals: Any) -> list[Any]:
    import numpy as np

    items = signals if isinstance(signals, list) else [signals]
    return [np.asarray(item) for item in items]


def _n_parcels(labels_img: Any) -> int:
    import numpy as np

    values = np.unique(np.asarray(labels_img.dataobj))
    return int(np.sum(values > 0))


def fit_nilearn(imgs: str | list[str], mask: str, config: dict[str, Any], labels_out: str) -> dict:
    """Fit and transform with nilearn's ``Parcellations`` (child process)."""
    import tempfile
    import warnings

    from nilearn.regions import Parcellations

    warnings.simplefilter("ignore")
    cfg = Config(**config)
    phases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="nilearn-cache-", dir=WORK) as cache:

        def make(n_parcels: int) -> Any:
            return Parcellations(
                method=cfg.method, n_parcels=n_parcels, mask=mask or None, random_state=0,
                smoothing_fwhm=cfg.smoothing_fwhm, standardize=cfg.standardize, scaling=cfg.scaling,
                memory=cache if cfg.after else None, memory_level=1 if cfg.after else 0,
            )  # fmt: skip

        if cfg.after:
            with timed(phases, "fit_first"):
                make(cfg.after).fit(imgs)
        est = make(cfg.n_parcels)
        with timed(phases, "fit"):
            est.fit(imgs)
        with timed(phases, "transform"):
            _materialise(est.transform(imgs))
    est.labels_img_.to_filename(labels_out)
    return {
        "fit_s": seconds(phases, "fit"),
        "transform_s": seconds(phases, "transform"),
        "n_parcels": _n_parcels(est.labels_img_),
        "phases": phases,
    }


def fit_daskparcel(
    imgs: str | list[str],
    mask: str,
    config: dict[str, Any],
    labels_out: str,
    store: str,
    memory_cap: int | None = None,
    n_workers: int = 2,
) -> dict:
    """Fit and transform with daskparcel's ``Parcellations`` (child process); with ``memory_cap``, on a
    LocalCluster of ``n_workers`` whose memory limits sum to the cap."""
    from daskparcel import Parcellations

    cfg = Config(**config)
    imgs = _resolve(imgs)
    phases: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(capped_client(memory_cap, n_workers)) if memory_cap else None

        def make(n_parcels: int) -> Any:
            return Parcellations(
                method=cfg.method, n_parcels=n_parcels, mask=mask or None, random_state=0,
                smoothing_fwhm=cfg.smoothing_fwhm, standardize=cfg.standardize, scaling=cfg.scaling,
                store=store, client=client,
            )  # fmt: skip

        if cfg.after:
            with timed(phases, "fit_first"):
                make(cfg.after).fit(imgs)
        est = make(cfg.n_parcels)
        with timed(phases, "fit"):
            est.fit(imgs)
        with timed(phases, "transform"):
            _materialise(est.transform(imgs))
    est.labels_img_.to_filename(labels_out)
    return {
        "fit_s": seconds(phases, "fit"),
        "transform_s": seconds(phases, "transform"),
        "n_parcels": _n_parcels(est.labels_img_),
        "timings": est.timings_,
        "phases": phases,
    }


def fit_on_cluster(
    imgs: str | list[str],
    mask: str,
    config: dict[str, Any],
    store: str,
    n_workers: int,
    threads_per_worker: int,
) -> dict:
    """Fit on the local default (``n_workers=0``) or on a LocalCluster of worker processes (child process);
    the peak RSS of each worker (its own high-water mark, :func:`daskparcel.runtime.peak_rss`)."""
    from daskparcel import Parcellations
    from daskparcel.testing import peak_rss

    cfg = Config(**config)
    phases: dict[str, list[float]] = {}
    worker_peaks: list[float] = []
    with contextlib.ExitStack() as stack:
        client = None
        if n_workers:
            from distributed import Client, LocalCluster

            from daskparcel.runtime.workers import set_worker_malloc

            set_worker_malloc()
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                    dashboard_address=None, memory_limit=0,
                )
            )  # fmt: skip
            client = stack.enter_context(Client(cluster))
        est = Parcellations(
            method=cfg.method, n_parcels=cfg.n_parcels, mask=mask, random_state=0,
            smoothing_fwhm=cfg.smoothing_fwhm, standardize=cfg.standardize, store=store, client=client,
        )  # fmt: skip
        with timed(phases, "fit"):
            est.fit(_resolve(imgs))
        if client is not None:
            peaks = client.run(peak_rss)
            worker_peaks = [v / GIB for v in peaks.values()]
    return {
        "fit_s": seconds(phases, "fit"),
        "timings": est.timings_,
        "worker_peaks_gib": worker_peaks,
        "client_peak_gib": peak_rss() / GIB,
        "phases": phases,
    }


def _signals_store(
    imgs: str | list[str],
    mask: str,
    smoothing_fwhm: float,
    standardize: bool | str,
    store: str,
    keep_smoothed: bool = False,
) -> Any:
    """daskparcel's signals store of the input (written once, reused); its ``smoothed`` pass is dropped, when
    cleaning wrote ``cleaned`` apart, to halve the disk it takes (the judge and the read benchmark use the cleaned
    signals only)."""
    import nibabel as nib
    import numpy as np

    from daskparcel.ingest.resolve import resolve_runs
    from daskparcel.preprocessing.pipeline import write_signals
    from daskparcel.store.signals import CleanParams

    runs = resolve_runs(_resolve(imgs))
    mask_array = np.asarray(nib.load(mask).dataobj) > 0
    affine = np.asarray(runs[0].data.attrs["affine"], dtype=float)
    params = CleanParams(smoothing_fwhm=smoothing_fwhm, standardize=standardize)
    signals = write_signals(runs, mask_array, affine, params, store)
    if signals.cleaned_is_stored and not keep_smoothed:
        shutil.rmtree(Path(signals.path) / "smoothed", ignore_errors=True)
    return signals


def _dense(labels: Any) -> Any:
    """Labels 1..K without gaps (0 stays 0), as the judge needs."""
    import numpy as np

    values, codes = np.unique(labels, return_inverse=True)
    return codes + (1 if values[0] > 0 else 0)


def judge(
    imgs: str | list[str],
    mask: str,
    smoothing_fwhm: float,
    standardize: bool | str,
    labels: dict[str, str],
    store: str,
    check_nilearn: bool = False,
    keep_smoothed: bool = False,
) -> dict:
    """Compression R^2 of each labels image on the input's cleaned signals (child process)."""
    import dask
    import nibabel as nib
    import numpy as np
    import xarray as xr

    from daskparcel.metrics import compression_r2

    signals = _signals_store(imgs, mask, smoothing_fwhm, standardize, store, keep_smoothed).signals(
        "cleaned"
    )
    mask_array = np.asarray(nib.load(mask).dataobj) > 0
    codes = {k: _dense(np.asarray(nib.load(p).dataobj)[mask_array]) for k, p in labels.items()}
    lazy = [compression_r2(signals, c, compute=False) for c in codes.values()]
    r2 = dict(zip(codes, (float(v) for v in dask.compute(*lazy)), strict=True))
    out: dict[str, Any] = {"r2": r2}
    if check_nilearn and isinstance(imgs, str):
        from nilearn.maskers import NiftiMasker

        masker = NiftiMasker(mask, smoothing_fwhm=smoothing_fwhm, standardize=standardize or None)
        reference = xr.DataArray(masker.fit_transform(imgs).T, dims=("voxel", "time"))
        r2_ref = {k: compression_r2(reference, c) for k, c in codes.items()}
        out["nilearn_signals_r2"] = r2_ref
        out["max_abs_diff"] = max(abs(r2[k] - float(r2_ref[k])) for k in r2)  # type: ignore[arg-type]
    return out


def read_signals(
    imgs: str | list[str], mask: str, smoothing_fwhm: float, standardize: bool | str, store: str
) -> dict:
    """One streaming read of the signals store (child process): ``signals().data.sum().compute()``."""
    import time

    start = time.perf_counter()
    store_ = _signals_store(imgs, mask, smoothing_fwhm, standardize, store)
    prepare = time.perf_counter() - start
    signals = store_.signals("cleaned")
    start = time.perf_counter()
    signals.data.sum().compute()
    read = time.perf_counter() - start
    size = signals.size * 4
    return {
        "read_s": read,
        "prepare_s": prepare,
        "gib": size / GIB,
        "gib_per_s": size / GIB / read,
        "n_voxels": signals.sizes["voxel"],
        "n_time": signals.sizes["time"],
    }


# ------------------------------------------------------------------------------------ the parent
@dataclasses.dataclass
class Options:
    quick: bool
    nilearn_timeout: float
    timeout: float
    kill_above: int
    memory_cap: int
    workers: int
    force_nilearn: bool
    share_store: bool = False
    lazy: bool = False

    def cohort(self, resolution: int, n_subjects: int, n_volumes: int) -> Input:
        """The synthetic input: NIfTI files, or lazy Datasets with ``--lazy``."""
        make = lazy_input if self.lazy else synthetic_input
        return make(resolution, n_subjects, n_volumes)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def _row(
    suite: str, inp: Input, cfg: Config, impl: str, m: Measurement, labels: Path
) -> dict[str, Any]:
    fit_peak = m.phase_peaks.get("fit")
    return {
        "suite": suite,
        "input": inp.name,
        "config": cfg.name + (f" (after {cfg.after})" if cfg.after else ""),
        "config_key": cfg.name,
        "impl": impl,
        "status": m.status,
        "fit_s": m.result.get("fit_s"),
        "transform_s": m.result.get("transform_s"),
        "peak_gib": m.peak_rss / GIB,
        "fit_peak_gib": fit_peak / GIB if fit_peak else None,
        "n_parcels": m.result.get("n_parcels"),
        "wall_s": m.wall_s,
        "over_cap": m.over_cap,
        "labels": str(labels) if m.ok else None,
        "timings": m.result.get("timings"),
        "error": m.error,
    }


def run_config(
    suite: str,
    inp: Input,
    cfg: Config,
    impl: str,
    opts: Options,
    *,
    memory_cap: int | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Fit + transform one configuration with one library in its own process; the table row."""
    WORK.mkdir(parents=True, exist_ok=True)
    name = _slug(f"{suite}-{inp.name}-{cfg.name}-{impl}{tag}")
    labels = RESULTS / "labels" / f"{name}.nii.gz"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.unlink(missing_ok=True)
    args: dict[str, Any] = {
        "imgs": inp.imgs,
        "mask": inp.mask,
        "config": dataclasses.asdict(cfg),
        "labels_out": str(labels),
    }
    print(f"  {impl:<10} {cfg.name:<10} {inp.name} {tag}", end=" ", flush=True)
    if impl == "nilearn":
        m = measure(
            SCRIPT, "fit_nilearn", args, timeout_s=opts.nilearn_timeout, kill_above=opts.kill_above
        )
    else:
        # shared: one store per input for every configuration and the judge (the signals store of a
        # preprocessing is written by the first configuration that needs it and reused, as in a refit)
        store = JUDGE if opts.share_store else WORK / name
        if not opts.share_store:
            shutil.rmtree(store, ignore_errors=True)
        args.update(store=str(store), memory_cap=memory_cap, n_workers=opts.workers)
        m = measure(
            SCRIPT,
            "fit_daskparcel",
            args,
            timeout_s=opts.timeout,
            memory_cap=memory_cap,
            kill_above=opts.kill_above,
        )
        if not opts.share_store:
            shutil.rmtree(store, ignore_errors=True)
    row = _row(suite, inp, cfg, impl + tag, m, labels)
    print(
        f"{m.status}: fit {fmt('.1f')(row['fit_s'])} s, peak {row['peak_gib']:.2f} GiB", flush=True
    )
    if m.error:
        print("    " + m.error.replace("\n", "\n    "), flush=True)
    return row


def score(rows: list[dict[str, Any]], inp: Input, opts: Options, check_nilearn: bool) -> None:
    """Add the judge's R^2 to the rows of one input (one judge process per preprocessing)."""
    groups: dict[tuple[float, bool | str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["input"] == inp.name and row["labels"]:
            groups.setdefault(CONFIGS[row["config_key"]].preprocessing, []).append(row)
    for (fwhm, standardize), members in groups.items():
        labels = {f"{r['config_key']}|{r['impl']}": r["labels"] for r in members}
        print(f"  judge      fwhm={fwhm} standardize={standardize} {inp.name}", flush=True)
        m = measure(
            SCRIPT,
            "judge",
            {
                "imgs": inp.imgs,
                "mask": inp.mask,
                "smoothing_fwhm": fwhm,
                "standardize": standardize,
                "labels": labels,
                "store": str(JUDGE),
                "check_nilearn": check_nilearn,
                "keep_smoothed": opts.share_store,
            },
            timeout_s=opts.timeout,
            kill_above=opts.kill_above,
        )
        if not m.ok:
            print("    judge failed: " + m.error, flush=True)
            continue
        for r in members:
            r["r2"] = m.result["r2"][f"{r['config_key']}|{r['impl']}"]
            if "max_abs_diff" in m.result:
                r["judge_vs_nilearn_signals"] = m.result["max_abs_diff"]


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """daskparcel / nilearn per (input, config): fit, transform and peak-memory ratios, R^2 difference."""
    out = []
    for row in rows:
        if row["impl"] != "daskparcel":
            continue
        ref = next(
            (
                r
                for r in rows
                if r["impl"] == "nilearn"
                and r["input"] == row["input"]
                and r["config"] == row["config"]
            ),
            None,
        )
        if ref is None:
            continue

        def ratio(key: str, ours: dict[str, Any] = row, theirs: dict[str, Any] = ref) -> Any:
            a, b = ours.get(key), theirs.get(key)
            ok = ours["status"] == "ok" and theirs["status"] == "ok"
            return a / b if ok and a is not None and b else None

        r2a, r2b = row.get("r2"), ref.get("r2")
        both = row["labels"] and ref["labels"]
        out.append(
            {
                "input": row["input"],
                "config": row["config"],
                "fit": ratio("fit_s"),
                "transform": ratio("transform_s"),
                "peak": ratio("peak_gib"),
                "r2_diff": r2a - r2b if r2a is not None and r2b is not None else None,
                "ari": _ari(row["labels"], ref["labels"]) if both else None,
                "nilearn_status": ref["status"],
            }
        )
    return out


def _ari(a: str, b: str) -> float:
    import nibabel as nib

    from daskparcel.metrics import adjusted_rand

    return adjusted_rand(nib.load(a), nib.load(b))


ROW_COLUMNS = [
    ("input", "input", fmt("")),
    ("config", "config", fmt("")),
    ("impl", "library", fmt("")),
    ("status", "status", fmt("")),
    ("fit_s", "fit (s)", fmt(".1f")),
    ("transform_s", "transform (s)", fmt(".2f")),
    ("peak_gib", "peak RSS (GiB)", fmt(".2f")),
    ("r2", "R^2", fmt(".4f")),
    ("n_parcels", "parcels", fmt("")),
]
RATIO_COLUMNS = [
    ("input", "input", fmt("")),
    ("config", "config", fmt("")),
    ("fit", "fit time", fmt(".2f")),
    ("transform", "transform time", fmt(".2f")),
    ("peak", "peak memory", fmt(".2f")),
    ("r2_diff", "R^2 diff", fmt("+.4f")),
    ("ari", "ARI", fmt(".3f")),
    ("nilearn_status", "nilearn", fmt("")),
]
NOTES = """\
- fit / transform: the child's own wall times; transform = transform of the fitted images, materialised
  (``np.asarray``) for daskparcel. Peak RSS: the whole process tree (child + dask workers), sampled every 50 ms,
  over the whole child (fit + transform + imports).
- R^2: compression R^2 (``daskparcel.metrics.compression_r2``) of the input's cleaned signals (the configuration's
  smoothing and standardize, per run) by their parcel means; one judge for both libraries: daskparcel's signals
  store, which equals nilearn's masker output (checked on single-run inputs: ``judge_vs_nilearn_signals`` in the
  JSON).
- ward2000 (after 1000): fitted after ward 1000 in the same process with the same cache (daskparcel: same
  ``store``, the merge tree is reused; nilearn: the same joblib ``memory``, memory_level=1, as in nilearn's
  example); the time is the 2000-parcel fit's own.
- ratios are daskparcel / nilearn (below 1: daskparcel is faster / smaller); R^2 diff = daskparcel - nilearn;
  ARI: adjusted Rand index between the two labels images (1 = the same parcellation)."""


def report(suite: str, rows: list[dict[str, Any]], extra: str = "") -> None:
    """Print and save the tables of a suite."""
    parts = [f"## {suite}", "", markdown_table(rows, ROW_COLUMNS)]
    table = ratios(rows)
    if table:
        parts += ["", "daskparcel / nilearn:", "", markdown_table(table, RATIO_COLUMNS)]
    if extra:
        parts += ["", extra]
    checks = [r["judge_vs_nilearn_signals"] for r in rows if "judge_vs_nilearn_signals" in r]
    if checks:
        parts += [
            "",
            "Judge check: largest |R^2 on the judge's signals - R^2 on nilearn's NiftiMasker signals| = "
            f"{max(checks):.1e}.",
        ]
    parts += ["", NOTES]
    publish(suite, {"rows": rows, "ratios": table}, parts)


def publish(suite: str, doc: dict[str, Any], parts: list[str]) -> None:
    """Print a suite's Markdown (``parts`` joined by lines) and save it with ``doc`` as JSON."""
    markdown = "\n".join(parts)
    print("\n" + markdown + "\n")
    json_path, _ = save(suite, doc, markdown)
    print(f"saved {json_path} (+ .md)")


def pair_suite(
    suite: str,
    inputs: list[Input],
    names: list[str],
    opts: Options,
    skip_nilearn: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Both libraries on every input x configuration, then the judge."""
    rows = []
    for inp in inputs:
        for name in names:
            for impl in ("nilearn", "daskparcel"):
                if impl == "nilearn" and inp.name in skip_nilearn:
                    continue
                rows.append(run_config(suite, inp, CONFIGS[name], impl, opts))
        score(rows, inp, opts, check_nilearn=suite == "seed")
    return rows


def seed_suite(opts: Options, names: list[str]) -> None:
    """The seed's configurations on the real scan and a 4 mm synthetic run of the seed's size."""
    if opts.quick:
        inputs = [synthetic_input(4, 1, 40)]
    else:
        inputs = [real_input(), synthetic_input(4, 1, 168)]
    report("seed", pair_suite("seed", inputs, names, opts))


def scale_suite(opts: Options, names: list[str], subjects: list[int] | None) -> None:
    """2 mm cohorts of growing size; nilearn is skipped past 10 subjects unless forced."""
    n_volumes = 100 if opts.quick else 300
    subjects = subjects or ([1, 3] if opts.quick else [1, 10, 40])
    inputs = [opts.cohort(2, n, n_volumes) for n in subjects]
    skip = set() if opts.force_nilearn else {i.name for i, n in zip(inputs, subjects) if n > 10}
    if opts.lazy:
        skip = {i.name for i in inputs}  # nilearn takes images, not lazy Datasets
    extra = (
        "nilearn reference numbers measured on this machine earlier (2 mm, 300 volumes): ward 1000 fit "
        "~39 s / 6.4 GB for 1 subject, ~155 s / 5.8 GB for 10; kmeans 50 fit 159 s / 5.5 GB for 10 subjects; "
        "its inverse_transform of the 10-subject list was killed for lack of memory at 23 GB; 40 subjects: "
        "over 8 minutes, ~16 GB projected."
    )
    if skip:
        extra += f" nilearn skipped here for {sorted(skip)} (--force-nilearn to run it)."
    rows = pair_suite("scale", inputs, names, opts, skip)
    floor = floor_table(rows, inputs, opts)
    # the default path, what users run: no mask file, each library's default mask strategy ("epi")
    for inp in inputs:
        default = dataclasses.replace(inp, name=f"{inp.name} default mask", mask="")
        for name in names:
            for impl in ("nilearn", "daskparcel"):
                if impl == "nilearn" and inp.name in skip:
                    continue
                rows.append(run_config("scale", default, CONFIGS[name], impl, opts))
    extra += (
        " Rows '... default mask': no mask file, each library computes its default (EPI) mask; not judged "
        "(R^2 is scored on the mask file's voxels)."
    )
    report("scale", rows, "\n\n".join([extra, default_mask_table(rows), floor]))


def default_mask_table(rows: list[dict[str, Any]]) -> str:
    """daskparcel's mask step against its signals step on the default path, and the default-mask fit as a
    multiple of the same configuration's fit given the mask file (issue 18: at most 0.35 and 1.15)."""
    table = []
    for row in rows:
        if row["impl"] != "daskparcel" or not row["input"].endswith(" default mask"):
            continue
        given = next(
            (
                r
                for r in rows
                if r["impl"] == "daskparcel"
                and r["config"] == row["config"]
                and r["input"] == row["input"].removesuffix(" default mask")
            ),
            None,
        )
        t = row.get("timings") or {}
        ok = row["status"] == "ok" and given is not None and given["status"] == "ok"
        table.append(
            {
                "input": row["input"],
                "config": row["config"],
                "mask_s": t.get("mask"),
                "signals_s": t.get("signals"),
                "mask_over_signals": t["mask"] / t["signals"] if t.get("signals") else None,
                "fit_over_given": row["fit_s"] / given["fit_s"] if ok and given["fit_s"] else None,
            }
        )
    if not table:
        return ""
    return "daskparcel on the default path (no mask file):\n\n" + markdown_table(
        table,
        [
            ("input", "input", fmt("")),
            ("config", "config", fmt("")),
            ("mask_s", "mask (s)", fmt(".1f")),
            ("signals_s", "signals (s)", fmt(".1f")),
            ("mask_over_signals", "mask / signals", fmt(".2f")),
            ("fit_over_given", "fit / fit given the mask", fmt(".2f")),
        ],
    )


def measure_read(inp: Input, fwhm: float, standardize: bool | str, opts: Options) -> dict[str, Any]:
    """One streaming read of the input's signals store with this preprocessing, in its own process."""
    print(f"  read       fwhm={fwhm} standardize={standardize} {inp.name}", flush=True)
    m = measure(
        SCRIPT,
        "read_signals",
        {
            "imgs": inp.imgs,
            "mask": inp.mask,
            "smoothing_fwhm": fwhm,
            "standardize": standardize,
            "store": str(JUDGE),
        },
        timeout_s=opts.timeout,
    )
    if m.error:
        print("    " + m.error, flush=True)
    return {"input": inp.name, "status": m.status, "peak_gib": m.peak_rss / GIB, **m.result}


def floor_table(rows: list[dict[str, Any]], inputs: list[Input], opts: Options) -> str:
    """daskparcel's reduction + clustering as a multiple of one read of the signals it works on, the read
    measured in this run right after the fits (issue 4's I/O floor); adds ``read_s`` and ``passes`` to the
    rows."""
    table = []
    for inp in inputs:
        ours = [
            r
            for r in rows
            if r["input"] == inp.name and r["impl"] == "daskparcel" and r["status"] == "ok"
        ]
        for pre in dict.fromkeys(CONFIGS[r["config_key"]].preprocessing for r in ours):
            read = measure_read(inp, *pre, opts)
            for row in ours:
                if CONFIGS[row["config_key"]].preprocessing != pre or read["status"] != "ok":
                    continue
                t = row["timings"] or {}
                work = t.get("reduction", 0.0) + t.get("clustering", 0.0)
                row["read_s"], row["passes"] = read["read_s"], work / read["read_s"]
                table.append(
                    {
                        "input": inp.name,
                        "config": row["config"],
                        "gib": read["gib"],
                        "read_s": read["read_s"],
                        "reduction_s": t.get("reduction"),
                        "clustering_s": t.get("clustering"),
                        "passes": row["passes"],
                    }
                )
    if not table:
        return ""
    return (
        "Fit work in reads of the signals (measured in this run, after the fits): one read = "
        "`store.signals('cleaned').data.sum().compute()` of the store the fit used (local default scheduler).\n\n"
        + markdown_table(
            table,
            [
                ("input", "input", fmt("")),
                ("config", "config", fmt("")),
                ("gib", "signals (GiB)", fmt(".2f")),
                ("read_s", "one read (s)", fmt(".2f")),
                ("reduction_s", "reduction (s)", fmt(".1f")),
                ("clustering_s", "clustering (s)", fmt(".1f")),
                ("passes", "(reduction + clustering) / read", fmt(".1f")),
            ],
        )
    )


def outofcore_suite(
    opts: Options, names: list[str], subjects: int | None, rejudge: Path | None = None
) -> None:
    """A cohort >= 2x the memory cap on a capped LocalCluster, against the same method fitted on a subsample
    without a cap; both labels judged on the whole cohort's signals. ``rejudge``: a saved outofcore JSON
    whose fits (and labels images) are kept and only judged again."""
    n_volumes = 100 if opts.quick else 300
    n_subjects = subjects or (3 if opts.quick else 40)
    cap = opts.memory_cap
    cohort = opts.cohort(2, n_subjects, n_volumes)
    sub = opts.cohort(2, max(1, n_subjects // 10), n_volumes)
    data_gib = _masked_gib(cohort)
    print(
        f"outofcore: {cohort.name}: masked float32 data {data_gib:.1f} GiB, cap {cap / GIB:.1f} GiB "
        f"({opts.workers} workers)",
        flush=True,
    )
    rows = []
    if rejudge is not None:
        rows = [r for r in json.loads(rejudge.read_text())["rows"] if r["input"] == cohort.name]
        for r in rows:  # the labels images of the run, wherever the results folder was then
            r["labels"] = r["labels"] and str(RESULTS / "labels" / Path(r["labels"]).name)
        names = [n for n in names if any(r["config_key"] == n for r in rows)]
        if not names:
            raise SystemExit(f"--rejudge {rejudge}: no rows of {cohort.name} for these configs")
        print(f"  rejudging the fits of {rejudge}", flush=True)
    for name in [] if rejudge is not None else names:
        cfg = CONFIGS[name]
        rows.append(run_config("outofcore", cohort, cfg, "daskparcel", opts, memory_cap=cap))
        sub_row = run_config("outofcore", sub, cfg, "daskparcel", opts, tag=" subsample")
        sub_row["input"] = cohort.name  # judged on the whole cohort
        sub_row["fit_input"] = sub.name
        rows.append(sub_row)
    score(rows, cohort, opts, check_nilearn=False)
    floor = "" if rejudge is not None else floor_table(rows, [cohort], opts)
    summary = []
    for name in names:
        capped = next(r for r in rows if r["config_key"] == name and r["impl"] == "daskparcel")
        small = next(r for r in rows if r["config_key"] == name and r["impl"] != "daskparcel")
        summary.append(
            {
                "config": name,
                "status": capped["status"],
                "fit_s": capped["fit_s"],
                "peak_gib": capped["peak_gib"],
                "over_cap": capped["over_cap"],
                "r2": capped.get("r2"),
                "r2_sub": small.get("r2"),
            }
        )
    extra = (
        f"Cohort {cohort.name}: {data_gib:.1f} GiB of masked float32 data ({data_gib / (cap / GIB):.1f}x the "
        f"{cap / GIB:.1f} GiB cap: {opts.workers} workers x "
        f"{(cap - client_reserve(cap)) / opts.workers / GIB:.2f} GiB memory_limit + "
        f"{client_reserve(cap) / GIB:.2f} GiB for the client and nannies; 'over cap': the sampled peak of all "
        "processes passed the cap). "
        f"'subsample' rows: the same method fitted on {sub.name} (local threads, no cap); every R^2 is "
        f"on the whole cohort's signals."
        + (f" The fits are those of {rejudge.name}, judged again (--rejudge)." if rejudge else "")
        + "\n\n"
        + markdown_table(
            summary,
            [
                ("config", "config", fmt("")),
                ("status", "status (capped)", fmt("")),
                ("fit_s", "fit (s)", fmt(".1f")),
                ("peak_gib", "peak RSS (GiB)", fmt(".2f")),
                ("over_cap", "over cap", fmt("")),
                ("r2", "R^2 (cohort fit)", fmt(".4f")),
                ("r2_sub", "R^2 (subsample fit)", fmt(".4f")),
            ],
        )
        + ("\n\n" + floor if floor else "")
    )
    report("outofcore", rows, extra)


def workers_suite(opts: Options, names: list[str], subjects: int | None) -> None:
    """One fit on the local default, on 1 worker process (2 threads) and on 2 worker processes (1 thread
    each): wall time, speed-up and each worker's peak memory (issue 7)."""
    n_volumes = 100 if opts.quick else 300
    inp = opts.cohort(2, subjects or (3 if opts.quick else 10), n_volumes)
    setups = [
        ("local default (threads)", 0, 0),
        ("1 worker x 2 threads", 1, 2),
        ("2 workers x 1 thread", 2, 1),
    ]
    rows = []
    for name in names:
        cfg = CONFIGS[name]
        for label, n_workers, threads in setups:
            store = WORK / _slug(f"workers-{inp.name}-{name}-{n_workers}")
            shutil.rmtree(store, ignore_errors=True)
            print(f"  daskparcel {name:<10} {inp.name} {label}", end=" ", flush=True)
            m = measure(
                SCRIPT,
                "fit_on_cluster",
                {
                    "imgs": inp.imgs, "mask": inp.mask, "config": dataclasses.asdict(cfg),
                    "store": str(store), "n_workers": n_workers, "threads_per_worker": threads,
                },
                timeout_s=opts.timeout,
                kill_above=opts.kill_above,
            )  # fmt: skip
            shutil.rmtree(store, ignore_errors=True)
            peaks = m.result.get("worker_peaks_gib") or []
            rows.append(
                {
                    "input": inp.name, "config": name, "setup": label, "status": m.status,
                    "fit_s": m.result.get("fit_s"), "peak_gib": m.peak_rss / GIB,
                    "worker_peak_gib": max(peaks) if peaks else None,
                    "worker_peaks_gib": peaks, "timings": m.result.get("timings"), "error": m.error,
                }
            )  # fmt: skip
            print(f"{m.status}: fit {fmt('.1f')(rows[-1]['fit_s'])} s", flush=True)
            if m.error:
                print("    " + m.error.replace("\n", "\n    "), flush=True)
        one = next(
            (r["fit_s"] for r in rows if r["config"] == name and r["setup"].startswith("1 ")), None
        )
        for r in rows:
            if r["config"] == name and one and r["fit_s"]:
                r["speedup"] = one / r["fit_s"]
    columns = [
        ("input", "input", fmt("")),
        ("config", "config", fmt("")),
        ("setup", "where", fmt("")),
        ("status", "status", fmt("")),
        ("fit_s", "fit (s)", fmt(".1f")),
        ("speedup", "speed-up vs 1 worker", fmt(".2f")),
        ("worker_peak_gib", "peak of a worker (GiB)", fmt(".2f")),
        ("peak_gib", "peak RSS, all processes (GiB)", fmt(".2f")),
    ]
    publish(
        "workers",
        {"rows": rows},
        [
            "## workers",
            "",
            markdown_table(rows, columns),
            "",
            "Each fit from scratch (its own store) in its own process. Worker peak: the worker process's own "
            "high-water mark (``VmHWM``), the largest of the workers; all processes: the sampled peak of the "
            "sum over the process tree (client, nannies, workers).",
        ],
    )


def _masked_gib(inp: Input) -> float:
    import nibabel as nib
    import numpy as np

    n_voxels = int((np.asarray(nib.load(inp.mask).dataobj) > 0).sum())
    spec = _lazy_spec(inp.imgs)
    if spec is not None:
        return n_voxels * spec[1] * spec[2] * 4 / GIB
    n_time = sum(int(nib.load(p).shape[3]) for p in inp.paths)
    return n_voxels * n_time * 4 / GIB


def io_suite(opts: Options, subjects: list[int] | None) -> None:
    """One streaming read of the signals store of each input (ward's preprocessing)."""
    if opts.quick:
        inputs = [synthetic_input(4, 1, 40), synthetic_input(2, 1, 100)]
    else:
        inputs = [real_input()] + [opts.cohort(2, n, 300) for n in (subjects or [1, 10])]
    rows = [measure_read(inp, 2.0, False, opts) for inp in inputs]
    publish(
        "io",
        {"rows": rows},
        [
            "## io",
            "",
            markdown_table(
                rows,
                [
                    ("input", "input", fmt("")),
                    ("status", "status", fmt("")),
                    ("n_voxels", "voxels", fmt("")),
                    ("n_time", "time points", fmt("")),
                    ("gib", "signals (GiB)", fmt(".2f")),
                    ("read_s", "read (s)", fmt(".2f")),
                    ("gib_per_s", "GiB/s", fmt(".2f")),
                    ("peak_gib", "peak RSS (GiB)", fmt(".2f")),
                ],
            ),
            "",
            "read = `store.signals('cleaned').data.sum().compute()` on the local default scheduler (the store "
            "is written first if absent, not timed); divide a fit time by it to express the fit in passes over "
            "the data.",
        ],
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run the suites."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite",
        choices=["seed", "scale", "outofcore", "io", "workers", "scaling", "slurm", "all"],
        required=True,
    )
    parser.add_argument("--quick", action="store_true", help="small inputs, to check the plumbing")
    parser.add_argument(
        "--configs", nargs="+", choices=sorted(CONFIGS), help="default: the suite's"
    )
    parser.add_argument(
        "--subjects", nargs="+", type=int, help="cohort sizes (scale, io, outofcore)"
    )
    parser.add_argument("--force-nilearn", action="store_true", help="run nilearn past 10 subjects")
    parser.add_argument("--nilearn-timeout", type=float, default=900.0, help="seconds (15 min)")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds, daskparcel and judge"
    )
    parser.add_argument(
        "--kill-above-gib", type=float, default=20.0, help="kill a run past this RSS"
    )
    parser.add_argument(
        "--memory-cap-gib",
        type=float,
        help="outofcore: total cap in GiB (default 4, also with --quick)",
    )
    parser.add_argument("--workers", type=int, default=2, help="outofcore: LocalCluster workers")
    parser.add_argument(
        "--rejudge",
        type=Path,
        help="outofcore: judge again the labels of a saved run (its JSON; same --subjects / --lazy), "
        "without fitting",
    )
    parser.add_argument(
        "--lazy",
        action="store_true",
        help="synthetic cohorts as lazy Datasets, no NIfTI files (daskparcel only: for cohorts larger than the "
        "free disk)",
    )
    parser.add_argument(
        "--share-store",
        action="store_true",
        help="one store per input for every configuration and the judge: the signals store is written once "
        "per preprocessing and reused (the later configurations' fit times exclude it)",
    )
    args = parser.parse_args(argv)
    opts = Options(
        quick=args.quick,
        nilearn_timeout=args.nilearn_timeout,
        timeout=args.timeout,
        kill_above=int(args.kill_above_gib * GIB),
        memory_cap=int((args.memory_cap_gib or 4.0) * GIB),
        workers=args.workers,
        force_nilearn=args.force_nilearn,
        share_store=args.share_store,
        lazy=args.lazy,
    )
    suites = (
        ["seed", "scale", "outofcore", "io", "workers"] if args.suite == "all" else [args.suite]
    )
    for suite in suites:
        print(f"# suite {suite}{' (quick)' if args.quick else ''}", flush=True)
        if suite == "seed":
            seed_suite(opts, args.configs or SEED)
        elif suite == "scale":
            scale_suite(opts, args.configs or SCALE, args.subjects)
        elif suite == "scaling":
            import scaling

            scaling.scaling_suite(
                sys.modules[__name__], opts, args.configs or ["kmeans50"],
                args.subjects[0] if args.subjects else None,
            )  # fmt: skip
        elif suite == "slurm":
            import slurm

            slurm.slurm_suite(
                sys.modules[__name__], opts, args.configs or ["kmeans50"],
                args.subjects[0] if args.subjects else None,
            )  # fmt: skip
        elif suite == "workers":
            workers_suite(
                opts, args.configs or ["kmeans50"], args.subjects[0] if args.subjects else None
            )
        elif suite == "outofcore":
            outofcore_suite(
                opts,
                args.configs or SCALE,
                args.subjects[0] if args.subjects else None,
                rejudge=args.rejudge,
            )
        else:
            io_suite(opts, args.subjects)


if __name__ == "__main__":
    sys.exit(main())
