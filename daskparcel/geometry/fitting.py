"""What ``Parcellations`` asks of a run's geometry: its checks, its mask, its grid and its images.

Volume runs keep their own path (the mask pass, :func:`daskparcel.atlas.run_grid`, NIfTI images); surface
runs take the mask from the geometry (all vertices, or ``mask`` as a boolean ``SurfaceImage``), are never
smoothed, and give ``SurfaceImage`` s back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from daskparcel.errors import InputError
from daskparcel.geometry.surface import SurfaceGeometry
from daskparcel.ingest.surface import is_surface_image

__all__ = [
    "check_surface_params",
    "fit_geometry",
    "fitted_images",
    "inverse_items",
    "inverse_surface",
    "transform_grid",
]


def check_surface_params(params: dict[str, Any], imgs: Any) -> None:
    """Refuse, before anything is read, what a fit of SurfaceImages cannot take (smoothing, a volume mask)."""
    from daskparcel.ingest.cifti import is_cifti

    items = list(imgs) if isinstance(imgs, list | tuple) else [imgs]
    if any(is_cifti(item) for item in items):
        SurfaceGeometry.check_smoothing(params.get("smoothing_fwhm"))
        if params.get("mask") is not None:
            raise InputError(
                "mask: a mask for CIFTI runs; pass mask=None (the brain model's grayordinates are the mask)"
            )
        return
    if not any(is_surface_image(item) for item in items):
        if is_surface_image(params.get("mask")):
            raise InputError(
                "mask: a SurfaceImage for volume runs; pass a NIfTI mask (or SurfaceImage runs)"
            )
        return
    SurfaceGeometry.check_smoothing(params.get("smoothing_fwhm"))
    mask = params.get("mask")
    if mask is not None and not is_surface_image(mask):
        raise InputError(
            f"mask: a {type(mask).__name__} for surface runs; pass a boolean SurfaceImage on the runs' "
            "meshes (or None: every vertex)"
        )


def fit_geometry(runs: Any, params: dict[str, Any]) -> Any:
    """The fitted geometry of the runs: their meshes with the ``mask`` of ``params`` (None: every vertex), or
    None for volumes. ``n_parcels`` is checked against it before any data is read: at most its vertices, and
    for a connected method at least one parcel per component (hemisphere, island of the mask)."""
    from daskparcel._checks import check_n_clusters
    from daskparcel.clustering import METHODS

    geometry = getattr(runs[0], "geometry", None)
    if geometry is None:
        return None
    if geometry.kind == "cifti":  # the meshes of the first run that has them (one brain model)
        geometry = next((r.geometry for r in runs if not r.geometry.missing_meshes()), geometry)
    result: Any = geometry.with_mask(params.get("mask"))
    k = check_n_clusters(params["n_parcels"], result.n_elements, "n_parcels")
    if result.kind == "cifti" and k < len(result.structures):
        raise InputError(
            f"n_parcels={k}: the CIFTI runs have {len(result.structures)} structures ({result.describe()}) "
            f"and no parcel spans two; pass n_parcels>={len(result.structures)}"
        )
    method = METHODS[str(params["method"])]
    if method.is_tree or method.name == "rena":
        if result.kind == "cifti":
            result.check_graph(f"method={method.name!r}")
        n_comp = result.components()[0]
        if k < n_comp:
            raise InputError(
                f"n_parcels={k}: the surface ({result.describe()}, {result.n_elements} kept) has {n_comp} "
                f"separate components and every {method.name} parcel is one connected region; pass "
                f"n_parcels>={n_comp}"
            )
    return result


def transform_grid(est: Any, run: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """``(codes, mask, affine, smoothing_fwhm)`` with which a fitted estimator reads ``run``."""
    from daskparcel.atlas import run_grid

    geometry = getattr(est, "geometry_", None)
    if geometry is None:
        if run.geometry is not None:
            raise InputError(
                f"imgs: {run.name} is a surface run and the parcellation was fitted on volumes; give "
                "volume runs on the fitted grid"
            )
        return (*run_grid(est, run), est.smoothing_fwhm)
    if not geometry.same_mesh(run.geometry):
        what = "a volume run" if run.geometry is None else f"on {run.geometry.describe()}"
        if geometry.kind == "cifti":
            raise InputError(
                f"imgs: {run.data.attrs.get('source') or run.name} is {what}; the parcellation was fitted on "
                f"the brain model {geometry.describe()}: give .dtseries.nii runs on it"
            )
        raise InputError(
            f"imgs: {run.nifti or run.name} is {what}; the parcellation was fitted on the meshes "
            f"{geometry.describe()}: give SurfaceImages on them"
        )
    return est.labels_.values, geometry.grid_mask(), geometry.affine, None


def inverse_surface(
    geometry: SurfaceGeometry,
    signals: Any,
    labels: np.ndarray,
    n_parcels: int,
    scale: np.ndarray | None = None,
) -> Any:
    """``inverse_transform`` of one item on a surface: a ``SurfaceImage`` (vertex, time) in which each kept
    vertex takes its parcel's signal (divided by ``scale``); vertices out of the mask are 0."""
    from daskparcel.parcels import as_parcel_signals

    item = np.asarray(as_parcel_signals(signals, n_parcels), dtype=np.float32)
    if scale is not None:
        item = (item / scale).astype(np.float32)
    return geometry.surface_image(item[:, np.asarray(labels) - 1].T)


def inverse_items(est: Any, signals: Any) -> Any:
    """``inverse_transform`` of a fitted estimator: lazy volumes (x, y, z, t), or ``SurfaceImage`` s for a
    surface fit; one per item of ``signals`` when it is a list."""
    from daskparcel.parcels import to_voxel_volumes

    single = not isinstance(signals, list | tuple)
    items = [signals] if single else list(signals)
    geometry = getattr(est, "geometry_", None)
    labels, scale = est.labels_.values, est._scale()
    if geometry is not None:
        out = [inverse_surface(geometry, s, labels, est.n_elements_, scale) for s in items]
    else:
        values = None if getattr(est, "atlas_", None) is None else est.atlas_.values
        out = [
            to_voxel_volumes(s, labels, est.n_elements_, est.mask_img_, scale, values, t_r=est.t_r)
            for s in items
        ]
    return out[0] if single else out


def fitted_images(
    codes: np.ndarray, mask: np.ndarray, affine: np.ndarray, atlas: Any = None, geometry: Any = None
) -> tuple[Any, Any, Any]:
    """``labels_`` (codes 1..K of the mask's elements), ``labels_img_`` and ``mask_img_``: NIfTI images
    (:func:`daskparcel.atlas.label_images`), or ``SurfaceImage`` s for a surface ``geometry`` (no NIfTI image of
    its pseudo-grid is made: nibabel cannot write more than 32,767 voxels along an axis)."""
    import xarray as xr

    from daskparcel.atlas import label_images

    if geometry is None:
        return label_images(codes, mask, affine, atlas)
    vertex = np.flatnonzero(geometry.mask)
    coord = "grayordinate" if geometry.kind == "cifti" else "vertex"
    labels = xr.DataArray(
        np.asarray(codes, dtype=np.int32), dims=("voxel",), coords={coord: ("voxel", vertex)},
        name="labels",
    )  # fmt: skip
    return labels, geometry.labels_image(codes), geometry.mask_image()
