"""Converting a NIfTI run to a zarr store: peak memory, throughput and codecs (issue 2).

Usage::

    python benchmarks/bench_convert.py            # a 2 mm run: 91x109x91 x 300 volumes (1.1 GB as float32)
    python benchmarks/bench_convert.py --quick    # the same grid, 40 volumes
    python benchmarks/bench_convert.py --volumes 600 --codecs blosc-lz4 zstd none

The claim checked: ``daskparcel.convert`` of the 2 mm run peaks under 700 MB RSS. It is measured next to what
users do without it, ``nibabel.load(path).get_fdata()`` + ``numpy.save`` of the same file, and for each codec
(blosc-lz4, zstd) the size on disk, the write time and the time of one streaming read of the store
(``open_store(out)["bold"].data.sum().compute()``). Each step runs in its own process (``_measure.py``): wall time,
peak RSS of the process tree. The synthetic run is written once (``datasets.write_synthetic_nifti``, gzip level 1)
into ``benchmarks/results/data`` and reused (it is the first subject of the scale suite's cohort).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _measure import GIB, RESULTS, dir_size, fmt, markdown_table, measure, save
from run import synthetic_input

SCRIPT = Path(__file__).resolve()
MB = 1e6
CLAIM_MB = 700


def convert_run(path: str, out: str, compression: str) -> dict[str, Any]:
    """``daskparcel.convert`` of one run (child process)."""
    from daskparcel.ingest.convert import convert

    start = time.perf_counter()
    result = convert(path, out, compression=compression, overwrite=True)
    return {
        "seconds": time.perf_counter() - start,
        "size": dir_size(out),
        "chunk_volumes": result.chunk_volumes,
    }


def read_store(out: str) -> dict[str, Any]:
    """One streaming read of a run store on the local default scheduler (child process)."""
    from daskparcel.store.runs import open_store

    bold = open_store(out)["bold"]
    start = time.perf_counter()
    bold.data.sum().compute()
    return {"seconds": time.perf_counter() - start}


def nibabel_numpy(path: str, out: str) -> dict[str, Any]:
    """``nibabel.load(path).get_fdata()`` + ``numpy.save`` (child process)."""
    import nibabel as nib
    import numpy as np

    start = time.perf_counter()
    data = nib.load(path).get_fdata()
    loaded = time.perf_counter()
    np.save(out, data)
    return {
        "seconds": time.perf_counter() - start,
        "load_s": loaded - start,
        "save_s": time.perf_counter() - loaded,
        "size": dir_size(out),
        "dtype": str(data.dtype),
    }


def _row(method: str, m: Any, n_bytes: int) -> dict[str, Any]:
    secs = m.result.get("seconds")
    return {
        "method": method,
        "status": m.status,
        "seconds": secs,
        "mb_per_s": n_bytes / MB / secs if secs else None,
        "peak_mb": m.peak_rss / MB,
        "size_mb": m.result["size"] / MB if "size" in m.result else None,
        "error": m.error,
        **{k: v for k, v in m.result.items() if k not in ("seconds", "size")},
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table and save it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 volumes instead of 300")
    parser.add_argument("--volumes", type=int, help="volumes of the 2 mm run (default 300)")
    parser.add_argument("--codecs", nargs="+", default=["blosc-lz4", "zstd"])
    parser.add_argument("--keep", action="store_true", help="keep the stores and the .npy file")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)

    n_volumes = args.volumes or (40 if args.quick else 300)
    inp = synthetic_input(2, 1, n_volumes)
    source = Path(inp.paths[0])
    import nibabel as nib

    shape = nib.load(source).shape
    n_bytes = int(shape[0] * shape[1] * shape[2] * shape[3] * 4)  # as float32
    work = RESULTS / "work" / "convert"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(
        f"{source}: {shape}, {n_bytes / GIB:.2f} GiB as float32, {dir_size(source) / MB:.0f} MB gz"
    )

    rows = []
    for codec in args.codecs:
        out = work / f"run-{codec}.zarr"
        print(f"  convert {codec}", flush=True)
        m = measure(
            SCRIPT,
            "convert_run",
            {"path": str(source), "out": str(out), "compression": codec},
            timeout_s=args.timeout,
        )
        row = _row(f"daskparcel.convert ({codec})", m, n_bytes)
        if m.ok:
            read = measure(SCRIPT, "read_store", {"out": str(out)}, timeout_s=args.timeout)
            row["read_s"] = read.result.get("seconds")
            row["read_peak_mb"] = read.peak_rss / MB
        row["under_claim"] = "yes" if m.ok and row["peak_mb"] < CLAIM_MB else "no"
        rows.append(row)
    print("  nibabel get_fdata + numpy.save", flush=True)
    npy = work / "run.npy"
    m = measure(
        SCRIPT, "nibabel_numpy", {"path": str(source), "out": str(npy)}, timeout_s=args.timeout
    )
    rows.append(_row("nibabel get_fdata() + numpy.save", m, n_bytes))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    columns = [
        ("method", "method", fmt("")),
        ("status", "status", fmt("")),
        ("seconds", "write (s)", fmt(".1f")),
        ("mb_per_s", "throughput (MB/s of float32)", fmt(".0f")),
        ("peak_mb", "peak RSS (MB)", fmt(".0f")),
        ("under_claim", f"< {CLAIM_MB} MB", fmt("")),
        ("size_mb", "size on disk (MB)", fmt(".0f")),
        ("read_s", "read (s)", fmt(".1f")),
        ("read_peak_mb", "read peak (MB)", fmt(".0f")),
    ]
    markdown = "\n".join(
        [
            "## convert",
            "",
            f"Input: `{source.name}` {shape} ({n_bytes / MB:.0f} MB as float32, "
            f"{dir_size(source) / MB:.0f} MB gzip level 1).",
            "",
            markdown_table(rows, columns),
            "",
            "throughput = float32 bytes of the run / write time (nibabel's row: load + save; get_fdata gives "
            "float64, twice the bytes in memory and on disk). Peak RSS: the process tree, sampled every 50 ms. "
            "read = one streaming `sum()` of the store on the local default scheduler.",
        ]
    )
    print("\n" + markdown + "\n")
    json_path, _ = save("convert", {"input": str(source), "shape": shape, "rows": rows}, markdown)
    print(f"saved {json_path} (+ .md)")


if __name__ == "__main__":
    sys.exit(main())
