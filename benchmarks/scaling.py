"""The scaling suite (``run.py --suite scaling``): one cohort, one fit per configuration, each in its own
process pinned with ``os.sched_setaffinity`` to 1, 2, 4, 8, 16 cores (capped at the machine's), on threads
(the local default) and on a LocalCluster of processes; per step (mask, signals, reduction, clustering,
transform) the time, the speed-up over 1 core and the parallel efficiency; and weak scaling (one subject per
core). Every fit is the default path: no mask file, default parameters, .nii.gz inputs, an empty store.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any

from _measure import markdown_table, measure

STEPS = ("inputs", "mask", "signals", "reduction", "clustering", "transform")


def core_counts(available: int) -> list[int]:
    """1, 2, 4, 8, 16 up to the cores this process may use (and that number itself)."""
    counts = [c for c in (1, 2, 4, 8, 16) if c <= available]
    return counts if available in counts else [*counts, available]


def fit_pinned(imgs: list[str], config: dict[str, Any], store: str, cores: int, kind: str) -> dict:
    """Child process: pin to ``cores`` cores, fit with the default mask, transform; the step timings."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    import dask
    import numpy as np

    from daskparcel import Parcellations

    cfg = config
    client: Any = None
    cluster: Any = None
    if kind == "processes":  # workers inherit the affinity; 2 threads each where there are 2 cores
        from distributed import Client, LocalCluster

        from daskparcel.runtime.workers import set_worker_malloc

        set_worker_malloc()
        threads = 2 if cores >= 2 else 1
        cluster = LocalCluster(
            n_workers=max(1, cores // threads), threads_per_worker=threads, host="127.0.0.1",
            dashboard_address=":0",
        )  # fmt: skip
        client = Client(cluster)
    try:
        with dask.config.set(num_workers=cores):
            est = Parcellations(
                method=cfg["method"], n_parcels=cfg["n_parcels"], smoothing_fwhm=cfg["smoothing_fwhm"],
                standardize=cfg["standardize"], store=store, client=client,
            )  # fmt: skip
            est.fit(imgs)
            start = time.perf_counter()
            for signals in est.transform(list(imgs)):
                np.asarray(signals)
            transform = time.perf_counter() - start
    finally:
        if client is not None:
            client.close()
            cluster.close()
    timings = {k: float(v) for k, v in est.timings_.items()}
    timings["transform"] = transform
    return {"timings": timings, "cores": cores, "kind": kind}


def _efficiency(rows: list[dict[str, Any]]) -> None:
    """Speed-up over the same kind's 1-core fit, and parallel efficiency (speed-up / cores), per step."""
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["kind"] == row["kind"] and r["cores"] == 1 and r["mode"] == row["mode"]
            ),
            None,
        )
        if base is None or row.get("status") != "ok":
            continue
        for step in ("total", *STEPS):
            t, t1 = row.get(step), base.get(step)
            if t and t1:
                if row["mode"] == "strong":
                    row[f"{step}_speedup"] = t1 / t
                    row[f"{step}_eff"] = t1 / t / row["cores"]
                else:  # weak: the work grows with the cores, the ideal time stays t1
                    row[f"{step}_eff"] = t1 / t


#: The steps whose work grows with the runs (the clustering's does not: its features are components).
PER_RUN = ("inputs", "mask", "signals", "reduction", "transform")
PROJECTED_RUNS = 12  # the 16-core target: 12 subjects x 150 volumes, 2 mm, kmeans 50


