"""Synthetic surface runs with a planted parcellation on nilearn's fsaverage meshes, made offline.

The planted parcels are grown from random seeds (shared among the hemispheres in proportion to their vertices)
along the mesh's edges, all at once, one ring a round: every parcel is one connected region of one hemisphere.
Each vertex's signal is built as in :mod:`daskparcel.datasets`:

    baseline_v * (1 + drift) + amplitude_v * course_{parcel(v)}(t) + noise_v(t)

with an AR(1) time course per parcel and subject, AR(1) noise (lag-1 autocorrelation 0.25) and a temporal SNR
drawn in 50-120. Subjects share the planted parcellation, not their signals.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from daskparcel.datasets import ar1
from daskparcel.errors import InputError
from daskparcel.geometry.surface import SurfaceGeometry, mesh_edges

__all__ = ["icosphere", "planted_surface_parcellation", "surface_mesh", "synthetic_surface_run"]


def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """An icosahedron subdivided ``subdivisions`` times, on the unit sphere: (coordinates, faces).

    Each subdivision splits every triangle into four at its edges' midpoints: ``10 * 4**n + 2`` vertices (n = 5:
    10,242, fsaverage5's count; n = 6: 40,962, more than fs_LR's 32,492 per hemisphere).
    """
    t = (1 + 5**0.5) / 2
    coords = np.array(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
         [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float64,
    )  # fmt: skip
    faces = np.array(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
         [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64,
    )  # fmt: skip
    for _ in range(int(subdivisions)):
        n = len(coords)
        a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
        pairs = np.stack([np.concatenate([a, b, c]), np.concatenate([b, c, a])])
        key = np.minimum(*pairs) * n + np.maximum(*pairs)
        unique, inverse = np.unique(key, return_inverse=True)
        mid = n + inverse.reshape(3, -1)  # the midpoint of (a, b), (b, c), (c, a) of each face
        coords = np.concatenate([coords, (coords[unique // n] + coords[unique % n]) / 2])
        ab, bc, ca = mid
        faces = np.concatenate(
            [np.stack(f, axis=1) for f in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))]
        )
    return coords / np.linalg.norm(coords, axis=1, keepdims=True), faces


@functools.lru_cache(maxsize=2)
def surface_mesh(mesh: str = "fsaverage5") -> Any:
    """A ``PolyMesh`` (left and right): nilearn's fsaverage ``mesh`` (its pial surfaces; fsaverage5 ships with
    nilearn), or ``"ico<n>"``: two icospheres of radius 70 mm subdivided n times, side by side (for runs at
    scale: ``"ico6"`` has 40,962 vertices per hemisphere)."""
    if mesh.startswith("ico") and mesh[3:].isdigit():
        from nilearn.surface import InMemoryMesh, PolyMesh

        coords, faces = icosphere(int(mesh[3:]))
        shift = np.array([75.0, 0.0, 0.0])
        return PolyMesh(
            left=InMemoryMesh(coords * 70 - shift, faces),
            right=InMemoryMesh(coords * 70 + shift, faces),
        )
    from nilearn.datasets import load_fsaverage

    return load_fsaverage(mesh)["pial"]


def _grow(faces: np.ndarray, n_vertices: int, seeds: np.ndarray) -> np.ndarray:
    """Labels 0..len(seeds)-1 of a hemisphere's vertices, grown from ``seeds`` by rings along the mesh edges."""
    rows, cols = mesh_edges(faces, n_vertices)
    a, b = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    labels = np.full(n_vertices, -1, dtype=np.int64)
    labels[seeds] = np.arange(len(seeds))
    while (labels < 0).any():
        front = (labels[a] >= 0) & (labels[b] < 0)
        if (
            not front.any()
        ):  # vertices no edge reaches: each its own nearest seed's region is not defined
            raise InputError("mesh: has vertices unreachable from the seeds; use a connected mesh")
        # each free vertex takes the label of its first labelled neighbour (in edge order)
        targets, first = np.unique(b[front], return_index=True)
        labels[targets] = labels[a[front][first]]
    return labels


@functools.lru_cache(maxsize=4)
def _planted(mesh: str, n_parcels: int, random_state: int) -> np.ndarray:
    geometry = SurfaceGeometry.from_mesh(surface_mesh(mesh))
    sizes = np.asarray(geometry.n_vertices)
    if not len(sizes) <= n_parcels <= sizes.sum():
        raise InputError(
            f"n_parcels={n_parcels}: must be between {len(sizes)} (one per hemisphere) and the "
            f"{sizes.sum()} vertices"
        )
    from daskparcel.clustering.agglomerative import allocate_clusters

    shares = allocate_clusters(n_parcels, sizes)
    rng = np.random.default_rng([random_state, 7919])
    out, offset = [], 0
    for faces, n, k in zip(geometry.faces, sizes, shares, strict=True):
        seeds = rng.choice(n, size=int(k), replace=False)
        out.append(_grow(faces, int(n), seeds) + offset)
        offset += int(k)
    return np.concatenate(out)


def planted_surface_parcellation(
    n_parcels: int = 100, random_state: int = 0, mesh: str = "fsaverage5"
) -> Any:
    """The ground truth of :func:`synthetic_surface_run`: a labels ``SurfaceImage`` (int32, 1..K)."""
    geometry = SurfaceGeometry.from_mesh(surface_mesh(mesh))
    return geometry.labels_image(_planted(mesh, n_parcels, random_state) + 1)


def synthetic_surface_run(
    n_volumes: int = 100,
    *,
    n_parcels: int = 100,
    subject: int = 0,
    random_state: int = 0,
    mesh: str = "fsaverage5",
) -> Any:
    """A synthetic surface run (nilearn ``SurfaceImage``, data (vertex, time) per hemisphere, float32).

    Parameters
    ----------
    n_volumes : int
        Time points.
    n_parcels : int
        Planted parcels, shared among the hemispheres (:func:`planted_surface_parcellation` is the truth).
    subject : int
        Subject index: subjects of one ``random_state`` share the planted parcellation, not their signals.
    random_state : int
        Seed of everything.
    mesh : str
        A nilearn fsaverage mesh (``"fsaverage5"`` ships with nilearn) or ``"ico<n>"`` (:func:`surface_mesh`).
    """
    if n_volumes < 2:
        raise InputError(f"n_volumes={n_volumes}: a run needs at least 2 time points")
    labels = _planted(mesh, n_parcels, random_state)
    geometry = SurfaceGeometry.from_mesh(surface_mesh(mesh))
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
        + amplitude[:, None] * courses[labels]
        + noise[:, None] * ar1(noise_rng, (n, n_volumes))
    )
    return geometry.surface_image(data.astype(np.float32))
