"""Figures render headless, with shared colour scales and the right histogram counts."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pytest
from matplotlib.figure import Figure

from daskparcel.errors import InputError
from daskparcel.outputs.plotting import (
    figure_to_data_uri,
    figure_to_png_bytes,
    label_colormap,
    plot_compressed,
    plot_labels,
    plot_r2_map,
    plot_size_histograms,
)

AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def images() -> dict[str, nib.Nifti1Image]:
    rng = np.random.default_rng(0)
    shape = (12, 14, 10)
    labels = np.zeros(shape, np.int32)
    labels[2:10, 2:12, 2:8] = rng.integers(1, 40, size=(8, 10, 6))
    mean = (rng.random(shape) * 100 + 50).astype(np.float32)
    compressed = (rng.random(shape) * 300).astype(np.float32)  # a wider range than the original
    r2 = np.where(labels > 0, rng.random(shape), np.nan).astype(np.float32)
    return {
        "labels": nib.Nifti1Image(labels, AFFINE),
        "mean": nib.Nifti1Image(mean, AFFINE),
        "compressed": nib.Nifti1Image(compressed, AFFINE),
        "r2": nib.Nifti1Image(r2, AFFINE),
    }


def assert_png(data: bytes, min_bytes: int = 2000) -> None:
    assert data.startswith(PNG_MAGIC)
    assert min_bytes < len(data) < 5_000_000


def test_plot_labels_renders(images) -> None:
    display = plot_labels(images["labels"], images["mean"], title="kmeans")
    fig = display.frame_axes.figure
    assert isinstance(fig, Figure)
    assert_png(figure_to_png_bytes(display))
    # reuse the cut coordinates of a first plot, draw into a given figure
    other = plot_labels(images["labels"], cut_coords=display.cut_coords, figure=Figure())
    assert np.allclose(other.cut_coords, display.cut_coords)
    assert_png(figure_to_png_bytes(other))


def test_plot_labels_leaves_pyplot_alone(images) -> None:
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    plot_labels(images["labels"], images["mean"])
    plot_r2_map(images["r2"])
    assert set(plt.get_fignums()) == before


def test_label_colormap_distinct_colours() -> None:
    cmap = label_colormap(500, seed=1)
    colours = np.round(cmap(np.arange(500)), 6)
    assert len(np.unique(colours, axis=0)) == 500
    np.testing.assert_array_equal(label_colormap(500, seed=1).colors, cmap.colors)
    assert not np.array_equal(label_colormap(500, seed=2).colors, cmap.colors)


def test_plot_compressed_shares_vmin_vmax(images) -> None:
    fig = plot_compressed(images["mean"], images["compressed"], titles=("orig", "comp"))
    assert isinstance(fig, Figure)
    # the data images (2D arrays; nilearn also draws small RGB background patches)
    clims = {im.get_clim() for ax in fig.axes for im in ax.get_images() if im.get_array().ndim == 2}
    assert len(clims) == 1
    a, b = images["mean"].get_fdata(), images["compressed"].get_fdata()
    (vmin, vmax) = clims.pop()
    assert vmin == pytest.approx(min(a.min(), b.min()))
    assert vmax == pytest.approx(max(a.max(), b.max()))
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"orig", "comp"} <= texts
    assert_png(figure_to_png_bytes(fig))


def test_plot_compressed_errors(images) -> None:
    small = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), AFFINE)
    with pytest.raises(InputError, match="compressed_img: shape"):
        plot_compressed(images["mean"], small)
    four_d = nib.Nifti1Image(np.zeros((3, 3, 3, 5), np.float32), AFFINE)
    with pytest.raises(InputError, match=r"original_img: has shape \(3, 3, 3, 5\), expected a 3D"):
        plot_compressed(four_d, four_d)
    with pytest.raises(InputError, match="expected a nibabel image"):
        plot_compressed(np.zeros((3, 3, 3)), small)


def _bars(ax) -> tuple[np.ndarray, np.ndarray]:
    patches = sorted(ax.patches, key=lambda p: p.get_x())
    edges = np.array([p.get_x() for p in patches] + [patches[-1].get_x() + patches[-1].get_width()])
    return np.array([p.get_height() for p in patches]), edges


def test_plot_size_histograms_counts(images) -> None:
    rng = np.random.default_rng(2)
    labels_a = np.asarray(images["labels"].dataobj)
    labels_b = rng.integers(0, 6, size=500)  # 1D voxel labels with background
    labels_b[:5] = np.arange(1, 6)
    fig = plot_size_histograms(labels_a, labels_b, names=("a", "b"), bins=12)
    assert len(fig.axes) == 2
    for ax, labels in zip(fig.axes, (labels_a, labels_b)):
        assert ax.get_xscale() == "log"
        heights, edges = _bars(ax)
        sizes = np.bincount(labels.ravel())[1:]
        expected, _ = np.histogram(sizes[sizes > 0], bins=edges)
        np.testing.assert_array_equal(heights, expected)
        assert heights.sum() == np.count_nonzero(sizes)
    assert fig.axes[0].get_title().startswith("a:")
    assert_png(figure_to_png_bytes(fig))
    with pytest.raises(InputError, match="names: 3 names given, expected 2"):
        plot_size_histograms(labels_a, labels_b, names=("a", "b", "c"))


def test_plot_r2_map_and_data_uri(images) -> None:
    display = plot_r2_map(images["r2"], images["mean"], display_mode="z", cut_coords=[12.0])
    uri = figure_to_data_uri(display)
    assert uri.startswith("data:image/png;base64,")
    assert_png(base64.b64decode(uri.split(",", 1)[1]))
    clims = {
        im.get_clim()
        for ax in display.frame_axes.figure.axes
        for im in ax.get_images()
        if im.get_array().ndim == 2 and im.get_cmap().name == "viridis"
    }
    assert clims == {(0.0, 1.0)}


def test_figure_to_png_errors() -> None:
    with pytest.raises(InputError, match="expected a matplotlib Figure or a nilearn display"):
        figure_to_png_bytes("not a figure")


# ------------------------------------------------------------------------------ outlines and the masked R^2
def _collections(display, direction: str) -> list:
    from matplotlib.collections import LineCollection

    (view,) = display.axes.values()  # one cut
    return [c for c in view.ax.collections if isinstance(c, LineCollection)]


def test_parcel_contours_outline_every_border_of_the_cut() -> None:
    rng = np.random.default_rng(1)
    shape = (10, 12, 8)
    labels = np.zeros(shape, np.int32)
    labels[1:9, 1:11, 1:7] = rng.integers(1, 300, size=(8, 10, 6))  # K=300: neighbours share hues
    img = nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0]))
    display = plot_labels(img, display_mode="z", cut_coords=[6.0], view_type="contours")
    plane = labels[:, :, 3]  # z = 6 mm with 2 mm voxels from 0
    expected = np.count_nonzero(np.diff(plane, axis=0)) + np.count_nonzero(np.diff(plane, axis=1))
    (lines,) = _collections(display, "z")
    assert len(lines.get_segments()) == expected
    assert_png(figure_to_png_bytes(display))


def test_plot_labels_view_types(images) -> None:
    from matplotlib.collections import LineCollection

    def outlines(display) -> int:
        return sum(
            isinstance(c, LineCollection) for v in display.axes.values() for c in v.ax.collections
        )

    assert outlines(plot_labels(images["labels"], view_type="continuous")) == 0
    assert outlines(plot_labels(images["labels"], view_type="contours")) == 2  # one per cut of "xz"
    with pytest.raises(
        InputError, match="view_type='outline': unknown; pass 'continuous' or 'contours'"
    ):
        plot_labels(images["labels"], view_type="outline")


def test_parcel_contours_sit_between_the_voxels_nilearn_draws() -> None:
    labels = np.ones((10, 10, 10), np.int32)
    labels[5:] = 2  # one border, between x index 4 and 5
    img = nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0]))
    display = plot_labels(img, display_mode="z", cut_coords=[8.0], view_type="contours")
    (lines,) = _collections(display, "z")
    segments = np.asarray(lines.get_segments())
    assert len(segments) == 10  # one per row of y
    image = next(iter(display.axes.values())).ax.images[-1]
    left, right = image.get_extent()[:2]
    # nilearn spreads the 10 pixels of x over [left, right]: the border is 5 pixel widths from the left
    assert np.allclose(segments[:, :, 0], left + 5 * (right - left) / 10)


def test_r2_map_masked_to_the_brain(images) -> None:
    import matplotlib as mpl
    from PIL import Image

    mask = nib.Nifti1Image((np.asarray(images["labels"].dataobj) > 0).astype(np.int8), AFFINE)
    zero = (np.array(mpl.colormaps["viridis"](0.0)[:3]) * 255).round()

    def zero_coloured(display) -> int:
        pixels = np.asarray(Image.open(io.BytesIO(figure_to_png_bytes(display))).convert("RGB"))
        return int((np.abs(pixels.astype(float) - zero).sum(axis=2) < 12).sum())

    unmasked = plot_r2_map(images["r2"], images["mean"], display_mode="z", cut_coords=[16.0])
    masked = plot_r2_map(
        images["r2"], images["mean"], display_mode="z", cut_coords=[16.0], mask_img=mask
    )
    assert zero_coloured(unmasked) > 1000  # outside the brain drawn as R^2 = 0
    assert zero_coloured(masked) < zero_coloured(unmasked) / 20
    with pytest.raises(InputError, match="mask_img: shape"):
        plot_r2_map(images["r2"], mask_img=nib.Nifti1Image(np.ones((3, 3, 3), np.int8), AFFINE))
