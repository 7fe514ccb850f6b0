"""A fit folder as a BIDS derivative dataset: the parcellation as a BIDS atlas (BEP038, BIDS 1.11), per-run tables.

Layout (``<L>`` is the atlas label, e.g. ``ward1000``; ``<run>`` a run's entities, e.g. ``sub-01_ses-1_task-rest``;
``[_space-<S>]`` when every input names the same space)::

    DIR/
      dataset_description.json              DatasetType "derivative", GeneratedBy daskparcel and its version
      README.md
      .bidsignore                           daskparcel's own files (labels.nii.gz, fit.json, the zarr, ...)
      atlas-<L>_description.json            AtlasName, License, Description, method, references
      atlas-<L>_dseg.tsv                    the look-up table: index, name, color, size (voxels), x, y, z (mm)
      atlas-<L>_dseg.json                   SpatialReference, Sources, the method and its parameters, columns
      atlas-<L>_stat-<kind>_relmat.tsv      group summary of each connectome kind (nilearn's ``mean_``)
      sub-<s>/anat/sub-<s>[_space-<S>]_atlas-<L>_dseg.nii.gz          the labels (one per subject, hard links)
      sub-<s>/[ses-<x>/]func/<run>[_space-<S>]_atlas-<L>_stat-mean_timeseries.tsv   parcel signals of a run
      sub-<s>/[ses-<x>/]func/<run>[_space-<S>]_atlas-<L>_stat-<kind>_relmat.tsv     its connectome

The group atlas is placed in every subject's ``anat`` folder (as hard links, so it is stored once): the BIDS
validator (3.0.2) accepts ``sub-<s>/anat/..._atlas-<L>_dseg.nii.gz``, and the look-up table and sidecar at the
root apply to all of them by inheritance. BIDS has no name yet for parcel time series or connectivity matrices
(xcp_d's ``*_stat-mean_timeseries.tsv`` and ``*_relmat.tsv`` are used, as the issue asks); they are listed in
``.bidsignore`` with daskparcel's other files, so the validator reports no error on the folder.

Entities: a run's ``sub``, ``ses``, ``task``, ``acq`` and ``run`` come from its BIDS name when it has one
(``sub-01_ses-pre_task-rest_run-1``); otherwise ``sub-<its file name, letters and digits only>``. Runs whose
entities coincide get ``run-<n>``.
"""

from __future__ import annotations

import colorsys
import itertools
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from daskparcel import __version__
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

BIDS_VERSION = "1.11.0"
RUN_ENTITIES = ("sub", "ses", "task", "acq", "run")
_LABEL = re.compile(r"[^a-zA-Z0-9]")
_DUPLICATE_PREFIX = re.compile(r"^\d{3}-")
BIDSIGNORE = (
    "labels.nii.gz",
    "mask.nii.gz",
    "mean.nii.gz",
    "compressed_mean.nii.gz",
    "r2.nii.gz",
    "*.zarr",
    "fit.json",
    "parcels.tsv",
    "report.html",
    "job.log",
    "*_timeseries.tsv",
    "*_relmat.tsv",
)
REFERENCES = [
    "https://doi.org/10.1016/j.neuroimage.2014.09.034",  # Thirion et al. 2014, which parcellation
    "https://nilearn.github.io/stable/modules/generated/nilearn.regions.Parcellations.html",
]


def bids_label(text: str, default: str = "x") -> str:
    """``text`` as a BIDS label (letters and digits only)."""
    return _LABEL.sub("", str(text)) or default


def atlas_label(method: str, n_parcels: int) -> str:
    """The atlas label of a parcellation, e.g. ``ward1000`` or ``hierarchicalkmeans50``."""
    return f"{bids_label(method)}{int(n_parcels)}"


def stat_label(kind: str) -> str:
    """The ``stat-`` label of a connectome kind (``partial correlation`` -> ``partialcorrelation``)."""
    return bids_label(kind)


def parcel_names(indices: Sequence[int] | np.ndarray) -> list[str]:
    """Names of parcels in the look-up table and the time series columns: ``parcel001`` ... (zero-padded)."""
    indices = [int(i) for i in indices]
    width = max(3, len(str(max(indices, default=0))))
    return [f"parcel{i:0{width}d}" for i in indices]


