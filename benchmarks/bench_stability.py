"""Time ``daskparcel stability`` on a synthetic cohort under a memory cap (issue 21, item 4).

Usage::

    python benchmarks/bench_stability.py                         # 10 subjects, 4 mm x 168 volumes, ward,
                                                                 # 8 bootstrap samples, K = 50 100 200 500 1000
    python benchmarks/bench_stability.py --resolution 2 --volumes 150 --subjects 10   # the scale suite's cohort
    python benchmarks/bench_stability.py --subjects 4 --samples 4 --n-parcels 20 50   # a quick check

The cohort is written once under ``results/data`` (as ``run.py``'s suites write it); the command runs in its own
process (``_measure.measure``), its summed RSS sampled every 50 ms and the run killed above ``--cap-gib``. Prints
and saves (``results/stability-<time>.{json,md}``) the wall time, the peak RSS and the stability table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import GIB, RESULTS, measure, save

DATA = RESULTS / "data"


def cohort(resolution: int, n_subjects: int, n_volumes: int) -> tuple[list[str], str]:
    """The synthetic NIfTI runs (written once) and the MNI brain mask beside them."""
    import nibabel as nib

    from daskparcel import datasets

    folder = DATA / f"mni{resolution}mm-t{n_volumes}"
    paths, _ = datasets.write_synthetic_nifti(folder, n_subjects, resolution, n_volumes)
    mask = DATA / f"mask-mni{resolution}mm.nii.gz"
    if not mask.exists():
        nib.save(datasets.brain_mask(resolution), mask)
    return [str(p) for p in paths], str(mask)


def run_stability(argv: list[str]) -> dict[str, Any]:
    """The child: ``daskparcel stability`` with ``argv``; its exit code and table."""
    from daskparcel.cli import main

    start = time.time()
    code = main(argv)
    out = Path(argv[argv.index("--out") + 1])
    table = json.loads((out / "stability.json").read_text())["table"] if code == 0 else []
    return {"code": code, "seconds": time.time() - start, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=4, choices=[4, 2])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--volumes", type=int, default=168)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--method", default="ward")
    parser.add_argument("--n-parcels", type=int, nargs="+", default=[50, 100, 200, 500, 1000])
    parser.add_argument("--cap-gib", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=1800)
    opts = parser.parse_args()
    paths, mask = cohort(opts.resolution, opts.subjects, opts.volumes)
    with tempfile.TemporaryDirectory(prefix="bench-stability-") as tmp:
        argv = [
            "stability", *paths, "--method", opts.method, "--mask", mask,
            "--n-parcels", *map(str, opts.n_parcels), "--n-samples", str(opts.samples),
            "--out", f"{tmp}/out", "--store", f"{tmp}/cache", "--quiet",
        ]  # fmt: skip
        cap = int(opts.cap_gib * GIB)
        m = measure(
            __file__, "run_stability", {"argv": argv}, timeout_s=opts.timeout,
            memory_cap=cap, kill_above=cap,
        )  # fmt: skip
    name = (
        f"{opts.method}, {opts.subjects} subjects x {opts.volumes} volumes at {opts.resolution} mm"
    )
    lines = [
        "## stability",
        "",
        f"`daskparcel stability` {name}, {opts.samples} bootstrap samples, K = "
        f"{' '.join(map(str, opts.n_parcels))}, killed above {opts.cap_gib:g} GiB: **{m.status}**, "
        f"wall {m.wall_s:.0f} s, peak RSS {m.peak_rss / GIB:.2f} GiB.",
        "",
        "| K | ARI | AMI | held-out R^2 |",
        "|---|---|---|---|",
    ]
    for r in m.result.get("table", []):
        f = {k: "NaN" if v is None else f"{v:.3f}" for k, v in r.items() if k != "n_parcels"}
        lines.append(
            f"| {r['n_parcels']} | {f['ari_mean']} +- {f['ari_sd']} | {f['ami_mean']} | "
            f"{f['accuracy_mean']} +- {f['accuracy_sd']} |"
        )
    if m.error:
        lines += ["", "```", m.error, "```"]
    save("stability", {"measurement": m.to_dict(), "argv": argv}, "\n".join(lines))
    if m.result.get("table"):  # the figure of the table (README: benchmarks/figures/)
        from daskparcel.outputs.stability import stability_figure

        figure = stability_figure(m.result["table"], f"{opts.method}, {name}", "r2")
        figure.savefig(RESULTS / "stability-latest.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