def projection(
    rows: list[dict[str, Any]],
    n_runs: int,
    runs: int = PROJECTED_RUNS,
    counts: tuple[int, ...] = (2, 4, 8, 16),
) -> list[dict[str, Any]]:
    """Per-step times of a cohort of ``runs`` runs on ``counts`` cores, projected from a strong-scaling run.

    Each step follows Amdahl's law, its serial fraction from the 1-core time and the most cores measured
    (``s = (p T_p / T_1 - 1) / (p - 1)``); whatever the 1-to-p loss comes from (serial code, memory
    bandwidth, the machine's other load) is assumed to stay. The steps of ``PER_RUN`` grow with the runs,
    the clustering does not (its features are components, not runs). Floors: the mask and signals passes
    inflate each .nii.gz on one thread (a run's inflate is about its 1-core mask time), so neither is
    faster than ``ceil(runs / cores)`` of those, nor the inputs step than as many files' hashes; the
    clustering is never faster than its serial seconds (a kmeans start's mini-batch). What is outside the
    steps (store set-up, the graph) is taken as serial. Steps a saved run did not time are left out.
    """
    out: list[dict[str, Any]] = []
    for kind in ("threads", "processes"):
        strong = [
            r
            for r in rows
            if r["mode"] == "strong" and r["kind"] == kind and r.get("status") == "ok"
        ]
        base = next((r for r in strong if r["cores"] == 1), None)
        top = max((r for r in strong if r["cores"] > 1), key=lambda r: r["cores"], default=None)
        if base is None or top is None or not (base.get("total") and base.get("mask")):
            continue
        p = top["cores"]
        steps = [step for step in STEPS if base.get(step) and top.get(step)]
        fit_steps = [step for step in steps if step != "transform"]
        per_run = {step: base[step] / n_runs for step in ("inputs", "mask") if step in steps}
        fractions = {
            step: min(1.0, max(0.0, (p * top[step] / base[step] - 1) / (p - 1))) for step in steps
        }
        other = max(0.0, base["total"] - sum(base[step] for step in fit_steps))
        projected = []
        for cores in counts:
            row: dict[str, Any] = {"kind": kind, "cores": cores, "runs": runs, "measured_on": p}
            rounds = -(-runs // cores)  # one file per core at a time
            floors = {"inputs": rounds * per_run.get("inputs", 0.0), "mask": rounds * per_run["mask"],
                      "signals": rounds * per_run["mask"], "clustering": base.get("serial") or 0.0}  # fmt: skip
            for step in steps:
                work = base[step] * (runs / n_runs if step in PER_RUN else 1.0)
                row[step] = max(
                    floors.get(step, 0.0), work * (fractions[step] + (1 - fractions[step]) / cores)
                )
                row[f"{step}_serial"] = fractions[step]
            row["total"] = other + sum(row[step] for step in fit_steps)
            projected.append(row)
        two = next((r["total"] for r in projected if r["cores"] == 2), None)
        for row in projected:
            row["vs_2"] = two / row["total"] if two else None
        out += projected
    return out


def projection_table(rows: list[dict[str, Any]], run: Any) -> list[str]:
    """The Markdown lines of :func:`projection`'s rows (none when they are empty)."""
    if not rows:
        return []
    f1, f2 = run.fmt(".1f"), run.fmt(".2f")
    columns = [("kind", "where", run.fmt("")), ("runs", "runs", run.fmt("d")),
               ("cores", "cores", run.fmt("d")), ("total", "fit (s)", f1), ("vs_2", "speed-up over 2 cores", f2)]  # fmt: skip
    for step in STEPS:
        columns += [(step, f"{step} (s)", f1), (f"{step}_serial", f"{step} serial fraction", f2)]
    first = rows[0]
    return [
        f"### projection: {first['runs']} runs, from the measured 1 and {first['measured_on']} cores",
        "",
        markdown_table(rows, columns),
        "",
        "Not measured: each step's time under Amdahl's law with the serial fraction of its measured 1-to-"
        f"{first['measured_on']}-core speed-up, the per-run steps scaled to {first['runs']} runs, floors of one "
        ".nii.gz inflate per run and core for the mask and signals passes and of the serial seconds for the "
        "clustering (``scaling.projection``). A measurement on that many cores replaces it.",
    ]


def scaling_suite(run: Any, opts: Any, names: list[str], subjects: int | None) -> None:
    """Strong scaling of one cohort and weak scaling (one subject per core), threads and processes."""
    available = len(os.sched_getaffinity(0))
    counts = core_counts(available)
    n_volumes = 60 if opts.quick else 150
    n_subjects = subjects or (2 if opts.quick else 4)
    strong = run.synthetic_input(2, n_subjects, n_volumes)
    rows: list[dict[str, Any]] = []
    for name in names:
        cfg = dataclasses.asdict(run.CONFIGS[name])
        plans = [("strong", strong, c, k) for c in counts for k in ("threads", "processes")]
        plans += [("weak", run.synthetic_input(2, c, n_volumes), c, "threads") for c in counts]
        for mode, inp, cores, kind in plans:
            store = run.WORK / run._slug(f"scaling-{name}-{mode}-{cores}-{kind}")
            shutil.rmtree(store, ignore_errors=True)
            print(f"  {name:<10} {mode:<6} {inp.name} {cores} core(s) {kind}", end=" ", flush=True)
            m = measure(
                run.SCRIPT.with_name("scaling.py"), "fit_pinned",
                {"imgs": inp.imgs if isinstance(inp.imgs, list) else [inp.imgs], "config": cfg,
                 "store": str(store), "cores": cores, "kind": kind},
                timeout_s=opts.timeout, kill_above=opts.kill_above,
            )  # fmt: skip
            shutil.rmtree(store, ignore_errors=True)
            timings = m.result.get("timings", {})
            rows.append(
                {"config": name, "mode": mode, "input": inp.name, "cores": cores, "kind": kind,
                 "status": m.status, "peak_gib": m.peak_rss / run.GIB, "error": m.error,
                 **{k: timings.get(k) for k in ("total", *STEPS)},
                 "serial": sum(v for k, v in timings.items() if k.startswith("serial: ")),
                 "serial_steps": ", ".join(k[8:] for k in timings if k.startswith("serial: ")) or None}
            )  # fmt: skip
            if rows[-1]["total"]:
                rows[-1]["serial_share"] = rows[-1]["serial"] / rows[-1]["total"]
            print(f"{m.status}: fit {timings.get('total', float('nan')):.1f} s", flush=True)
            if m.error:
                print("    " + m.error.replace("\n", "\n    "), flush=True)
    _efficiency(rows)
    f1, f2 = run.fmt(".1f"), run.fmt(".2f")
    columns = [("config", "config", run.fmt("")), ("mode", "scaling", run.fmt("")),
               ("input", "input", run.fmt("")), ("kind", "where", run.fmt("")),
               ("cores", "cores", run.fmt("d")), ("total", "fit (s)", f1),
               ("total_speedup", "speed-up", f2), ("total_eff", "efficiency", f2)]  # fmt: skip
    for step in STEPS:
        columns += [(step, f"{step} (s)", f1), (f"{step}_eff", f"{step} eff.", f2)]
    columns += [("serial", "serial (s)", f1), ("serial_share", "serial share", f2),
                ("serial_steps", "serial steps", run.fmt(""))]  # fmt: skip
    run.publish(
        "scaling",
        {"rows": rows, "cores_available": available, "runs": n_subjects},
        [
            "## scaling",
            "",
            markdown_table(rows, columns),
            "",
            f"{available} core(s) available. Each fit in its own process pinned to its cores, from an empty "
            "store, default mask, .nii.gz inputs. Strong: the same cohort; speed-up = time on 1 core / time, "
            "efficiency = speed-up / cores. Weak: one subject per core; efficiency = time of 1 subject on 1 "
            "core / time. Processes: a LocalCluster of 2-thread workers on the same cores. Serial: the seconds "
            "of the fit in steps that run on one core by nature (ward/complete/average's merge loop, "
            "ReNA's groupings, a single kmeans start's mini-batch steps, which scikit-learn runs on one "
            "thread so that the labels do not change with the cores; ``serial: <step>`` in ``timings_``), "
            "and their share of the fit: what no number of cores shortens. kmeans' Lloyd iterations after "
            "the mini-batch use the task's threads.",
            "",
            *projection_table(projection(rows, n_subjects), run),
        ],
    )


# the projection of a saved run: python benchmarks/scaling.py [results/scaling-<time>.json] [--runs N]
if __name__ == "__main__":
    import argparse
    import json
    import sys
    from pathlib import Path

    import run as run_module
    from _measure import RESULTS

    parser = argparse.ArgumentParser(
        description="Project a saved scaling run to more cores and runs."
    )
    parser.add_argument("result", nargs="?", default=str(RESULTS / "scaling-latest.json"))
    parser.add_argument(
        "--runs", type=int, default=PROJECTED_RUNS, help="runs of the projected cohort"
    )
    args = parser.parse_args()
    saved = json.loads(Path(args.result).read_text())
    measured = [r for r in saved["rows"] if r["mode"] == "strong"]
    if not measured:
        sys.exit(f"{args.result}: no strong-scaling rows to project from")
    # runs saved since the projection exists say how many; earlier ones name the cohort "<grid> NxT"
    n_runs = saved.get("runs") or int(measured[0]["input"].split()[-1].split("x")[0])
    print("\n".join(projection_table(projection(saved["rows"], n_runs, args.runs), run_module)))