def run_entities(names: Sequence[str]) -> list[dict[str, str]]:
    """BIDS entities (``sub``, ``ses``, ``task``, ``acq``, ``run``) of each run, unique across the runs.

    Parameters
    ----------
    names : sequence of str
        Run names as daskparcel gives them (``sub-01_ses-1_task-rest_run-1`` for BIDS runs, the file name
        without its suffix otherwise).

    Returns
    -------
    list of dict
        One per run, in BIDS order; a name without ``sub-`` gives ``sub-<name, letters and digits only>``.
    """
    from daskparcel.ingest.bids import parse_entities

    out: list[dict[str, str]] = []
    for name in names:
        stem = _DUPLICATE_PREFIX.sub("", str(name))
        parsed = parse_entities(stem)
        entities = {k: bids_label(parsed[k]) for k in RUN_ENTITIES if k in parsed}
        if "sub" not in entities:
            entities = {"sub": bids_label(stem, "01")}
        out.append(entities)
    keys = [tuple(e.items()) for e in out]
    for key in set(keys):
        same = [i for i, k in enumerate(keys) if k == key]
        if len(same) > 1:
            for n, i in enumerate(same, start=1):
                out[i] = {**{k: v for k, v in out[i].items() if k != "run"}, "run": str(n)}
                out[i] = {k: out[i][k] for k in RUN_ENTITIES if k in out[i]}
    return out


def common_space(inputs: Sequence[Any]) -> str | None:
    """The ``space-`` entity shared by every input (BIDS runs or file names), or None."""
    from daskparcel.ingest.bids import BidsRun, parse_entities

    spaces = set()
    for item in inputs:
        if isinstance(item, BidsRun):
            spaces.add(item.entities.get("space"))
        elif isinstance(item, str | os.PathLike):
            spaces.add(parse_entities(Path(item).name).get("space"))
        else:
            spaces.add(None)
    if len(spaces) == 1:
        (space,) = spaces
        return bids_label(space) if space else None
    return None


def parcel_colors(n: int) -> list[str]:
    """``n`` distinct colours (hues spread by the golden ratio, two brightness levels), as ``#rrggbb``."""
    out = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95 if i % 2 == 0 else 0.7)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return out


def look_up_table(labels_img: nib.spatialimages.SpatialImage) -> pd.DataFrame:
    """The BIDS look-up table of a labels image: one row per label (0 = Background first).

    Parameters
    ----------
    labels_img : nibabel image
        Integer labels, 0 = background.

    Returns
    -------
    pandas.DataFrame
        Columns ``index``, ``name`` (``Background``, ``parcel001``, ...), ``color`` (``#rrggbb``), ``size``
        (voxels) and ``x``, ``y``, ``z`` (the parcel's centre of mass in mm, world coordinates of the image's
        affine; n/a for the background).
    """
    data = np.asarray(labels_img.dataobj).astype(np.int64)
    if data.ndim != 3 or (data < 0).any():
        raise InputError(
            "labels_img: a labels image must be 3D with labels >= 0 (0 = background); give an atlas image"
        )
    where = np.nonzero(data)  # the labelled voxels only: memory follows the brain, not the grid
    values = data[where]
    present = np.unique(values)
    counts = np.bincount(values, minlength=int(values.max(initial=0)) + 1)
    centres = np.stack(
        [np.bincount(values, weights=where[d], minlength=counts.size) for d in range(3)]
    ) / np.maximum(counts, 1)
    xyz = nib.affines.apply_affine(labels_img.affine, centres[:, present].T)
    background = int(data.size - values.size)
    table = pd.DataFrame(
        {
            "index": np.concatenate([[0], present]).astype(int),
            "name": ["Background", *parcel_names(present)],
            "color": ["#000000", *parcel_colors(len(present))],
            "size": np.concatenate([[background], counts[present]]).astype(int),
            "x": np.concatenate([[np.nan], xyz[:, 0]]),
            "y": np.concatenate([[np.nan], xyz[:, 1]]),
            "z": np.concatenate([[np.nan], xyz[:, 2]]),
        }
    )
    return table


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _write_tsv(path: Path, table: pd.DataFrame, float_format: str = "%.9g") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format=float_format)


