"""One line per distinct warning: a CLI fit on inputs that warn prints each warning once, on one line.

The runs are real CLI processes (``python -m daskparcel.cli``), so what is counted is what a user sees on the
terminal: Python's warnings, nibabel's header messages and matplotlib's complaints while drawing the report.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import real_scan

PREFIX = "daskparcel fit: warning: "


def run_fit(tmp_path: Path, *args: str) -> tuple[list[str], Path]:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "daskparcel.cli", "fit", *args, "--method", "kmeans",
         "--out", str(out), "--store", str(tmp_path / "cache"), "--quiet"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines, out


def assert_one_line_each(lines: list[str]) -> None:
    for line in lines:
        assert line.startswith(PREFIX), f"not a one-line warning: {line!r}"
    assert len(set(lines)) == len(lines), lines


def test_negative_pixdim_is_said_once_naming_the_file(tmp_path: Path) -> None:
    source = real_scan("nipy")
    raw = bytearray(gzip.decompress(source.read_bytes()))
    pixdim = list(struct.unpack("<8f", raw[76:108]))
    pixdim[1] = -pixdim[1]  # a negative voxel size: nibabel fixes it and says so on every load
    raw[76:108] = struct.pack("<8f", *pixdim)
    path = tmp_path / "negative_pixdim.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    lines, out = run_fit(tmp_path, str(path), "--n-parcels", "10", "--mask-strategy", "background",
                          "--mask-args", "opening=0")  # fmt: skip
    assert_one_line_each(lines)
    pixdim_lines = [line for line in lines if "pixdim" in line]
    assert len(pixdim_lines) == 1, lines
    assert "negative_pixdim.nii.gz" in pixdim_lines[0]
    # the exact command is recorded in fit.json
    doc = json.loads((out / "fit.json").read_text())
    assert doc["command"]["argv"][:3] == ["daskparcel", "fit", str(path)]


def test_mask_on_another_grid_is_one_line(tmp_path: Path) -> None:
    from nilearn.image import resample_img
    from nilearn.masking import compute_background_mask

    source = real_scan("nitime1")
    mask = compute_background_mask(nib.load(source))
    affine = mask.affine.copy()
    affine[:3, :3] *= 1.5
    other = resample_img(
        mask, target_affine=affine, interpolation="nearest", force_resample=True, copy_header=True
    )
    mask_path = tmp_path / "other_grid_mask.nii.gz"
    nib.save(nib.Nifti1Image((other.get_fdata() > 0.5).astype(np.uint8), other.affine), mask_path)
    lines, out = run_fit(tmp_path, str(source), "--n-parcels", "10", "--mask", str(mask_path))
    assert_one_line_each(lines)
    assert len(lines) == 1, lines
    assert "other_grid_mask.nii.gz" in lines[0] and "another grid" in lines[0]
    # the mask is an input of the fit: recorded with its sha256
    recorded = json.loads((out / "fit.json").read_text())["input_files"]
    assert str(mask_path.resolve()) in [item["path"] for item in recorded]
    largest = float(np.abs(other.affine - nib.load(source).affine).max())
    assert f"largest affine difference {largest:.3g}" in lines[0]


def test_single_slice_report_draws_without_matplotlib_warnings(tmp_path: Path) -> None:
    source = real_scan("pymvpa")  # 40 x 20 x 1: one slice, identical axis limits in two views
    lines, out = run_fit(
        tmp_path, str(source), "--n-parcels", "20", "--mask-strategy", "background",
        "--mask-args", "opening=0",
    )  # fmt: skip
    assert (out / "report.html").is_file()
    # the one warning left is about the mask (the whole slice, air included), none from matplotlib
    assert [line for line in lines if "keeps all 800 of the 800 voxels" not in line] == []


def test_one_line_warnings_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    from daskparcel._warnings import one_line_warnings

    with one_line_warnings("daskparcel test"):
        for _ in range(3):
            warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
        warnings.warn("another", UserWarning, stacklevel=1)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "daskparcel test: warning: first line second line",
        "daskparcel test: warning: another",
    ]
