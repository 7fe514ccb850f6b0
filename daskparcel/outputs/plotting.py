"""Figures of a parcellation: labels overlays, original vs compressed, parcel-size histograms, R^2 maps.

These reproduce the figures of nilearn's example "Clustering methods to learn a brain parcellation
from fMRI", using ``nilearn.plotting`` for brain slices and plain matplotlib for the rest. Figures
are made without pyplot's global state where we create them (``matplotlib.figure.Figure``), so they
work headless and in threads; :func:`figure_to_png_bytes` / :func:`figure_to_data_uri` turn them
into PNG for a self-contained HTML report.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from daskparcel.errors import InputError
from daskparcel.parcels import as_int_labels

logger = logging.getLogger(__name__)

__all__ = [
    "figure_to_data_uri",
    "figure_to_png_bytes",
    "label_colormap",
    "plot_compressed",
    "plot_labels",
    "plot_r2_map",
    "plot_size_histograms",
]


_P = ParamSpec("_P")
_R = TypeVar("_R")

# matplotlib's complaints about what nilearn gives it on degenerate grids (one slice: identical axis limits)
# and on masked overlays: the figure is right, the warnings only flood the screen
QUIET = (r"Attempting to set identical", r"Warning: converting a masked element to nan")


def quiet_matplotlib(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """``func`` with matplotlib's warnings of :data:`QUIET` silenced (drawing a single slice, masked data)."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with warnings.catch_warnings():
            for message in QUIET:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            return func(*args, **kwargs)

    return wrapper


def _check_img(img: Any, name: str, ndim: int = 3) -> Any:
    """A nibabel image with ``ndim`` dimensions (a 4D image with one volume is accepted as 3D)."""
    if not (hasattr(img, "affine") and hasattr(img, "shape") and hasattr(img, "get_fdata")):
        raise InputError(
            f"{name}: expected a nibabel image (e.g. nibabel.Nifti1Image), got "
            f"{type(img).__name__}; load a file with nibabel.load(path)"
        )
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[3] == 1 and ndim == 3:
        from nilearn.image import index_img

        return index_img(img, 0)
    if len(shape) != ndim:
        raise InputError(
            f"{name}: has shape {shape}, expected a {ndim}D image; for a 4D run pass its mean "
            "image (nilearn.image.mean_img(img))"
        )
    return img


def label_colormap(n_labels: int, *, seed: int = 0) -> ListedColormap:
    """A colormap of ``n_labels`` distinct colours in shuffled order (neighbours differ).

    Parameters
    ----------
    n_labels : int
        Number of parcels.
    seed : int
        Seed of the shuffle, so the same parcellation gets the same colours.

    Returns
    -------
    matplotlib.colors.ListedColormap
        Colours sampled evenly along ``gist_ncar``-like hues with varied lightness, then shuffled,
        as nilearn's example does for thousands of parcels.
    """
    import matplotlib as mpl

    n = max(int(n_labels), 1)
    base = mpl.colormaps["gist_rainbow"]
    colors = base(np.linspace(0.0, 1.0, n))
    shade = 0.55 + 0.45 * ((np.arange(n) % 3) / 2.0)
    colors[:, :3] *= shade[:, None]
    np.random.default_rng(seed).shuffle(colors)
    return ListedColormap(colors, name=f"parcels_{n}")