def write_dataset_description(folder: Path, name: str) -> None:
    """``dataset_description.json`` (a derivative generated by daskparcel), ``README.md`` and ``.bidsignore``."""
    _write_json(
        folder / "dataset_description.json",
        {
            "Name": name,
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "daskparcel",
                    "Version": __version__,
                    "Description": "Out-of-core brain parcellations from fMRI (dask, xarray, zarr)",
                }
            ],
        },
    )
    readme = folder / "README.md"
    if not readme.exists():
        readme.write_text(
            f"# {name}\n\nWritten by daskparcel {__version__}. The parcellation is a BIDS atlas "
            "(`atlas-*_dseg.nii.gz` with its look-up table `atlas-*_dseg.tsv`); per-run parcel time series are "
            "`*_stat-mean_timeseries.tsv`, connectomes `*_stat-<kind>_relmat.tsv`.\n"
        )
    (folder / ".bidsignore").write_text("\n".join(BIDSIGNORE) + "\n")


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def run_prefix(entities: Mapping[str, str], space: str | None) -> tuple[Path, str]:
    """Folder (``sub-<s>/[ses-<x>/]func``) and file prefix of a run's tables."""
    folder = Path(f"sub-{entities['sub']}")
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    prefix = "_".join(f"{k}-{entities[k]}" for k in RUN_ENTITIES if k in entities)
    if space:
        prefix += f"_space-{space}"
    return folder / "func", prefix


def write_bids_atlas(
    folder: str | os.PathLike[str],
    labels_img: nib.spatialimages.SpatialImage,
    *,
    method: str,
    parameters: Mapping[str, Any],
    run_names: Sequence[str],
    sources: Sequence[str] = (),
    space: str | None = None,
    license: str = "CC0",
) -> dict[str, Any]:
    """Write the parcellation of a fit as a BIDS atlas in ``folder`` (the layout of the module docstring).

    Parameters
    ----------
    folder : path
        The fit folder (exists).
    labels_img : nibabel image
        The labels, 0 = background.
    method : str
        The clustering method (part of the atlas label).
    parameters : mapping
        The estimator's parameters (JSON values), recorded in the sidecar.
    run_names : sequence of str
        The fitted runs' names: their subjects get the dseg image.
    sources : sequence of str
        The inputs (recorded as ``Sources``).
    space : str, optional
        The inputs' ``space-`` label, added to the file names.
    license : str, default="CC0"
        ``License`` of the atlas description.

    Returns
    -------
    dict
        ``{"atlas": label, "lut": relative path, "dseg": [relative paths], "description", "sidecar",
        "names": the parcel names}``.
    """
    folder = Path(folder)
    labels = np.asarray(labels_img.dataobj)
    n_parcels = int(np.unique(labels[labels > 0]).size)
    label = atlas_label(method, n_parcels)
    name = f"daskparcel {method} parcellation, {n_parcels} parcels"
    write_dataset_description(folder, name)
    _write_json(
        folder / f"atlas-{label}_description.json",
        {
            "AtlasName": label,
            "License": license,
            "Description": f"{name}, learned from {len(run_names)} run(s) by daskparcel {__version__} "
            "(out-of-core nilearn Parcellations).",
            "ReferencesAndLinks": REFERENCES,
        },
    )
    table = look_up_table(labels_img)
    _write_tsv(folder / f"atlas-{label}_dseg.tsv", table, float_format="%.3f")
    _write_json(
        folder / f"atlas-{label}_dseg.json",
        {
            "Description": name,
            "SpatialReference": "bids::mean.nii.gz",
            "Sources": [str(s) for s in sources],
            "Dimensions": 3,
            "Resolution": "voxel size "
            + " x ".join(f"{v:.3g}" for v in labels_img.header.get_zooms()[:3])
            + " mm",
            "CoordinateReportStrategy": "center_of_mass",
            "Parcellation": {"Method": method, "NumberOfParcels": n_parcels},
            "Parameters": dict(parameters),
            "size": {"Description": "Number of voxels of the parcel", "Units": "voxel"},
            "x": {
                "Description": "x of the parcel's centre of mass (world coordinates)",
                "Units": "mm",
            },
            "y": {
                "Description": "y of the parcel's centre of mass (world coordinates)",
                "Units": "mm",
            },
            "z": {
                "Description": "z of the parcel's centre of mass (world coordinates)",
                "Units": "mm",
            },
        },
    )
    img = nib.Nifti1Image(labels.astype(np.int32), labels_img.affine)
    img.header.set_xyzt_units("mm")
    img.header.set_intent("label")
    subjects = sorted({e["sub"] for e in run_entities(run_names)})
    dseg_name = lambda sub: (  # noqa: E731
        f"sub-{sub}" + (f"_space-{space}" if space else "") + f"_atlas-{label}_dseg.nii.gz"
    )
    first = folder / f"sub-{subjects[0]}" / "anat" / dseg_name(subjects[0])
    first.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, first)
    dsegs = [first]
    for sub in subjects[1:]:
        target = folder / f"sub-{sub}" / "anat" / dseg_name(sub)
        _link_or_copy(first, target)
        dsegs.append(target)
    return {
        "atlas": label,
        "lut": f"atlas-{label}_dseg.tsv",
        "description": f"atlas-{label}_description.json",
        "sidecar": f"atlas-{label}_dseg.json",
        "dseg": [str(p.relative_to(folder)) for p in dsegs],
        "names": list(table["name"][table["index"] > 0]),
    }


