"""The surface geometry: a mesh per hemisphere (nilearn's ``PolyMesh``) and a vertex mask.

The vertices of the hemispheres are numbered one after the other (``left`` then ``right``, nilearn's order of
``PolyMesh.parts``); the mask keeps some of them, and the elements of the signals store are the kept vertices in
that order. Neighbours are the mesh's edges (each face's three sides) within a hemisphere, so the two
hemispheres (and any island a mask cuts) are separate components: ward, complete, average and rena share K
among them in proportion and no parcel spans both hemispheres.

In the signals pass a surface run is a ``bold(x, y, z, t)`` of shape ``(n_vertices, 1, 1, t)`` on the identity
affine (:meth:`SurfaceGeometry.grid_mask` is its mask): the pass and the store need nothing else. Nothing
spatial is asked of that grid: neighbours, components and images come from this class. Smoothing on the mesh is
not done (nilearn does not smooth surface data either): :meth:`SurfaceGeometry.check_smoothing` refuses it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from daskparcel.errors import InputError

__all__ = ["SurfaceGeometry", "mesh_edges"]


def mesh_edges(faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """The edges of a triangle mesh, each once with ``rows < cols``, sorted (nilearn's ``make_edges_surface``
    set of edges).

    Parameters
    ----------
    faces : ndarray of int, shape (n_faces, 3)
    n_vertices : int

    Returns
    -------
    rows, cols : ndarray of int64
    """
    f = np.asarray(faces, dtype=np.int64)
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    key = np.unique(lo[keep] * n_vertices + hi[keep])
    return key // n_vertices, key % n_vertices


@dataclass(frozen=True, eq=False)
class SurfaceGeometry:
    """Meshes per hemisphere and the vertices kept (the mask), in nilearn's part order."""

    parts: tuple[str, ...]
    coordinates: tuple[np.ndarray, ...]
    faces: tuple[np.ndarray, ...]
    mask: np.ndarray  # (n_vertices,) bool over all parts, left then right

    kind = "surface"

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_mesh(cls, mesh: Any) -> SurfaceGeometry:
        """The geometry of a nilearn ``PolyMesh`` (every vertex kept)."""
        parts = tuple(mesh.parts)
        coords = tuple(np.asarray(mesh.parts[p].coordinates, dtype=np.float64) for p in parts)
        faces = tuple(np.asarray(mesh.parts[p].faces, dtype=np.int64) for p in parts)
        n = sum(len(c) for c in coords)
        return cls(parts, coords, faces, np.ones(n, dtype=bool))

    @property
    def n_vertices(self) -> tuple[int, ...]:
        """Vertices of each part (hemisphere)."""
        return tuple(len(c) for c in self.coordinates)

    @property
    def n_elements(self) -> int:
        """Vertices kept by the mask (the rows of the signals store)."""
        return int(self.mask.sum())

    @property
    def affine(self) -> np.ndarray:
        """The identity: the affine of the pseudo-grid the signals pass sees (no spatial meaning)."""
        return np.eye(4)

    def token(self) -> str:
        """A hash of the meshes' topology (parts, vertex counts, faces; not the coordinates nor the mask): the
        pial, white and inflated surfaces of a subject share it, and so do the runs on them."""
        digest = hashlib.sha256()
        for part, n, faces in zip(self.parts, self.n_vertices, self.faces, strict=True):
            digest.update(f"{part}:{n}".encode())
            digest.update(np.ascontiguousarray(faces, dtype=np.int64).tobytes())
        return digest.hexdigest()[:20]

    def same_mesh(self, other: Any) -> bool:
        """Whether ``other`` is a surface geometry on the same meshes (the same topology: neighbours, components
        and parcels do not depend on the coordinates)."""
        return isinstance(other, SurfaceGeometry) and other.token() == self.token()

    def describe(self) -> str:
        """e.g. ``left 10242 + right 10242 vertices``, for messages."""
        return " + ".join(f"{p} {n}" for p, n in zip(self.parts, self.n_vertices, strict=True)) + (
            " vertices"
        )

    def with_mask(self, mask: Any, name: str = "mask") -> SurfaceGeometry:
        """This geometry restricted to ``mask`` (a boolean ``SurfaceImage`` on the same meshes, or None: all)."""
        if mask is None:
            return replace(self, mask=np.ones(sum(self.n_vertices), dtype=bool))
        values = self.vertex_values(mask, name)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise InputError(
                f"{name}: a surface mask must hold one value per vertex, got data of shape "
                f"{values.shape}; pass a SurfaceImage of booleans (one column)"
            )
        kept = values != 0
        if not kept.any():
            raise InputError(f"{name}: the surface mask keeps no vertex; pass a mask with vertices")
        return replace(self, mask=kept)

    def vertex_values(self, img: Any, name: str) -> np.ndarray:
        """The data of a ``SurfaceImage`` on these meshes, hemispheres stacked (vertex[, time]); refused with an
        InputError when it is not a SurfaceImage or its parts or vertex counts differ."""
        from nilearn.surface import SurfaceImage

        if not isinstance(img, SurfaceImage):
            raise InputError(
                f"{name}: a {type(img).__name__} for surface runs; pass a nilearn SurfaceImage on the runs' "
                "meshes"
            )
        counts = tuple(
            int(np.asarray(img.data.parts[p]).shape[0]) if p in img.data.parts else -1
            for p in self.parts
        )
        if tuple(img.data.parts) != self.parts or counts != self.n_vertices:
            theirs = " + ".join(f"{p} {np.asarray(v).shape[0]}" for p, v in img.data.parts.items())
            raise InputError(
                f"{name}: its data have {theirs} vertices, the runs' meshes {self.describe()}; pass "
                "it on the runs' meshes (the same hemispheres and vertices)"
            )
        return np.concatenate([np.asarray(img.data.parts[p]) for p in self.parts], axis=0)

    # ---------------------------------------------------------------------- what the pipeline asks
    def grid_mask(self) -> np.ndarray:
        """The mask as the signals pass sees it: (n_vertices, 1, 1) bool."""
        return self.mask.reshape(-1, 1, 1)

    @staticmethod
    def check_smoothing(fwhm: Any) -> None:
        """Refuse a smoothing of surface runs (not done on meshes)."""
        if fwhm is not None and not (isinstance(fwhm, int | float) and float(fwhm) == 0):
            raise InputError(
                f"smoothing_fwhm={fwhm!r}: surface runs are not smoothed (nilearn does not smooth surface "
                "data either); pass smoothing_fwhm=None"
            )

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The mesh edges between kept vertices, each once (``rows < cols``), in element order."""
        index = np.full(len(self.mask), -1, dtype=np.int64)
        index[self.mask] = np.arange(self.n_elements, dtype=np.int64)
        rows, cols = [], []
        start = 0
        for faces, n in zip(self.faces, self.n_vertices, strict=True):
            a, b = mesh_edges(faces, n)
            a, b = index[a + start], index[b + start]
            keep = (a >= 0) & (b >= 0)
            rows.append(a[keep])
            cols.append(b[keep])
            start += n
        r, c = np.concatenate(rows), np.concatenate(cols)
        order = np.lexsort((np.maximum(r, c), np.minimum(r, c)))
        return np.minimum(r, c)[order], np.maximum(r, c)[order]

    def connectivity(self) -> sp.csr_matrix:
        """The mesh graph of the kept vertices, symmetric, diagonal set (as ``grid_connectivity``)."""
        from daskparcel.geometry import edges_connectivity

        rows, cols = self.edges()
        return edges_connectivity(rows, cols, self.n_elements)

    def components(self) -> tuple[int, np.ndarray]:
        """Connected components of the kept vertices (at least one per hemisphere)."""
        from daskparcel.clustering.connectivity import components

        return components(self.connectivity())

    # ------------------------------------------------------------------------------------ images
    def surface_image(self, values: np.ndarray, fill: float = 0.0) -> Any:
        """A nilearn ``SurfaceImage`` on these meshes from per-element ``values`` (element[, time]); the
        vertices out of the mask get ``fill``."""
        from nilearn.surface import InMemoryMesh, PolyMesh, SurfaceImage

        values = np.asarray(values)
        full = np.full((len(self.mask), *values.shape[1:]), fill, dtype=values.dtype)
        full[self.mask] = values
        meshes, data, start = {}, {}, 0
        for part, coords, faces, n in zip(
            self.parts, self.coordinates, self.faces, self.n_vertices, strict=True
        ):
            meshes[part] = InMemoryMesh(coords, faces)
            data[part] = full[start : start + n]
            start += n
        return SurfaceImage(mesh=PolyMesh(**meshes), data=data)

    def labels_image(self, codes: np.ndarray) -> Any:
        """The labels ``SurfaceImage`` (int32, 0 = out of the mask) of per-element codes."""
        return self.surface_image(np.asarray(codes, dtype=np.int32), fill=0)

    def mask_image(self) -> Any:
        """The mask as a boolean ``SurfaceImage``."""
        return self.surface_image(np.ones(self.n_elements, dtype=bool), fill=False)
