"""Synthetic CIFTI-2 dense time series (``.dtseries.nii``) with a planted parcellation, made offline.

The brain model has two cortical structures on icosphere meshes (:func:`daskparcel.datasets_surface.icosphere`,
70 mm spheres side by side) whose medial wall (a cap of each sphere facing the other) is left out, and two
subcortical voxel structures (``CIFTI_STRUCTURE_THALAMUS_LEFT`` / ``_RIGHT``: balls of voxels in a 2 mm grid).
The planted parcels are shared among the structures in proportion to their grayordinates and grown from
random seeds along the structure's neighbours (mesh edges between kept vertices, the voxels' 6-neighbour
lattice), so each is one connected region of one structure. The signals are built as in
:mod:`daskparcel.datasets_surface` (baseline, drift, an AR(1) course per parcel and subject, AR(1) noise, a
temporal SNR in 50-120); subjects share the planted parcellation, not their signals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daskparcel.datasets import ar1
from daskparcel.errors import InputError

__all__ = ["SyntheticCifti", "cifti_brain_model", "synthetic_cifti_run"]

VOLUME_SHAPE = (16, 16, 16)
VOLUME_AFFINE = np.array(
    [[2.0, 0, 0, -16], [0, 2.0, 0, -16], [0, 0, 2.0, -16], [0, 0, 0, 1]]
)  # fmt: skip
SUBCORTICAL = {
    "CIFTI_STRUCTURE_THALAMUS_LEFT": (5, 8, 8),
    "CIFTI_STRUCTURE_THALAMUS_RIGHT": (11, 8, 8),
}


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
        Of each subcortical ball, in voxels.
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
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in VOLUME_SHAPE), indexing="ij"), axis=-1)
    for structure, center in SUBCORTICAL.items():
        ball = np.linalg.norm(grid - np.asarray(center), axis=-1) <= radius
        axis = axis + cifti2.BrainModelAxis.from_mask(ball, name=structure, affine=VOLUME_AFFINE)
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
    t_r: float = 2.0,
) -> SyntheticCifti:
    """Write a synthetic CIFTI-2 dense time series (float32) at ``path`` (a ``.dtseries.nii`` name).

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
        Of the icosphere meshes (3: 642 vertices per hemisphere before the medial wall).
    t_r : float
        The series' step, in seconds.

    Returns
    -------
    SyntheticCifti
        The path, the meshes and the planted labels.
    """
    import nibabel as nib
    from nibabel import cifti2

    from daskparcel.geometry.cifti import CiftiGeometry

    if n_volumes < 2:
        raise InputError(f"n_volumes={n_volumes}: a run needs at least 2 time points")
    if not str(path).endswith(".dtseries.nii"):
        raise InputError(f"path: {path} is not a .dtseries.nii name; give one")
    axis, meshes = cifti_brain_model(subdivisions)
    geometry = CiftiGeometry.from_axis(axis, meshes)
    labels = _planted(geometry, n_parcels, random_state)
    rng = np.random.default_rng([random_state, subject, 1])
    n = len(labels)
    baseline = rng.uniform(600, 1200, size=n)
    sigma = baseline / rng.uniform(50, 120, size=n)
    amplitude = sigma * rng.uniform(0.6, 0.9, size=n)
    noise = np.sqrt(np.maximum(sigma**2 - amplitude**2, 1e-6))
    courses = ar1(rng, (n_parcels, n_volumes))
    drift = rng.normal(0, 0.01) * np.linspace(-1, 1, n_volumes)
    noise_rng = np.random.default_rng([random_state, subject, 2])
    data = (
        baseline[:, None] * (1 + drift[None, :])
        + amplitude[:, None] * courses[labels - 1]
        + noise[:, None] * ar1(noise_rng, (n, n_volumes))
    )
    series = cifti2.SeriesAxis(start=0.0, step=float(t_r), size=n_volumes, unit="second")
    image = cifti2.Cifti2Image(data.T.astype(np.float32), header=(series, axis))
    nib.save(image, os.fspath(path))
    return SyntheticCifti(Path(path), meshes, labels)