def write_run_tables(
    folder: str | os.PathLike[str],
    signals: Sequence[Any],
    run_names: Sequence[str],
    *,
    label: str,
    names: Sequence[str],
    kinds: Sequence[str] = (),
    space: str | None = None,
) -> dict[str, list[str]]:
    """Write each run's parcel time series and connectomes as TSV tables (columns: the parcel names).

    One dask task per run reads the run's signals, writes its time series and its matrices and returns them
    for the group means, summed as a tree: memory is a few runs' (time, parcel) series and (parcel, parcel)
    matrices, whatever the number of runs. ``"tangent"`` keeps each run's covariance in a scratch file of the
    folder (removed at the end) for the geometric mean, one pass over them per iteration.

    Parameters
    ----------
    folder : path
        The dataset folder.
    signals : sequence of (time, parcel) arrays (numpy or dask)
        One per run.
    run_names : sequence of str
        The runs' names (their BIDS entities, see :func:`run_entities`).
    label : str
        The atlas label.
    names : sequence of str
        The parcel names (the look-up table's, without the background).
    kinds : sequence of str
        Connectome kinds (:data:`daskparcel.outputs.connectomes.KINDS`) written per run
        (``*_stat-<kind>_relmat.tsv``), with the group summary at the root (nilearn's ``mean_``).
    space : str, optional
        The ``space-`` label of the runs.

    Returns
    -------
    dict
        ``{"timeseries": [paths], "relmat": [paths], "group_relmat": [paths]}`` relative to ``folder``.
    """
    import dask

    from daskparcel.outputs.connectomes import (
        check_kinds,
        geometric_mean_of,
        tangent_whitening,
        tree_sum,
    )

    folder = Path(folder)
    names = list(names)
    kinds = check_kinds(kinds)
    direct = [k for k in kinds if k != "tangent"]
    if "tangent" in kinds and len(run_names) < 2:
        raise InputError(
            "connectome 'tangent': one run; it is each run's deviation from the group mean, give two runs "
            "or more (or another kind)"
        )
    written: dict[str, list[str]] = {"timeseries": [], "relmat": [], "group_relmat": []}
    scratch = folder / ".daskparcel-covariances"
    tasks: list[Any] = []
    relmats: list[Path] = []
    covariances: list[Path] = []
    for index, (entities, values) in enumerate(zip(run_entities(run_names), signals, strict=True)):
        if np.shape(values)[1] != len(names):
            raise InputError(
                f"signals of run {run_names[index]}: {np.shape(values)[1]} parcels, the look-up table names "
                f"{len(names)}; give the signals of this atlas"
            )
        sub_folder, prefix = run_prefix(entities, space)
        (folder / sub_folder).mkdir(parents=True, exist_ok=True)
        series = sub_folder / f"{prefix}_atlas-{label}_stat-mean_timeseries.tsv"
        paths = {
            k: sub_folder / f"{prefix}_atlas-{label}_stat-{stat_label(k)}_relmat.tsv" for k in kinds
        }
        cov = scratch / f"{index}.npy" if "tangent" in kinds else None
        tasks.append(
            dask.delayed(_write_run)(
                values, folder / series, {k: folder / paths[k] for k in direct}, names, cov
            )
        )
        written["timeseries"].append(str(series))
        written["relmat"] += [str(paths[k]) for k in kinds]
        if cov is not None:
            relmats.append(paths["tangent"])
            covariances.append(cov)
    if "tangent" in kinds:
        scratch.mkdir(exist_ok=True)
    (sums,) = dask.compute(tree_sum(tasks))
    n_runs = len(tasks)
    for kind in direct:
        mean = sums[kind] / n_runs
        path = Path(f"atlas-{label}_stat-{stat_label(kind)}_relmat.tsv")
        _write_tsv(folder / path, pd.DataFrame(0.5 * (mean + mean.T), columns=names), "%.17g")
        written["group_relmat"].append(str(path))
    if "tangent" in kinds:

        def mean_of(function: Any) -> np.ndarray:
            parts = [dask.delayed(_apply_to_saved)(function, c) for c in covariances]
            (total,) = dask.compute(tree_sum(parts))
            return np.asarray(total) / n_runs

        gmean = geometric_mean_of(mean_of)
        whitening = tangent_whitening(gmean)
        dask.compute(
            [
                dask.delayed(_write_tangent)(c, whitening, folder / r, names)
                for c, r in zip(covariances, relmats, strict=True)
            ]
        )
        path = Path(f"atlas-{label}_stat-tangent_relmat.tsv")
        _write_tsv(folder / path, pd.DataFrame(gmean, columns=names), "%.17g")
        written["group_relmat"].append(str(path))
        shutil.rmtree(scratch, ignore_errors=True)
    return written


