"""Surface runs: nilearn ``SurfaceImage`` s and GIfTI ``func.gii`` pairs -> runs with their surface geometry.

A run is a ``SurfaceImage`` whose data are (vertex, time) per hemisphere (nilearn's layout); a pair of GIfTI
functional files (one per hemisphere, a data array per time point) with their meshes is read into one by
:func:`gifti_run`. Each becomes a :class:`~daskparcel.store.signals.RunInput` whose ``bold`` is the hemispheres'
vertices stacked as a (vertex, 1, 1, time) pseudo-grid (see :mod:`daskparcel.geometry.surface`) and whose
``geometry`` is the meshes; its identity hashes the data and the meshes.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from daskparcel._dask import user_array
from daskparcel.errors import InputError
from daskparcel.geometry.surface import SurfaceGeometry
from daskparcel.store.signals import RunInput

__all__ = ["gifti_run", "is_surface_image", "surface_run"]


def is_surface_image(item: Any) -> bool:
    """Whether ``item`` is a nilearn ``SurfaceImage`` (without importing nilearn's surface module otherwise)."""
    return type(item).__name__ == "SurfaceImage" and type(item).__module__.startswith("nilearn")


def surface_run(img: Any, index: int, chunk_volumes: int | None = None) -> RunInput:
    """A ``SurfaceImage`` (data (vertex, time) per hemisphere) as a run with its surface geometry.

    Parameters
    ----------
    img : nilearn.surface.SurfaceImage
    index : int
        Position among the runs (its name is ``surface-<index>``).
    chunk_volumes : int, optional
        Time points per chunk (default: about ``daskparcel.chunk-mb`` MB).
    """
    from daskparcel.ingest.nifti import volumes_per_chunk

    geometry = SurfaceGeometry.from_mesh(img.mesh)
    data = geometry.vertex_values(img, f"imgs[{index}]")
    if data.ndim != 2 or data.shape[1] < 1:
        raise InputError(
            f"imgs[{index}]: a SurfaceImage of shape {img.shape}; give runs with data (vertex, time) per "
            "hemisphere (a single map cannot be parcellated)"
        )
    data = np.asarray(data, dtype=np.float32)
    grid = (data.shape[0], 1, 1, data.shape[1])
    n = chunk_volumes or volumes_per_chunk(grid)
    bold, token = user_array(data.reshape(grid), (*grid[:3], n), "surface")
    name = f"surface-{index}"
    ds = xr.Dataset(
        {"bold": (("x", "y", "z", "t"), bold)},
        attrs={"affine": np.eye(4).tolist(), "geometry": "surface", "mesh": geometry.describe()},
    )
    identity = f"surface:{token}:{geometry.token()}"
    return RunInput(name, ds, identity, name, geometry=geometry)


def gifti_run(
    func: dict[str, str | os.PathLike[str]], mesh: dict[str, Any] | str = "fsaverage5"
) -> Any:
    """A ``SurfaceImage`` from GIfTI functional files (one per hemisphere) and their meshes.

    Parameters
    ----------
    func : dict
        ``{"left": "..._hemi-L_bold.func.gii", "right": "..._hemi-R_bold.func.gii"}`` (one hemisphere is
        enough): one data array per time point, as fMRIPrep writes them.
    mesh : dict or str
        ``{"left": mesh, "right": mesh}`` (GIfTI ``surf.gii`` paths or nilearn meshes), or the name of a
        nilearn fsaverage mesh (``"fsaverage5"``: its pial surfaces).

    Returns
    -------
    nilearn.surface.SurfaceImage
        Pass it (or a list of them) to :meth:`daskparcel.Parcellations.fit`.
    """
    import nibabel as nib
    from nilearn.surface import PolyMesh, SurfaceImage

    if isinstance(mesh, str):
        from nilearn.datasets import load_fsaverage

        mesh = dict(load_fsaverage(mesh)["pial"].parts)
    unknown = set(func) - {"left", "right"} or set(mesh) - {"left", "right"}
    if unknown or set(func) - set(mesh):
        raise InputError(
            f"func / mesh: hemispheres {sorted(func)} and meshes {sorted(mesh)}; give both as "
            '{"left": ..., "right": ...} with a mesh for each functional file'
        )
    poly = PolyMesh(**{part: mesh[part] for part in func})
    data = {}
    for part, path in func.items():
        image = nib.load(os.fspath(path))
        arrays = getattr(image, "darrays", None)
        if not arrays:
            raise InputError(
                f"{path}: not a GIfTI functional file with data arrays; give the run's *.func.gii"
            )
        n_vertices = poly.parts[part].n_vertices
        if int(arrays[0].data.shape[0]) != n_vertices:
            raise InputError(
                f"{path}: {arrays[0].data.shape[0]} vertices but the {part} mesh has {n_vertices}; "
                "give the mesh the data were sampled on"
            )
        data[part] = np.stack([np.asarray(a.data) for a in arrays], axis=-1)
    return SurfaceImage(mesh=poly, data=data)


def check_not_mixed(items: list[Any]) -> None:
    """Refuse a list mixing SurfaceImages with volume runs (checked before anything is read)."""
    surface = [is_surface_image(item) for item in items]
    if any(surface) and not all(surface):
        other = items[surface.index(False)]
        shown = str(other) if isinstance(other, str | os.PathLike) else type(other).__name__
        raise InputError(
            f"imgs: mixes SurfaceImages (imgs[{surface.index(True)}]) with volume runs ({shown}); "
            "fit surface and volume runs separately"
        )


def check_one_geometry(runs: list[RunInput]) -> None:
    """Refuse surface runs on different meshes (or surface runs among volume runs)."""
    surfaces = [r for r in runs if r.geometry is not None]
    if not surfaces:
        return
    if len(surfaces) != len(runs):
        raise InputError("imgs: mixes surface and volume runs; fit them separately")
    ref = surfaces[0].geometry
    for run in surfaces[1:]:
        if not ref.same_mesh(run.geometry):
            raise InputError(
                f"imgs: {run.name} is on other meshes ({run.geometry.describe()}) than {surfaces[0].name} "
                f"({ref.describe()}); sample the runs on one mesh"
            )
