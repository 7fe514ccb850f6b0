"""The CIFTI geometry: a dense time series' brain model (cortical vertices and subcortical voxels), with the
cortex's meshes when they are given.

The elements are the brain model's grayordinates in file order (the columns of a ``.dtseries.nii``), one
structure after the other (e.g. ``CIFTI_STRUCTURE_CORTEX_LEFT``, ``_CORTEX_RIGHT``, ``_THALAMUS_LEFT`` ...).
Neighbours join elements of one structure only: the mesh edges between the vertices a surface structure keeps
(the medial wall is not in the brain model), and the 6-neighbour lattice between the voxels of a subcortical
structure. The structures are therefore separate components (at least one each): ward, complete, average and
rena share K among them in proportion and no parcel spans two structures; kmeans and hierarchical kmeans
run on each structure with its share of K (:meth:`CiftiGeometry.partition_by_structure`) for the same reason.

The meshes do not travel inside a dense time series: they are given with the run
(:func:`daskparcel.ingest.cifti.cifti_run`). Without them kmeans and hierarchical kmeans work (no neighbours
needed) and the connected methods are refused. In the signals pass a CIFTI run is a (grayordinate, 1, 1, time)
pseudo-grid on the identity affine, as a surface run is (:mod:`daskparcel.geometry.surface`). Smoothing is
refused as for surfaces. Images are ``Cifti2Image`` s on the brain model: a ``dlabel`` for the labels (the
look-up table as its label axis), ``dscalar`` / ``dtseries`` for values.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from daskparcel.errors import InputError
from daskparcel.geometry.surface import SurfaceGeometry, mesh_edges

logger = logging.getLogger(__name__)

__all__ = ["HEMISPHERES", "CiftiGeometry", "lattice_edges"]

#: nilearn's hemisphere names -> the CIFTI structures of the cortex.
HEMISPHERES = {"left": "CIFTI_STRUCTURE_CORTEX_LEFT", "right": "CIFTI_STRUCTURE_CORTEX_RIGHT"}


def lattice_edges(voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 6-neighbour edges between voxels (rows of ``voxels``, (n, 3) int indices), each once with
    ``rows < cols`` (positions in ``voxels``)."""
    ijk = np.asarray(voxels, dtype=np.int64)
    if len(ijk) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dims = ijk.max(axis=0) + 2  # a margin: a step of +1 never wraps into the next row
    keys = np.asarray(np.ravel_multi_index(tuple(ijk.T), tuple(dims)), dtype=np.int64)
    order = np.argsort(keys)
    rows, cols = [], []
    for axis in range(3):
        step = ijk.copy()
        step[:, axis] += 1
        target = np.asarray(np.ravel_multi_index(tuple(step.T), tuple(dims)), dtype=np.int64)
        pos = np.searchsorted(keys, target, sorter=order)
        pos = np.minimum(pos, len(keys) - 1)
        found = keys[order[pos]] == target
        rows.append(np.flatnonzero(found))
        cols.append(order[pos[found]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    return np.minimum(r, c), np.maximum(r, c)


def _hex_rgba(color: str, alpha: float) -> tuple[float, float, float, float]:
    return (*(int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)), alpha)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class CiftiGeometry:
    """A CIFTI brain model (nibabel ``BrainModelAxis``) and the meshes of its surface structures."""

    axis: Any  # nibabel.cifti2.BrainModelAxis
    #: structure name -> (coordinates, faces) of its mesh, for the surface structures that have one
    meshes: tuple[tuple[str, np.ndarray, np.ndarray], ...] = ()
    #: the repetition time of the runs (the step of the dtseries written back)
    t_r: float = 1.0

    kind = "cifti"

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_axis(cls, axis: Any, meshes: Any = None, t_r: float = 1.0, name: str = "meshes") -> CiftiGeometry:  # fmt: skip
        """The geometry of a brain model with ``meshes``: a nilearn ``PolyMesh``, or a dict ``{"left": mesh,
        "right": mesh}`` (nilearn meshes or GIfTI ``surf.gii`` paths), or None. Each mesh must have the vertex
        count its cortical structure declares (InputError naming ``name`` otherwise)."""
        structures = {s: sub for s, _, sub in axis.iter_structures()}
        found: list[tuple[str, np.ndarray, np.ndarray]] = []
        if meshes is not None:
            parts = dict(meshes.parts) if hasattr(meshes, "parts") else dict(meshes)
            unknown = set(parts) - set(HEMISPHERES)
            if unknown:
                raise InputError(
                    f"{name}: unknown hemispheres {sorted(unknown)}; give {{'left': mesh, 'right': mesh}} "
                    "(nilearn meshes or GIfTI surf.gii paths) or a nilearn PolyMesh"
                )
            for part, mesh in parts.items():
                structure = HEMISPHERES[part]
                if structure not in structures:
                    raise InputError(
                        f"{name}: a {part} mesh, and the brain model has no {structure}; give meshes only "
                        f"for its cortical structures ({', '.join(structures)})"
                    )
                coords, faces = _mesh_arrays(mesh, f"{name}[{part!r}]")
                expected = int(axis.nvertices[structure])
                if len(coords) != expected:
                    raise InputError(
                        f"{name}[{part!r}]: {len(coords)} vertices, the brain model's {structure} has "
                        f"{expected}; give the mesh the data were sampled on"
                    )
                found.append((structure, coords, faces))
        return cls(axis, tuple(found), float(t_r))

    @functools.cached_property
    def structures(self) -> list[tuple[str, slice, Any]]:
        """``(name, slice of its elements, its BrainModelAxis)`` of each structure, in file order (kept: nibabel
        takes ~0.4 s to split an fs_LR brain model, and every run's brain model is compared with the first's)."""
        return [
            (name, slice(int(span.start), int(span.start) + len(sub)), sub)
            for name, span, sub in self.axis.iter_structures()
        ]

    @property
    def n_elements(self) -> int:
        """The grayordinates (the rows of the signals store)."""
        return len(self.axis)

    @property
    def mask(self) -> np.ndarray:
        """Every grayordinate is kept (the brain model is the mask)."""
        return np.ones(self.n_elements, dtype=bool)

    @property
    def affine(self) -> np.ndarray:
        """The identity: the affine of the pseudo-grid the signals pass sees (no spatial meaning)."""
        return np.eye(4)

    def mesh_of(self, structure: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The (coordinates, faces) of a surface structure's mesh, or None."""
        for name, coords, faces in self.meshes:
            if name == structure:
                return coords, faces
        return None

    def missing_meshes(self) -> list[str]:
        """The surface structures with no mesh."""
        return [
            s for s, _, sub in self.structures if sub.surface_mask.any() and self.mesh_of(s) is None
        ]

    def token(self) -> str:
        """A hash of the brain model (structures, vertex indices and counts, voxels, volume grid): runs with the
        same token have the same grayordinates in the same order."""
        return self._token

    @functools.cached_property
    def _token(self) -> str:
        digest = hashlib.sha256()
        for name, _, sub in self.structures:
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(sub.vertex, dtype=np.int64).tobytes())
            digest.update(np.ascontiguousarray(sub.voxel, dtype=np.int64).tobytes())
            digest.update(str(self.axis.nvertices.get(name, 0)).encode())
        if self.axis.volume_shape is not None:
            digest.update(str(tuple(self.axis.volume_shape)).encode())
            digest.update(np.round(np.asarray(self.axis.affine, dtype=np.float64), 6).tobytes())
        return digest.hexdigest()[:20]

    def graph_token(self) -> str:
        """A hash of the neighbours: the brain model and the faces of the meshes. The signals store of a run does
        not depend on its meshes (its identity is the file's), the merge trees cached in it do: they are kept
        under this token."""
        digest = hashlib.sha256(self.token().encode())
        for name, _, faces in self.meshes:
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(faces, dtype=np.int64).tobytes())
        return digest.hexdigest()[:20]

    def same_mesh(self, other: Any) -> bool:
        """Whether ``other`` is a CIFTI geometry on the same brain model (and, where both have a mesh for a
        structure, the same faces)."""
        if other is self:
            return True
        if not isinstance(other, CiftiGeometry) or other.token() != self.token():
            return False
        for name, _, faces in self.meshes:
            theirs = other.mesh_of(name)
            if theirs is not None and not np.array_equal(theirs[1], faces):
                return False
        return True

    def describe(self) -> str:
        """e.g. ``CORTEX_LEFT 900 + CORTEX_RIGHT 900 + THALAMUS_LEFT 123 grayordinates``, for messages."""
        parts = [
            f"{name.replace('CIFTI_STRUCTURE_', '')} {s.stop - s.start}"
            for name, s, _ in self.structures
        ]
        return " + ".join(parts) + " grayordinates"

    def with_mask(self, mask: Any, name: str = "mask") -> CiftiGeometry:
        """This geometry (``mask`` must be None: the brain model is the mask)."""
        if mask is not None:
            raise InputError(
                f"{name}: a mask for CIFTI runs; pass mask=None (the brain model's grayordinates are "
                "the mask)"
            )
        return self

    # ---------------------------------------------------------------------- what the pipeline asks
    def grid_mask(self) -> np.ndarray:
        """The mask as the signals pass sees it: (n_grayordinates, 1, 1) bool."""
        return self.mask.reshape(-1, 1, 1)

    @staticmethod
    def check_smoothing(fwhm: Any) -> None:
        """Refuse a smoothing of CIFTI runs (as for surfaces)."""
        SurfaceGeometry.check_smoothing(fwhm)

    def check_graph(self, what: str = "the neighbours of the grayordinates") -> None:
        """Refuse ``what`` (e.g. ``method='ward'``) when a cortical structure has no mesh to take neighbours from."""
        missing = self.missing_meshes()
        if missing:
            hemis = [h for h, s in HEMISPHERES.items() if s in missing] or ["left", "right"]
            example = ", ".join(f"{h!r}: ..." for h in hemis)
            raise InputError(
                f"meshes: {what} needs the cortex's neighbours and the CIFTI runs have no mesh for "
                f"{', '.join(missing)}; pass daskparcel.cifti_run(path, meshes={{{example}}}) "
                "(or use kmeans / hierarchical_kmeans)"
            )

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Mesh edges between the vertices of each surface structure and 6-neighbour edges between the voxels
        of each volume structure, each once (``rows < cols``), in element order; none across structures."""
        self.check_graph()  # a cortical structure without its mesh has no edges to give
        rows, cols = [], []
        for name, span, sub in self.structures:
            start = int(span.start)
            if sub.surface_mask.any():
                mesh = self.mesh_of(name)
                assert mesh is not None
                n = int(self.axis.nvertices[name])
                index = np.full(n, -1, dtype=np.int64)
                index[sub.vertex] = np.arange(len(sub), dtype=np.int64)
                a, b = mesh_edges(mesh[1], n)
                a, b = index[a], index[b]
                keep = (a >= 0) & (b >= 0)
                a, b = a[keep], b[keep]
            else:
                a, b = lattice_edges(sub.voxel)
            rows.append(np.minimum(a, b) + start)
            cols.append(np.maximum(a, b) + start)
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        order = np.lexsort((c, r))
        return r[order], c[order]

    def connectivity(self) -> sp.csr_matrix:
        """The graph of the grayordinates, symmetric, diagonal set (as ``grid_connectivity``)."""
        from daskparcel.geometry import edges_connectivity

        rows, cols = self.edges()
        return edges_connectivity(rows, cols, self.n_elements)

    def components(self) -> tuple[int, np.ndarray]:
        """Connected components of the grayordinates (at least one per structure)."""
        from daskparcel.clustering.connectivity import components

        return components(self.connectivity())

    def structure_of(self) -> np.ndarray:
        """The index (in :attr:`structures`) of each element's structure."""
        out = np.empty(self.n_elements, dtype=np.int64)
        for i, (_, span, _) in enumerate(self.structures):
            out[span] = i
        return out

    def partition_by_structure(self, method: Any, job: Any) -> np.ndarray:
        """Labels 0..K-1 of a partition ``method`` (kmeans, hierarchical kmeans: ``method.labels(job)``) run on
        each structure with a share of ``job.n_clusters`` proportional to its grayordinates, so that no parcel
        spans two structures (as for the connected methods, whose graph has no edge between structures: rena
        runs on the whole graph, which shares K among its components itself)."""
        import dataclasses

        from daskparcel.clustering.agglomerative import allocate_clusters

        labels = method.labels
        if method.name == "rena":
            return np.asarray(labels(job))

        structure = self.structure_of()
        sizes = np.bincount(structure, minlength=len(self.structures))
        shares = allocate_clusters(int(job.n_clusters), sizes, name="n_parcels")
        logger.info(
            "CIFTI: %d structures clustered one by one with %s of the %d parcels (in proportion to their "
            "grayordinates)",
            len(shares),
            ", ".join(str(int(k)) for k in shares),
            job.n_clusters,
        )
        out = np.empty(self.n_elements, dtype=np.int64)
        offset = 0
        for index, k in enumerate(shares):
            ids = np.flatnonzero(structure == index)
            sub = dataclasses.replace(
                job,
                features=np.asarray(job.features)[ids],
                n_clusters=int(k),
                mask=np.ones((len(ids), 1, 1), dtype=bool),
                signals=None if job.signals is None else job.signals[ids],
                geometry=None,
            )
            out[ids] = np.asarray(labels(sub), dtype=np.int64) + offset
            offset += int(k)
        return out

    # ------------------------------------------------------------------------------------ images
    def surface_image(self, values: np.ndarray, fill: float = 0.0) -> Any:
        """A ``Cifti2Image`` of per-element ``values``: a dscalar (element,) or a dtseries (element, time) of
        step ``t_r`` (the name is the one the pipeline calls on every non-voxel geometry)."""
        from nibabel import cifti2

        values = np.asarray(values)
        first: Any
        if values.ndim == 1:
            first = cifti2.ScalarAxis(["values"])
            data = values[None, :]
        else:
            first = cifti2.SeriesAxis(start=0.0, step=self.t_r, size=values.shape[1], unit="second")
            data = values.T
        return cifti2.Cifti2Image(np.ascontiguousarray(data), header=(first, self.axis))

    def labels_image(
        self, codes: np.ndarray, names: list[str] | None = None, colors: list[str] | None = None
    ) -> Any:
        """The ``dlabel`` ``Cifti2Image`` of per-element codes (1..K), its label axis the look-up table (0 =
        ``???``, transparent; ``parcelNNN`` with :func:`daskparcel.outputs.bids.parcel_colors` unless given)."""
        from nibabel import cifti2

        from daskparcel.outputs.bids import parcel_colors, parcel_names

        codes = np.asarray(codes, dtype=np.int32)
        k = int(codes.max(initial=0))
        names = names or parcel_names(np.arange(1, k + 1))
        colors = colors or parcel_colors(k)
        table: dict[int, tuple[str, tuple[float, float, float, float]]] = {0: ("???", (0, 0, 0, 0))}
        for i in range(1, k + 1):
            table[i] = (names[i - 1], _hex_rgba(colors[i - 1], 1.0))
        header = (cifti2.LabelAxis(["parcels"], table), self.axis)
        return cifti2.Cifti2Image(codes[None, :].astype(np.float32), header=header)

    def mask_image(self) -> Any:
        """The mask (every grayordinate) as a dscalar of ones."""
        return self.surface_image(np.ones(self.n_elements, dtype=np.float32))


def _mesh_arrays(mesh: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates, faces) of a nilearn mesh or a GIfTI ``surf.gii`` path."""
    import os

    if isinstance(mesh, str | os.PathLike):
        from nilearn.surface import load_surf_mesh

        try:
            loaded = load_surf_mesh(os.fspath(mesh))
        except Exception as exc:  # nilearn raises several types for unreadable files
            raise InputError(
                f"{name}: not a readable mesh ({type(exc).__name__}: {exc}); give a GIfTI surf.gii"
            ) from exc
        return np.asarray(loaded.coordinates, np.float64), np.asarray(loaded.faces, np.int64)
    if hasattr(mesh, "coordinates") and hasattr(mesh, "faces"):
        return np.asarray(mesh.coordinates, np.float64), np.asarray(mesh.faces, np.int64)
    raise InputError(
        f"{name}: a {type(mesh).__name__}; give a nilearn mesh or a GIfTI surf.gii path"
    )
