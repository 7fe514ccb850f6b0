"""Exports keep the repetition time: transform -> inverse_transform -> to_nifti, fit.json and the report.

The reference TR is read with nibabel from the real scan's own header, not from daskparcel.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import real_scan

import daskparcel as dp
from daskparcel import Parcellations


def header_t_r(path: Path) -> tuple[float, str]:
    header = nib.load(path).header
    return float(header.get_zooms()[3]), header.get_xyzt_units()[1]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Parcellations, Path, Path]:
    source = real_scan("nitime1")  # 1.35 s in its header
    root = tmp_path_factory.mktemp("exports")
    est = Parcellations(
        method="kmeans", n_parcels=10, mask_strategy="background", store=root / "cache"
    )
    est.fit(source)
    return est, source, root


def test_source_header_has_a_tr(fitted) -> None:
    _, source, _ = fitted
    t_r, unit = header_t_r(source)
    assert unit == "sec" and t_r == pytest.approx(1.35)


def test_inverse_transform_to_nifti_keeps_the_tr(fitted) -> None:
    est, source, root = fitted
    expected, _ = header_t_r(source)
    signals = est.transform(source)
    assert signals.attrs["t_r"] == pytest.approx(expected)
    compressed = est.inverse_transform(signals)
    assert compressed.attrs["t_r"] == pytest.approx(expected)
    path = dp.to_nifti(compressed, root / "compressed.nii.gz")
    t_r, unit = header_t_r(path)
    assert unit == "sec"
    assert t_r == pytest.approx(expected)
    # the voxel sizes are the source's too
    assert nib.load(path).header.get_zooms()[:3] == pytest.approx(
        nib.load(source).header.get_zooms()[:3], abs=1e-4
    )


def test_signals_without_a_tr_do_not_claim_one_second(fitted) -> None:
    est, source, root = fitted
    bare = np.asarray(est.transform(source))  # a plain array: no TR travels with it
    path = dp.to_nifti(est.inverse_transform(bare), root / "bare.nii.gz")
    assert nib.load(path).header.get_xyzt_units()[1] == "unknown"
    from daskparcel.ingest.nifti import repetition_time

    assert repetition_time(nib.load(path).header)[0] is None
    # the estimator's t_r parameter applies to arrays
    est.set_params(t_r=2.5)
    try:
        path = dp.to_nifti(est.inverse_transform(bare), root / "given.nii.gz")
    finally:
        est.set_params(t_r=None)
    assert header_t_r(path) == (pytest.approx(2.5), "sec")


def test_fit_folder_records_the_tr_without_filtering(fitted) -> None:
    from daskparcel.outputs.results import write_fit_outputs

    est, source, root = fitted
    assert est.low_pass is None and est.high_pass is None and est.t_r is None
    expected, _ = header_t_r(source)
    doc = write_fit_outputs(est, source, root / "fit")
    assert doc["data"]["t_r"] == pytest.approx(expected)
    assert json.loads((root / "fit" / "fit.json").read_text())["data"]["t_r"] == pytest.approx(
        expected
    )
    page = (root / "fit" / "report.html").read_text()
    assert f"repetition time (TR)</th><td>{expected:g} s" in page
    assert "not recorded" not in page.split("repetition time (TR)")[1][:80]
    for name in ("labels", "mask", "mean", "compressed_mean", "r2"):
        assert nib.load(root / "fit" / f"{name}.nii.gz").header.get_xyzt_units() == ("mm", "sec")
    # the parcel signals store keeps it too
    import xarray as xr

    stored = xr.open_zarr(root / "fit" / "parcel_signals.zarr", consolidated=False)[
        "parcel_signals"
    ]
    assert stored.attrs["t_r"] == pytest.approx(expected)
