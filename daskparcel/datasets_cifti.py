"""Synthetic CIFTI-2 dense time series (``.dtseries.nii``) with a planted parcellation, made offline.

The brain model has two cortical structures on icosphere meshes (:func:`daskparcel.datasets_surface.icosphere`,
70 mm spheres side by side) whose medial wall (a cap of each sphere facing the other) is left out, and two
subcortical voxel structures (``CIFTI_STRUCTURE_THALAMUS_LEFT`` / ``_RIGHT``: balls of voxels in a 2 mm grid).
The planted parcels are shared among the structures in proportion to their grayordinates and grown from
random seeds along the structure's neighbours (mesh edges between kept vertices, the voxels' 6-neighbour
lattice), so each is one connected region of one structure. The signals are built as in
:mod:`daskparcel.datasets_surface` (baseline, drift, an AR(1) course per parcel and subject, AR(1) noise, a
temporal SNR in 50-120); subjects share the planted parcellation, not their signals. Runs are written a block
of grayordinates at a time, so one of fs_LR's size (``subdivisions=6, subcortical_radius=14``: ~92k
grayordinates) x 1,200 frames needs tens of MB to write. :func:`synthetic_cifti_cohort` gives subjects as lazy
runs instead (each block generated when it is read, the same values), for cohorts larger than the disk.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daskparcel.datasets import ar1
from daskparcel.errors import InputError

__all__ = [
    "SyntheticCifti",
    "SyntheticCiftiCohort",
    "cifti_brain_model",
    "synthetic_cifti_cohort",
    "synthetic_cifti_run",
]

SUBCORTICAL = ("CIFTI_STRUCTURE_THALAMUS_LEFT", "CIFTI_STRUCTURE_THALAMUS_RIGHT")
VOXEL_MM = 2.0
#: grayordinates per block when a run is written (its series generated and written one block at a time)
BLOCK = 4096


@dataclass(frozen=True)
class SyntheticCifti:
    """A written synthetic dtseries: its ``path``, the cortex's ``meshes`` (a nilearn ``PolyMesh``, left and
    right) and the planted ``labels`` (1..K) of its grayordinates in file order."""

    path: Path
    meshes: Any
    labels: np.ndarray


def cifti_brain_model(subdivisions: int = 3, medial_wall: float = 0.7, radius: float = 2.6) -> tuple[Any, Any]:  # fmt: skip
    """The brain model of the synthetic runs and its meshes: ``(BrainModelAxis, PolyMesh)``.

    Parameters
    ----------
    subdivisions : int
        Of each hemisphere's icosphere (``10 * 4**n + 2`` vertices).
    medial_wall : float
        Vertices whose unit-sphere coordinate towards the other hemisphere exceeds this are left out.
    radius : float
        Of each subcortical ball, in voxels of 2 mm (2.6: 81 voxels each; 14: ~11,500, HCP's ~31k subcortical
        voxels over two structures).
    """
    from nibabel import cifti2

    from daskparcel.datasets_surface import surface_mesh

    meshes = surface_mesh(f"ico{int(subdivisions)}")
    axis = None
    for part, structure, sign in (("left", "CORTEX_LEFT", 1), ("right", "CORTEX_RIGHT", -1)):
        coords = np.asarray(meshes.parts[part].coordinates)
        unit = (coords - coords.mean(axis=0)) / 70
        kept = np.flatnonzero(sign * unit[:, 0] <= medial_wall)
        model = cifti2.BrainModelAxis.from_surface(kept, len(coords), name=structure)
        axis = model if axis is None else axis + model
    side = (
        int(np.ceil(2 * radius)) + 5
    )  # a ball per half of a (2 side, side, side) grid, 2 voxels apart
    shape = (2 * side, side, side)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * np.asarray(shape) / 2
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    for structure, x in zip(SUBCORTICAL, (side // 2, side + side // 2), strict=True):
        ball = np.linalg.norm(grid - np.array([x, side // 2, side // 2]), axis=-1) <= radius
        axis = axis + cifti2.BrainModelAxis.from_mask(ball, name=structure, affine=affine)
    return axis, meshes


def _grow(rows: np.ndarray, cols: np.ndarray, n: int, seeds: np.ndarray) -> np.ndarray:
    """Labels 0..len(seeds)-1 of ``n`` connected nodes, grown from ``seeds`` a ring at a time along edges."""
    a, b = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    labels = np.full(n, -1, dtype=np.int64)
    labels[seeds] = np.arange(len(seeds))
    while (labels < 0).any():
        front = (labels[a] >= 0) & (labels[b] < 0)
        targets, first = np.unique(b[front], return_index=True)
        labels[targets] = labels[a[front][first]]
    return labels


def _planted(geometry: Any, n_parcels: int, random_state: int) -> np.ndarray:
    from daskparcel.clustering.agglomerative import allocate_clusters

    n_comp, comp = geometry.components()
    sizes = np.bincount(comp, minlength=n_comp)
    if not n_comp <= n_parcels <= geometry.n_elements:
        raise InputError(
            f"n_parcels={n_parcels}: must be between {n_comp} (one per structure) and the "
            f"{geometry.n_elements} grayordinates"
        )
    shares = allocate_clusters(n_parcels, sizes)
    rows, cols = geometry.edges()
    rng = np.random.default_rng([random_state, 7919])
    labels = np.empty(geometry.n_elements, dtype=np.int64)
    offset = 0
    for c in range(n_comp):
        ids = np.flatnonzero(comp == c)
        local = np.full(geometry.n_elements, -1, dtype=np.int64)
        local[ids] = np.arange(len(ids))
        inside = comp[rows] == c
        seeds = rng.choice(len(ids), size=int(shares[c]), replace=False)
        grown = _grow(local[rows[inside]], local[cols[inside]], len(ids), seeds)
        labels[ids] = grown + offset
        offset += int(shares[c])
    return labels + 1


def synthetic_cifti_run(
    path: str | os.PathLike[str],
    n_volumes: int = 60,
    *,
    n_parcels: int = 30,
    subject: int = 0,
    random_state: int = 0,
    subdivisions: int = 3,
    subcortical_radius: float = 2.6,
    t_r: float = 2.0,
) -> SyntheticCifti:
    """Write a synthetic CIFTI-2 dense time series (float32) at ``path`` (a ``.dtseries.nii`` name), a block of
    grayordinates at a time (memory: one block's series, whatever the run's size).

    Parameters
    ----------
    path : path
        Where to write it.
    n_volumes : int
        Time points.
    n_parcels : int
        Planted parcels, shared among the four structures in proportion to their grayordinates.
    subject : int
        Subjects of one ``random_state`` share the planted parcellation, not their signals.
    random_state : int
        Seed of everything.
    subdivisions : int
        Of the icosphere meshes (3: 642 vertices per hemisphere before the medial wall; 6: 40,962, of which
        34,729 in the brain model, fs_LR's 32k surfaces keeping 29,696 and 29,716).
    subcortical_radius : float
        Of the two subcortical balls, in voxels (:func:`cifti_brain_model`).
    t_r : float
        The series' step, in seconds.

    Returns
    -------
    SyntheticCifti
        The path, the meshes and the planted labels.
    """
    import nibabel as nib
    from nibabel import cifti2

    if n_volumes < 2:
        raise InputError(f"n_volumes={n_volumes}: a run needs at least 2 time points")
    if not str(path).endswith(".dtseries.nii"):
        raise InputError(f"path: {path} is not a .dtseries.nii name; give one")
    axis, meshes, labels = _model(n_parcels, random_state, subdivisions, float(subcortical_radius))
    n = len(labels)
    courses, drift = _subject_series(random_state, subject, n_parcels, n_volumes)
    # the header and a placeholder (no memory: a broadcast zero), then each block of grayordinates' series in
    # place: a dtseries stores each grayordinate's series contiguously (Fortran order of (time, grayordinate))
    series = cifti2.SeriesAxis(start=0.0, step=float(t_r), size=n_volumes, unit="second")
    placeholder = np.broadcast_to(np.float32(0), (n_volumes, n))
    nib.save(cifti2.Cifti2Image(placeholder, header=(series, axis)), os.fspath(path))
    written: Any = nib.load(os.fspath(path))
    proxy = written.dataobj
    dtype, offset = np.dtype(proxy.dtype), int(proxy.offset)
    with open(path, "r+b") as handle:
        for index, first in enumerate(range(0, n, BLOCK)):
            block = _block(
                random_state, subject, index, labels[first : first + BLOCK], courses, drift
            )
            handle.seek(offset + first * n_volumes * dtype.itemsize)
            handle.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
    return SyntheticCifti(Path(path), meshes, labels)


@functools.lru_cache(maxsize=4)
def _model(
    n_parcels: int, random_state: int, subdivisions: int, subcortical_radius: float
) -> tuple[Any, Any, np.ndarray]:
    """The brain model, its meshes and the planted labels (1..K) of its grayordinates (one per process:
    ~7 s at fs_LR size)."""
    from daskparcel.geometry.cifti import CiftiGeometry

    axis, meshes = cifti_brain_model(subdivisions, radius=subcortical_radius)
    labels = _planted(CiftiGeometry.from_axis(axis, meshes), n_parcels, random_state)
    labels.setflags(write=False)
    return axis, meshes, labels


@functools.lru_cache(maxsize=4)
def _subject_series(
    random_state: int, subject: int, n_parcels: int, n_volumes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A subject's AR(1) course per planted parcel (parcel, time) and its drift (time) (kept for the next
    blocks of the run: a lazy block computes them where it runs)."""
    rng = np.random.default_rng([random_state, subject, 1])
    courses = ar1(rng, (n_parcels, n_volumes))
    drift = rng.normal(0, 0.01) * np.linspace(-1, 1, n_volumes)
    courses.setflags(write=False)
    drift.setflags(write=False)
    return courses, drift


def _block(
    random_state: int,
    subject: int,
    index: int,
    labels: np.ndarray,
    courses: np.ndarray,
    drift: np.ndarray,
) -> np.ndarray:
    """The series (grayordinate, time) float32 of block ``index`` of a run (its grayordinates' ``labels``):
    the same values whether the run is written (:func:`synthetic_cifti_run`) or lazy."""
    block_rng = np.random.default_rng([random_state, subject, 2, index])
    m, n_volumes = len(labels), courses.shape[1]
    baseline = block_rng.uniform(600, 1200, size=m)
    sigma = baseline / block_rng.uniform(50, 120, size=m)
    amplitude = sigma * block_rng.uniform(0.6, 0.9, size=m)
    noise = np.sqrt(np.maximum(sigma**2 - amplitude**2, 1e-6))
    block = (
        baseline[:, None] * (1 + drift[None, :])
        + amplitude[:, None] * courses[np.asarray(labels, dtype=np.intp) - 1]
        + noise[:, None] * ar1(block_rng, (m, n_volumes))
    )
    return block.astype(np.float32)


def _lazy_block(
    random_state: int, subject: int, index: int, labels: np.ndarray, n_parcels: int, n_volumes: int
) -> np.ndarray:
    # no dependency (its labels are in the task, the subject's courses made here): distributed queues such
    # root tasks, so runs are generated as fast as they are written, never far ahead of it
    courses, drift = _subject_series(random_state, subject, n_parcels, n_volumes)
    return _block(random_state, subject, index, labels, courses, drift)


@dataclass(frozen=True)
class SyntheticCiftiCohort:
    """Synthetic CIFTI runs that share a planted parcellation: ``runs`` (pass them as ``imgs``), the cortex's
    ``meshes`` and the planted ``labels`` (1..K) of the grayordinates in file order."""

    runs: list[Any]
    meshes: Any
    labels: np.ndarray


def synthetic_cifti_cohort(
    n_subjects: int,
    n_volumes: int = 60,
    *,
    n_parcels: int = 30,
    random_state: int = 0,
    subdivisions: int = 3,
    subcortical_radius: float = 2.6,
    t_r: float = 2.0,
    folder: str | os.PathLike[str] | None = None,
) -> SyntheticCiftiCohort:
    """``n_subjects`` synthetic CIFTI runs on one brain model with one planted parcellation: lazy (generated
    while they are read, no file) or written as ``.dtseries.nii`` files.

    A lazy run is a :class:`daskparcel.ingest.cifti.CiftiArrayRun`: a dask array of blocks of
    ``BLOCK`` grayordinates over the whole run, each generated when it is read, with the values
    :func:`synthetic_cifti_run` writes for the same arguments (so a cohort of fs_LR size, 40 x 1,200 frames,
    17 GB of float32, needs no disk), and an identity made of the arguments (the same arguments share a
    signals store).

    Parameters
    ----------
    n_subjects : int
        Runs (one per subject: ``subject=0, 1, ...`` of :func:`synthetic_cifti_run`).
    n_volumes, n_parcels, random_state, subdivisions, subcortical_radius, t_r
        As :func:`synthetic_cifti_run`.
    folder : path, optional
        Write the runs there as ``sub-XX_task-rest_bold.dtseries.nii`` (kept if already written) and give
        :class:`~daskparcel.ingest.cifti.CiftiRun` s with the meshes; None (default): lazy runs.

    Returns
    -------
    SyntheticCiftiCohort
        The runs, the meshes and the planted labels.
    """
    import dask
    import dask.array as da

    from daskparcel.geometry.cifti import CiftiGeometry
    from daskparcel.ingest.cifti import CiftiArrayRun, cifti_run

    if n_subjects < 1:
        raise InputError(f"n_subjects={n_subjects}: must be >= 1")
    if n_volumes < 2:
        raise InputError(f"n_volumes={n_volumes}: a run needs at least 2 time points")
    args = (int(n_parcels), int(random_state), int(subdivisions), float(subcortical_radius))
    axis, meshes, labels = _model(*args)
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        runs: list[Any] = []
        for s in range(n_subjects):
            path = Path(folder) / f"sub-{s + 1:02d}_task-rest_bold.dtseries.nii"
            if not path.exists():
                synthetic_cifti_run(
                    path, n_volumes, n_parcels=n_parcels, subject=s, random_state=random_state,
                    subdivisions=subdivisions, subcortical_radius=subcortical_radius, t_r=t_r,
                )  # fmt: skip
            runs.append(cifti_run(path, meshes))
        return SyntheticCiftiCohort(runs, meshes, labels)
    geometry = CiftiGeometry.from_axis(axis, meshes, float(t_r))
    n = len(labels)
    small = labels.astype(np.min_scalar_type(int(labels.max())))  # in every task: ~8 kB a block
    runs = []
    for s in range(n_subjects):
        token = dask.base.tokenize("synthetic-cifti", *args, s, int(n_volumes), float(t_r))
        blocks = [
            da.from_delayed(
                dask.delayed(_lazy_block, pure=True)(
                    random_state, s, index, small[first : first + BLOCK], n_parcels, n_volumes,
                    dask_key_name=f"synthetic-cifti-{token}-{index}",
                ),
                shape=(min(n, first + BLOCK) - first, n_volumes),
                dtype=np.float32,
                meta=np.empty((0, 0), np.float32),
            )
            for index, first in enumerate(range(0, n, BLOCK))
        ]  # fmt: skip
        data = da.concatenate(blocks, axis=0)
        name = f"sub-{s + 1:02d}_task-rest_bold"
        runs.append(CiftiArrayRun(data, geometry, f"synthetic-cifti:{token}", name, float(t_r)))
    return SyntheticCiftiCohort(runs, meshes, labels)