@quiet_matplotlib
def plot_labels(
    labels_img: Any,
    background_img: Any = None,
    *,
    title: str | None = None,
    display_mode: str = "xz",
    cut_coords: Any = None,
    view_type: str = "continuous",
    axes: Any = None,
    figure: Any = None,
    seed: int = 0,
    alpha: float | None = None,
    line_color: str = "black",
    line_width: float = 0.6,
) -> Any:
    """Parcels over a background image, as ``nilearn.plotting.plot_roi`` (one colour per parcel).

    Parameters
    ----------
    labels_img : nibabel image, 3D int
        Labels image, ``0`` = background, ``1..K`` parcels.
    background_img : nibabel image, 3D, optional
        E.g. the mean functional image. Default: none (nilearn's MNI template would be wrong for
        data in subject space).
    title : str, optional
        Title drawn on the slices.
    display_mode : str, default "xz"
        nilearn display mode (``"ortho"``, ``"xz"``, ``"z"``...).
    cut_coords : optional
        nilearn cut coordinates; reuse ``display.cut_coords`` of a first plot to compare
        parcellations on the same slices.
    view_type : {"continuous", "contours"}, default "continuous"
        As nilearn's ``plot_roi``: ``"continuous"`` fills each parcel with its colour;
        ``"contours"`` also outlines every parcel, in the plane of each cut, over a lighter fill.
        With hundreds of parcels colours alone cannot tell neighbours apart (neighbours share
        hues): the outlines can.
    axes, figure : optional
        Where to draw (as in nilearn). Default: a new ``matplotlib.figure.Figure`` outside pyplot
        (nothing to close, no global state).
    seed : int
        Seed of the colour shuffle (:func:`label_colormap`).
    alpha : float, optional
        Opacity of the parcels' fill: default 0.7 (nilearn's) with ``"continuous"``, 0.35 with
        ``"contours"`` (0: outlines only).
    line_color, line_width : str, float
        Colour and width (points) of the outlines (``"contours"``).

    Returns
    -------
    nilearn display (``nilearn.plotting.displays.BaseSlicer``)
        Its figure is ``display.frame_axes.figure``; pass the display to
        :func:`figure_to_png_bytes`. ``display.cut_coords`` gives the cuts to reuse in other figures.
    """
    from nilearn import plotting

    if view_type not in ("continuous", "contours"):
        raise InputError(f"view_type={view_type!r}: unknown; pass 'continuous' or 'contours'")
    labels_img = _check_img(labels_img, "labels_img")
    values = as_int_labels(labels_img, "labels_img")
    n_labels = int(values.max()) if values.size else 0
    if n_labels < 1:
        raise InputError("labels_img: contains no parcel (all 0); pass a labels image with 1..K")
    if background_img is not None:
        background_img = _check_img(background_img, "background_img")
    if axes is None and figure is None:
        figure = Figure(figsize=(8.0, 3.5) if len(display_mode) == 2 else (8.0, 3.0))
    if alpha is None:
        alpha = 0.7 if view_type == "continuous" else 0.35
    display = plotting.plot_roi(
        labels_img,
        bg_img=background_img,
        title=title,
        display_mode=display_mode,
        cut_coords=cut_coords,
        cmap=label_colormap(n_labels, seed=seed),
        vmin=0.5,
        vmax=n_labels + 0.5,
        colorbar=False,
        axes=axes,
        figure=figure,
        draw_cross=False,
        alpha=alpha,
    )
    if view_type == "contours":
        _outline_parcels(display, labels_img, display_mode, line_color, line_width)
    return display


def _outline_parcels(
    display: Any, labels_img: Any, display_mode: str, line_color: str, line_width: float
) -> None:
    """Draw each parcel's border on every cut of ``display``: a line between two pixels of different parcels."""
    from matplotlib.collections import LineCollection
    from nilearn.image import reorder_img

    # the slicer shows images resampled to an axis-aligned (RAS) grid: outline on that grid too
    aligned = reorder_img(labels_img, resample="nearest", copy_header=True)
    volume = np.asarray(aligned.dataobj)
    steps = np.diag(aligned.affine)[:3]
    origin = aligned.affine[:3, 3]
    in_plane = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}
    letters = {"ortho": "xyz", "tiled": "xyz"}.get(display_mode, display_mode)
    if len(letters) == 1:  # one direction: the axes are keyed by their cut
        views = [(letters, float(cut), ax) for cut, ax in display.axes.items()]
    else:
        views = [
            (d, float(cut), display.axes[d])
            for d, cut in zip(letters, display.cut_coords, strict=False)
            if d in display.axes
        ]
    for direction, cut, view in views:
        axis = "xyz".index(direction)
        index = round((float(cut) - origin[axis]) / float(steps[axis]))
        if not 0 <= index < volume.shape[axis]:
            continue
        plane = np.take(volume, index, axis=axis)
        a, b = in_plane[direction]
        segments = border_segments(plane, origin[[a, b]], steps[[a, b]])
        if len(segments):
            view.ax.add_collection(
                LineCollection(list(segments), colors=line_color, linewidths=line_width, zorder=5)
            )


