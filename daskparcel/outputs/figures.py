"""The figures of the report of a fit folder, each a PNG ``data:`` URI or a note saying why it is absent.

Parcels are outlined over the mean image (:func:`daskparcel.outputs.plotting.plot_labels`, ``view_type="contours"``:
at K = 1000 neighbouring parcels share hues, their borders do not), the original and compressed means share one
grey scale, and the R^2 map is masked to the brain; the slices of every brain figure are the first one's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from daskparcel.outputs._html import e as _e
from daskparcel.outputs._html import fmt_int as _fmt_int
from daskparcel.outputs._html import mapping as _mapping
from daskparcel.outputs._html import note as _note
from daskparcel.outputs.record import FILES

logger = logging.getLogger(__name__)

DPI = 100


class Figures:
    """The figures of the report, each a PNG data URI or a note saying why it is absent."""

    def __init__(self, folder: Path, files: Mapping[str, Any], doc: Mapping[str, Any]) -> None:
        self.folder = folder
        self.files = files
        self.doc = doc
        self._images: dict[str, Any] = {}
        self._errors: dict[str, str] = {}

    def image(self, key: str) -> Any:
        """The nibabel image of ``files[key]`` (loaded in memory: these are 3D volumes), or None."""
        if key in self._images or key in self._errors:
            return self._images.get(key)
        import nibabel as nib

        path = self.folder / str(self.files.get(key, FILES.get(key, key)))
        if not path.is_file():
            self._errors[key] = f"{path.name} is missing from the fit folder"
            return None
        try:
            img: Any = nib.load(path)
            img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
        except Exception as exc:  # a damaged optional file: say so in the page, keep the report
            logger.warning("report: cannot read %s: %s", path, exc)
            self._errors[key] = f"{path.name} cannot be read ({exc})"
            return None
        self._images[key] = img
        return img

    def _missing(self, keys: Iterable[str]) -> str | None:
        problems = [self._errors[k] for k in keys if self.image(k) is None and k in self._errors]
        return "; ".join(problems) if problems else None

    def _figure(
        self, title: str, needs: tuple[str, ...], draw: Callable[[], Any], caption: str, alt: str
    ) -> str:
        from daskparcel.outputs.plotting import figure_to_data_uri

        head = f"<h3>{_e(title)}</h3>"
        missing = self._missing(needs)
        if missing:
            return head + _note(f"Figure not drawn: {missing}.")
        try:
            uri = figure_to_data_uri(draw(), dpi=DPI)
        except Exception as exc:  # one figure failing must not lose the rest of the report
            logger.warning("report: figure %r failed", title, exc_info=True)
            return head + _note(f"Figure not drawn: {type(exc).__name__}: {exc}")
        return (
            f'{head}<figure><img src="{uri}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )

    def html(self) -> str:
        from daskparcel.outputs.plotting import plot_compressed, plot_labels, plot_r2_map

        params = _mapping(self.doc.get("parameters"))
        metrics = _mapping(self.doc.get("metrics"))
        data = _mapping(self.doc.get("data"))
        if data.get("mesh"):  # a surface fit: its figures are drawn on the meshes
            from daskparcel.outputs.surface import surface_figures

            return "\n".join([surface_figures(self), *self._connectomes()])
        method = str(params.get("method", ""))
        n_parcels = _fmt_int(metrics.get("n_parcels", params.get("n_parcels")))
        n_voxels = _fmt_int(data.get("voxels_in_mask"))
        cuts: dict[str, Any] = {}

        def labels() -> Any:
            display = plot_labels(
                self.image("labels"),
                self.image("mean"),
                title=f"{method} parcellation",
                display_mode="xz",
                view_type="contours",
            )
            cuts["xz"] = display.cut_coords
            return display

        def compressed() -> Any:
            return plot_compressed(
                self.image("mean"),
                self.image("compressed_mean"),
                cut_coords=cuts.get("xz"),
                titles=(
                    f"Original ({n_voxels} voxels)",
                    f"{method} compressed representation ({n_parcels} parcels)",
                ),
            )

        def histogram() -> Any:
            return _size_histogram(self.image("labels"), method)

        def r2() -> Any:
            return plot_r2_map(
                self.image("r2"), self.image("mean"), title="Compression R\u00b2",
                display_mode="xz", cut_coords=cuts.get("xz"), mask_img=self.image("mask"),
            )  # fmt: skip

        parts = [
            self._figure(
                "Parcels over the mean image",
                ("labels", "mean"),
                labels,
                "Each parcel outlined (black borders, in the plane of each cut) over a light colour fill and "
                "the temporal mean of the smoothed data (sagittal and axial cuts, used by every brain figure "
                "below).",
                f"{method} parcels over the mean image",
            ),
            self._figure(
                "Original vs compressed mean image",
                ("mean", "compressed_mean"),
                compressed,
                "Top: the mean image; bottom: the same after compression, each voxel replaced by its "
                "parcel's mean. Both panels share one grey scale (same vmin / vmax).",
                "original and compressed mean images",
            ),
            self._figure(
                "Parcel sizes",
                ("labels",),
                histogram,
                "Number of parcels per size bin (log-spaced bins; the dashed line is the median size).",
                "histogram of parcel sizes",
            ),
            self._figure(
                "Compression R\u00b2 map",
                ("r2", "mean", "mask"),
                r2,
                "Per voxel in the mask, the fraction of its signal's variance explained by its parcel's "
                "mean (negative values shown as 0); outside the mask, the mean image.",
                "map of the per-voxel compression R squared",
            ),
        ]
        return "\n".join(parts + self._connectomes())

    def _connectomes(self) -> list[str]:
        """The figures of the group connectomes the folder holds (none without ``--connectome``)."""
        return [self._connectome(path) for path in sorted(self.folder.glob("atlas-*_relmat.tsv"))]

    def _connectome(self, path: Path) -> str:
        """The group connectome of a fit folder's ``atlas-<label>_stat-<kind>_relmat.tsv`` (written with
        ``--connectome``), as a matrix ordered by parcel."""
        import matplotlib.pyplot as plt
        import pandas as pd
        from nilearn.plotting import plot_matrix

        kind = path.name.split("_stat-")[-1].removesuffix("_relmat.tsv")

        def draw() -> Any:
            matrix = pd.read_csv(path, sep="\t").to_numpy(dtype=float)
            limit = float(np.nanmax(np.abs(matrix - np.diag(np.diag(matrix))))) or 1.0
            fig, ax = plt.subplots(figsize=(5.5, 4.5))
            plot_matrix(matrix, axes=ax, vmin=-limit, vmax=limit, colorbar=True, title=None)
            ax.set_title(f"group {kind} connectome ({matrix.shape[0]} parcels)")
            return fig

        return self._figure(
            f"Group connectome ({kind})",
            (),
            draw,
            f"The group summary of the runs' {kind} connectomes ({path.name}): nilearn's "
            "ConnectivityMeasure mean (tangent: the geometric mean), parcels in label order; the colour "
            "scale is symmetric around 0 and set by the off-diagonal values.",
            f"group {kind} connectome matrix",
        )


def _size_histogram(labels_img: Any, method: str) -> Any:
    """One parcellation's parcel sizes: the panel of :func:`daskparcel.outputs.plotting.plot_size_histograms`
    (same log-spaced bins), for a single fit, with its median marked."""
    from matplotlib.figure import Figure

    from daskparcel.metrics import parcel_sizes

    sizes = parcel_sizes(np.asarray(labels_img.dataobj))
    values = sizes.sizes[sizes.sizes > 0]
    top = max(int(sizes.largest), 2)
    edges = np.logspace(0, np.log10(top), 31)
    edges[0], edges[-1] = 1.0, float(top)
    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.hist(values, bins=list(edges), color="tab:blue", edgecolor="white")
    median = float(np.median(values))
    ax.axvline(median, color="0.25", linestyle="--", linewidth=1)
    ax.annotate(
        f"median {median:g}", (median, 1.0), xycoords=("data", "axes fraction"),
        xytext=(4, -14), textcoords="offset points", fontsize=9, color="0.25",
    )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parcel size (voxels)")
    ax.set_ylabel("number of parcels")
    ax.set_title(f"{method}: {sizes.n_parcels} parcels, CV {sizes.cv:.2f}")
    return fig
