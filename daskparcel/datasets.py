"""Synthetic fMRI runs and cohorts with a known (planted) parcellation, on MNI grids, made offline.

The brain mask and the baseline intensity come from the MNI152 template that nilearn ships (no download).
Inside the brain, each voxel's signal is

    baseline_v * (1 + drift) + amplitude_v * course_{parcel(v)}(t) + noise_v(t)

where each planted parcel (a spatially contiguous region grown from a random seed) has its own AR(1) time course
per subject, the voxel noise is AR(1) too (lag-1 autocorrelation ~0.25, as in real resting-state data), and the
noise level is set from a temporal SNR drawn in 50-120 (the range measured on the real rapidtide scan).
Subjects differ by their time courses, voxel amplitudes and noise; they share the planted parcellation, which is
the ground truth a group parcellation should recover.

Every block of volumes is generated independently from ``(random_state, subject, block)`` so a run is a lazy dask
array: a 2 mm cohort of any size is written chunk by chunk without ever being in memory.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from scipy import ndimage

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

# The MNI grids of nilearn's examples: 4 mm (development fMRI, 50x59x50) and FSL's standard 2 mm (91x109x91).
GRIDS: dict[int, tuple[np.ndarray, tuple[int, int, int]]] = {
    4: (np.array([[4.0, 0, 0, -96], [0, 4, 0, -132], [0, 0, 4, -78], [0, 0, 0, 1]]), (50, 59, 50)),
    2: (np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]]), (91, 109, 91)),
}
BLOCK = 16  # volumes generated together (fixed, so values do not depend on the storage chunking)
AR1 = 0.25


def mni_grid(resolution: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the 4 mm or 2 mm MNI grid."""
    if resolution not in GRIDS:
        raise InputError(
            f"resolution={resolution}: synthetic data exist on 4 or 2 mm MNI grids; pass 4 or 2"
        )
    affine, shape = GRIDS[resolution]
    return affine.copy(), shape