def border_segments(plane: np.ndarray, origin: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Line segments, shape (n, 2, 2) in world coordinates, between the pixels of ``plane`` whose labels
    differ: the outlines of the regions of a slice, where nilearn draws its pixels (the ``n`` pixels of an
    axis span ``origin`` to ``origin + (n - 1) * step``, as ``imshow``'s extent in nilearn's slicers)."""
    n = np.asarray(plane.shape, dtype=np.float64)
    width = (n - 1) * np.asarray(step, dtype=np.float64) / n
    edge = [origin[a] + np.arange(plane.shape[a] + 1) * width[a] for a in (0, 1)]
    out = []
    i, j = np.nonzero(np.diff(plane, axis=0) != 0)  # between rows i and i + 1
    out.append(np.stack([np.stack([edge[0][i + 1], edge[1][j]], 1),
                         np.stack([edge[0][i + 1], edge[1][j + 1]], 1)], 1))  # fmt: skip
    i, j = np.nonzero(np.diff(plane, axis=1) != 0)  # between columns j and j + 1
    out.append(np.stack([np.stack([edge[0][i], edge[1][j + 1]], 1),
                         np.stack([edge[0][i + 1], edge[1][j + 1]], 1)], 1))  # fmt: skip
    return np.concatenate(out)


@quiet_matplotlib
def plot_compressed(
    original_img: Any,
    compressed_img: Any,
    *,
    cut_coords: Any = None,
    titles: Sequence[str] = ("Original", "Compressed representation"),
    display_mode: str = "xz",
    figsize: tuple[float, float] = (8.0, 6.0),
) -> Figure:
    """The original (mean) image above its compressed representation, on one grey scale.

    As in nilearn's example, both panels are ``nilearn.plotting.plot_epi`` with the same ``vmin``
    and ``vmax`` (the range of both images), so intensities compare directly.

    Parameters
    ----------
    original_img, compressed_img : nibabel image, 3D
        E.g. the mean functional image and the mean of ``inverse_transform(transform(img))``.
    cut_coords : optional
        nilearn cut coordinates shared by both panels.
    titles : pair of str
        Titles of the two panels.
    display_mode : str, default "xz"
        nilearn display mode.
    figsize : (float, float)
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from nilearn import plotting

    original_img = _check_img(original_img, "original_img")
    compressed_img = _check_img(compressed_img, "compressed_img")
    if tuple(original_img.shape) != tuple(compressed_img.shape):
        raise InputError(
            f"compressed_img: shape {compressed_img.shape} differs from original_img "
            f"{original_img.shape}; both must be on the same grid"
        )
    if len(titles) != 2:
        raise InputError(f"titles: {len(titles)} titles given, expected 2 (original, compressed)")
    a = np.asarray(original_img.get_fdata())
    b = np.asarray(compressed_img.get_fdata())
    vmin = float(min(np.nanmin(a), np.nanmin(b)))
    vmax = float(max(np.nanmax(a), np.nanmax(b)))
    if vmax <= vmin:
        vmax = vmin + 1.0
    fig = Figure(figsize=figsize)
    axes = fig.subplots(2, 1)
    for ax, img, title in zip(axes, (original_img, compressed_img), titles):
        plotting.plot_epi(
            img,
            cut_coords=cut_coords,
            display_mode=display_mode,
            axes=ax,
            title=title,
            vmin=vmin,
            vmax=vmax,
            colorbar=False,
            draw_cross=False,
        )
    logger.debug("plot_compressed: shared vmin=%g vmax=%g", vmin, vmax)
    return fig


@quiet_matplotlib
def plot_size_histograms(
    labels_a: Any,
    labels_b: Any,
    names: Sequence[str] = ("kmeans", "hierarchical kmeans"),
    *,
    bins: int = 30,
    figsize: tuple[float, float] = (8.0, 3.5),
) -> Figure:
    """Parcel-size histograms of two parcellations side by side, on a log size axis.

    Parameters
    ----------
    labels_a, labels_b : array-like or nibabel image
        Labels (``0`` = background, ``1..K``), 1D voxel labels or labels images.
    names : pair of str
        Names of the parcellations (panel titles).
    bins : int
        Number of log-spaced bins, the same edges for both (from 1 voxel to the largest parcel).
    figsize : (float, float)
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes; bar heights are the number of parcels whose size falls in each bin.
    """
    from daskparcel.metrics import parcel_sizes

    if len(names) != 2:
        raise InputError(f"names: {len(names)} names given, expected 2 (one per parcellation)")
    sizes = [
        parcel_sizes(as_int_labels(lab, name)) for lab, name in zip((labels_a, labels_b), names)
    ]
    top = max(max(s.largest for s in sizes), 2)
    edges = np.logspace(0, np.log10(top), bins + 1)
    edges[0], edges[-1] = 1.0, float(top)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, s, name in zip(axes, sizes, names):
        ax.hist(s.sizes[s.sizes > 0], bins=edges, color="tab:blue", edgecolor="white")
        ax.set_xscale("log")
        ax.set_xlabel("parcel size (voxels)")
        ax.set_title(f"{name}: {s.n_parcels} parcels, CV {s.cv:.2f}")
    axes[0].set_ylabel("number of parcels")
    return fig


@quiet_matplotlib
def plot_r2_map(
    r2_img: Any,
    background_img: Any = None,
    *,
    title: str | None = "Compression R²",
    display_mode: str = "ortho",
    cut_coords: Any = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
    axes: Any = None,
    figure: Any = None,
    mask_img: Any = None,
) -> Any:
    """A map of R^2 (per voxel or per parcel) with a colour bar from ``vmin`` to ``vmax``.

    Parameters
    ----------
    r2_img : nibabel image, 3D
        R^2 values (e.g. :func:`daskparcel.metrics.r2_map` scattered into the mask); NaN or 0
        outside the mask.
    background_img : nibabel image, 3D, optional
        Shown below the map.
    title, display_mode, cut_coords, axes, figure
        As in nilearn; default figure: a new ``matplotlib.figure.Figure`` outside pyplot.
    vmin, vmax : float
        Colour range (default 0..1).
    cmap : str
        matplotlib colormap name.
    mask_img : nibabel image, 3D, optional
        The brain: voxels outside it are left transparent (the background shows), instead of drawn as R^2 0.

    Returns
    -------
    nilearn display
    """
    from nilearn import plotting
    from nilearn.image import new_img_like

    r2_img = _check_img(r2_img, "r2_img")
    data = np.nan_to_num(np.asarray(r2_img.get_fdata()), nan=0.0)
    if background_img is not None:
        background_img = _check_img(background_img, "background_img")
    if axes is None and figure is None:
        figure = Figure(figsize=(8.0, 3.0))
    if mask_img is None:
        return plotting.plot_img(
            new_img_like(r2_img, data, copy_header=True), bg_img=background_img, title=title,
            display_mode=display_mode, cut_coords=cut_coords, vmin=vmin, vmax=vmax, cmap=cmap,
            colorbar=True, axes=axes, figure=figure, draw_cross=False, black_bg=False,
        )  # fmt: skip
    inside = np.asarray(_check_img(mask_img, "mask_img").dataobj) != 0
    if inside.shape != data.shape:
        raise InputError(
            f"mask_img: shape {inside.shape} differs from r2_img's {data.shape}; pass the fit's mask"
        )
    # the background alone, then R^2 as a masked overlay: outside the brain stays transparent, and values
    # beyond [vmin, vmax] (negative R^2) take the end colours instead of vanishing (nilearn's overlays hide
    # values within 1e-6 of 0, hence the floor of 0.1 % of the range above vmin)
    base = background_img if background_img is not None else new_img_like(r2_img, inside * 1.0)
    display = plotting.plot_anat(
        base, title=title, display_mode=display_mode, cut_coords=cut_coords, axes=axes,
        figure=figure, draw_cross=False, colorbar=False, dim=0,
    )  # fmt: skip
    floor = vmin + 1e-3 * (vmax - vmin)
    masked = np.where(inside, np.clip(data, floor, vmax), 0.0)  # 0: not drawn
    display.add_overlay(
        nib.Nifti1Image(masked, r2_img.affine), cmap=cmap, vmin=vmin, vmax=vmax, colorbar=True,
        resampling_interpolation="nearest",
    )  # fmt: skip
    return display


def _as_figure(fig: Any) -> Figure:
    if isinstance(fig, Figure):
        return fig
    frame = getattr(fig, "frame_axes", None)  # a nilearn display
    if frame is not None:
        return frame.figure
    raise InputError(
        f"fig: expected a matplotlib Figure or a nilearn display, got {type(fig).__name__}"
    )


@quiet_matplotlib
def figure_to_png_bytes(fig: Any, *, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib Figure or a nilearn display.

    Parameters
    ----------
    fig : matplotlib.figure.Figure or nilearn display
    dpi : int
        Resolution.

    Returns
    -------
    bytes
        The PNG file content (starts with ``b"\\x89PNG"``).
    """
    buffer = io.BytesIO()
    _as_figure(fig).savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def figure_to_data_uri(fig: Any, *, dpi: int = 100) -> str:
    """The PNG of :func:`figure_to_png_bytes` as a ``data:image/png;base64,...`` URI, for ``<img src=...>``."""
    encoded = base64.b64encode(figure_to_png_bytes(fig, dpi=dpi)).decode("ascii")
    return f"data:image/png;base64,{encoded}"