def _write_run(
    values: Any,
    series: Path,
    relmats: Mapping[str, Path],
    names: list[str],
    covariance: Path | None,
) -> dict[str, np.ndarray]:
    """One run's task: its time series table, its matrices (returned for the group means), its covariance."""
    from daskparcel.outputs.connectomes import run_matrix

    values = np.asarray(values)
    _write_tsv(series, pd.DataFrame(values, columns=names))
    x = values.astype(np.float64)
    out = {}
    for kind, path in relmats.items():
        out[kind] = run_matrix(x, kind)
        _write_tsv(path, pd.DataFrame(out[kind], columns=names), "%.17g")
    if covariance is not None:
        np.save(covariance, run_matrix(x, "covariance"))
    return out


def _apply_to_saved(function: Any, path: Path) -> np.ndarray:
    return np.asarray(function(np.load(path)))


def _write_tangent(covariance: Path, whitening: np.ndarray, path: Path, names: list[str]) -> None:
    from daskparcel.outputs.connectomes import tangent_matrix

    matrix = tangent_matrix(np.load(covariance), whitening)
    _write_tsv(path, pd.DataFrame(matrix, columns=names), "%.17g")


def read_run_signals(store: str | os.PathLike[str], runs: Sequence[Any]) -> list[Any]:
    """Each run's (time, parcel) values (lazy) from a written ``parcel_signals`` zarr store, split as ``runs``."""
    import xarray as xr

    stored = xr.open_zarr(store, zarr_format=3, consolidated=False)["parcel_signals"]
    values = stored.data
    bounds = np.cumsum([0, *(int(r.sizes["time"]) for r in runs)])
    return [values[a:b] for a, b in itertools.pairwise(bounds)]


def write_transform_tables(
    folder: str | os.PathLike[str],
    store: str | os.PathLike[str],
    runs: Sequence[Any],
    labels_img: nib.spatialimages.SpatialImage,
    *,
    labels: str | os.PathLike[str],
    kinds: Sequence[str] = (),
    inputs: Sequence[Any] = (),
    overwrite: bool = False,
) -> dict[str, list[str]]:
    """The tables of ``daskparcel transform --tables DIR``: a BIDS derivative with each run's parcel time series.

    Parameters
    ----------
    folder : path
        The folder to write (written to ``folder.partial`` and moved in when complete).
    store : path
        The ``parcel_signals`` zarr store just written by ``transform``.
    runs : sequence of xarray.DataArray
        The runs' lazy signals (their sizes and ``run`` names).
    labels_img : nibabel image
        The labels used (names the columns: :func:`look_up_table`).
    labels : path
        The labels image or fit folder given: a fit folder's atlas label is kept, else the file name's.
    kinds : sequence of str
        Connectome kinds to write per run.
    inputs : sequence
        The runs given (for the ``space-`` entity).
    overwrite : bool
        Replace an existing ``folder``.

    Returns
    -------
    dict
        The written tables (see :func:`write_run_tables`).
    """
    from daskparcel.outputs.results import check_out_dir
    from daskparcel.store.runs import replace_dir

    out = check_out_dir(folder, overwrite=overwrite)
    labels = Path(labels)
    label = None
    if labels.is_dir() and (labels / "fit.json").exists():
        label = json.loads((labels / "fit.json").read_text()).get("bids", {}).get("atlas")
    if label is None:
        name = labels.name.split(".")[0] if not labels.is_dir() else labels.name
        label = bids_label(name)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        write_dataset_description(partial, f"daskparcel parcel time series, atlas {label}")
        values = read_run_signals(store, runs)
        names = [str(r["run"].values[0]) for r in runs]
        table = look_up_table(labels_img)
        written = write_run_tables(
            partial,
            values,
            names,
            label=label,
            names=[str(n) for n in runs[0]["name"].values]  # an atlas's look-up table
            if "name" in runs[0].coords
            else list(table["name"][table["index"] > 0]),
            kinds=kinds,
            space=common_space(inputs),
        )
        replace_dir(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return written