@functools.lru_cache(maxsize=4)
def _template(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(brain mask, T1 intensity in [0, 1]) of nilearn's MNI152 template on the grid."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template
    from nilearn.image import resample_img

    affine, shape = mni_grid(resolution)
    mask_img = resample_img(
        load_mni152_brain_mask(), target_affine=affine, target_shape=shape, interpolation="nearest",
        force_resample=True, copy_header=True,
    )  # fmt: skip
    t1_img = resample_img(
        load_mni152_template(), target_affine=affine, target_shape=shape, interpolation="linear",
        force_resample=True, copy_header=True,
    )  # fmt: skip
    mask = np.asarray(mask_img.dataobj) > 0
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    t1 = np.asarray(t1_img.dataobj, dtype=np.float64)
    t1 = (t1 - t1[mask].min()) / max(np.ptp(t1[mask]), 1e-6)
    return mask, np.clip(t1, 0, 1)


def brain_mask(resolution: int = 4) -> nib.Nifti1Image:
    """The MNI152 brain mask (nilearn's template, largest connected component) on the 4 or 2 mm grid."""
    mask, _ = _template(resolution)
    return nib.Nifti1Image(mask.astype(np.uint8), mni_grid(resolution)[0])


@functools.lru_cache(maxsize=8)
def _planted(resolution: int, n_parcels: int, random_state: int) -> np.ndarray:
    mask, _ = _template(resolution)
    n_voxels = int(mask.sum())
    if not 1 <= n_parcels <= n_voxels:
        raise InputError(
            f"n_parcels={n_parcels}: must be between 1 and the {n_voxels} brain voxels"
        )
    rng = np.random.default_rng([random_state, 7919])
    seeds = rng.choice(n_voxels, size=n_parcels, replace=False)
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[tuple(c[seeds] for c in np.nonzero(mask))] = np.arange(1, n_parcels + 1, dtype=np.int32)
    # grow all seeds at once along the 6-neighbour lattice: every region stays connected
    structure = ndimage.generate_binary_structure(3, 1)
    while True:
        free = mask & (labels == 0)
        if not free.any():
            break
        grown = ndimage.grey_dilation(labels, footprint=structure)
        take = free & (grown > 0)
        if not take.any():
            break
        labels[take] = grown[take]
    return labels


def planted_parcellation(
    resolution: int = 4, n_parcels: int = 50, random_state: int = 0
) -> nib.Nifti1Image:
    """The ground-truth labels image (int32, 0 = background, 1..K) of the synthetic data."""
    return nib.Nifti1Image(_planted(resolution, n_parcels, random_state), mni_grid(resolution)[0])


@dataclass(frozen=True)
class _Subject:
    resolution: int
    n_volumes: int
    n_parcels: int
    subject: int
    random_state: int


@functools.lru_cache(maxsize=4)
def _subject_maps(spec: _Subject) -> dict[str, np.ndarray]:
    mask, t1 = _template(spec.resolution)
    labels = _planted(spec.resolution, spec.n_parcels, spec.random_state)[mask]
    rng = np.random.default_rng([spec.random_state, spec.subject, 1])
    baseline = 600.0 + 600.0 * t1[mask]
    tsnr = rng.uniform(50, 120, size=labels.size)
    sigma = baseline / tsnr  # total temporal std of a voxel
    amplitude = sigma * rng.uniform(0.6, 0.9, size=labels.size)  # parcel signal part
    noise = np.sqrt(np.maximum(sigma**2 - amplitude**2, 1e-6))
    courses = ar1(rng, (spec.n_parcels, spec.n_volumes))  # unit-variance AR(1) course per parcel
    drift = rng.normal(0, 0.01) * np.linspace(-1, 1, spec.n_volumes)
    return {
        "labels": labels - 1,
        "baseline": baseline,
        "amplitude": amplitude,
        "noise": noise,
        "courses": courses,
        "drift": drift,
    }


def ar1(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Unit-variance AR(1) series along the last axis, started in the stationary distribution."""
    out = np.empty(shape)
    scale = np.sqrt(1 - AR1**2)
    out[:, 0] = rng.standard_normal(shape[0])
    innovations = rng.standard_normal(shape) * scale
    for t in range(1, shape[1]):
        out[:, t] = AR1 * out[:, t - 1] + innovations[:, t]
    return out


def _block(spec: _Subject, start: int, stop: int) -> np.ndarray:
    """Volumes [start, stop) of a synthetic run (x, y, z, t), float32."""
    mask, _ = _template(spec.resolution)
    maps = _subject_maps(spec)
    n = stop - start
    rng = np.random.default_rng([spec.random_state, spec.subject, 2, start])
    noise = ar1(rng, (maps["labels"].size, n)).astype(np.float32) * maps["noise"][:, None]
    signal = maps["courses"][maps["labels"], start:stop] * maps["amplitude"][:, None]
    inside = maps["baseline"][:, None] * (1 + maps["drift"][None, start:stop]) + signal + noise
    out = np.empty((*mask.shape, n), dtype=np.float32)
    background = np.abs(rng.normal(0.0, 20.0, size=(int((~mask).sum()), n))) + 5.0
    out[~mask] = background
    out[mask] = inside
    return out


def synthetic_run(
    resolution: int = 4,
    n_volumes: int = 168,
    *,
    n_parcels: int = 50,
    subject: int = 0,
    random_state: int = 0,
    t_r: float = 2.0,
    chunk_volumes: int = BLOCK,
) -> xr.Dataset:
    """A lazy synthetic BOLD run on an MNI grid, with a planted parcellation.

    Parameters
    ----------
    resolution : {4, 2}
        4 mm (50x59x50, ~nilearn's development fMRI grid) or 2 mm (91x109x91).
    n_volumes : int
        Time points (168 as nilearn's example; 300 for the scale benchmarks).
    n_parcels : int
        Planted parcels (the ground truth; :func:`planted_parcellation` gives its image).
    subject : int
        Subject index: subjects of one ``random_state`` share the planted parcellation, not their signals.
    random_state : int
        Seed of everything; the same arguments give the same values on any chunking or scheduler.
    t_r : float
        Repetition time (s).
    chunk_volumes : int
        Volumes per dask chunk (a multiple of 16 keeps one generated block per chunk).

    Returns
    -------
    xarray.Dataset
        A run in daskparcel's layout: ``bold(x, y, z, t)`` float32 (dask), attributes ``affine``, ``t_r``,
        ``voxel_size``.
    """
    if n_volumes < 1:
        raise InputError(f"n_volumes={n_volumes}: must be >= 1")
    spec = _Subject(resolution, n_volumes, n_parcels, subject, random_state)
    affine, shape = mni_grid(resolution)
    _planted(resolution, n_parcels, random_state)  # validates n_parcels now
    starts = list(range(0, n_volumes, BLOCK))
    blocks = [
        da.from_delayed(
            _delayed_block(spec, s, min(s + BLOCK, n_volumes)),
            shape=(*shape, min(s + BLOCK, n_volumes) - s),
            dtype=np.float32,
            meta=np.empty((0, 0, 0, 0), np.float32),
        )
        for s in starts
    ]
    bold = da.concatenate(blocks, axis=3).rechunk({3: chunk_volumes})
    attrs = {
        "affine": affine.tolist(),
        "voxel_size": [float(abs(affine[i, i])) for i in range(3)],
        "t_r": float(t_r),
        "t_r_source": "synthetic",
        "source": f"synthetic:res={resolution},n_volumes={n_volumes},n_parcels={n_parcels},"
        f"subject={subject},random_state={random_state}",
    }
    return xr.Dataset({"bold": (("x", "y", "z", "t"), bold)}, attrs=attrs)


def _delayed_block(spec: _Subject, start: int, stop: int):
    import dask

    return dask.delayed(_block, pure=True)(
        spec, start, stop, dask_key_name=f"synthetic-{_key(spec)}-{start}"
    )


def _key(spec: _Subject) -> str:
    import dask.base

    return dask.base.tokenize(spec)


def synthetic_cohort(
    n_subjects: int,
    resolution: int = 4,
    n_volumes: int = 168,
    *,
    n_parcels: int = 50,
    random_state: int = 0,
    t_r: float = 2.0,
) -> list[xr.Dataset]:
    """``n_subjects`` synthetic runs sharing one planted parcellation (see :func:`synthetic_run`)."""
    if n_subjects < 1:
        raise InputError(f"n_subjects={n_subjects}: must be >= 1")
    return [
        synthetic_run(
            resolution,
            n_volumes,
            n_parcels=n_parcels,
            subject=s,
            random_state=random_state,
            t_r=t_r,
        )
        for s in range(n_subjects)
    ]


def write_synthetic_nifti(
    out_dir: str | os.PathLike[str],
    n_subjects: int = 1,
    resolution: int = 4,
    n_volumes: int = 168,
    *,
    n_parcels: int = 50,
    random_state: int = 0,
    t_r: float = 2.0,
) -> tuple[list[Path], nib.Nifti1Image]:
    """Write a synthetic cohort as NIfTI files ``sub-XX_bold.nii.gz`` (streamed, volume block by block).

    Returns the file paths and the ground-truth labels image (also written as ``ground_truth_labels.nii.gz``).
    """
    from daskparcel.store.runs import to_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, run in enumerate(
        synthetic_cohort(
            n_subjects,
            resolution,
            n_volumes,
            n_parcels=n_parcels,
            random_state=random_state,
            t_r=t_r,
        )
    ):
        path = out / f"sub-{s + 1:02d}_bold.nii.gz"
        if not path.exists():
            to_nifti(run, path)
        paths.append(path)
    truth = planted_parcellation(resolution, n_parcels, random_state)
    nib.save(truth, out / "ground_truth_labels.nii.gz")
    return paths, truth
